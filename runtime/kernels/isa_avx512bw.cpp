// AVX-512BW kernels (compiled with -mavx512f -mavx512bw -mpopcnt; chosen via cpuid).
#include "isa.h"
#include "isa_portable.inc"

#if defined(__x86_64__) && defined(__AVX512BW__)
#define BHV_VPOPCNT 0
#include "isa_avx512.inc"

namespace bhv {
const IsaKernels* isa_avx512bw() {
  static constexpr IsaKernels k{"avx512bw", avx512_popc_block, simd_pack_rows, epilogue_apply_rows, nullptr,
                            0, kFloatKernels};
  const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("popcnt");
  return ok ? &k : nullptr;
}
}  // namespace bhv
#else
namespace bhv {
const IsaKernels* isa_avx512bw() { return nullptr; }
}  // namespace bhv
#endif
