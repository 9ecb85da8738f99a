// Baseline kernels: plain C++ compiled with the default (portable) flags.
#include "isa.h"
#include "isa_portable.inc"

namespace bhv {
const IsaKernels* isa_generic() {
  static constexpr IsaKernels k{"generic", portable_popc_block, portable_pack_rows, epilogue_apply_rows, nullptr,
                            0, kFloatKernels};
  return &k;
}
}  // namespace bhv
