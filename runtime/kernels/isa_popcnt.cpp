// Scalar kernels compiled with -mpopcnt (x86-64 only; chosen when cpuid reports POPCNT).
#include "isa.h"
#include "isa_portable.inc"

namespace bhv {
const IsaKernels* isa_popcnt() {
#if defined(__x86_64__) && defined(__POPCNT__)
  static constexpr IsaKernels k{"popcnt", portable_popc_block, portable_pack_rows, epilogue_apply_rows, nullptr,
                            0, kFloatKernels};
  return __builtin_cpu_supports("popcnt") ? &k : nullptr;
#else
  return nullptr;
#endif
}
}  // namespace bhv
