// AVX-512 VPOPCNTDQ kernels (compiled with -mavx512f -mavx512bw -mavx512vpopcntdq -mpopcnt).
#include "isa.h"
#include "isa_portable.inc"

#if defined(__x86_64__) && defined(__AVX512VPOPCNTDQ__)
#define BHV_VPOPCNT 1
#include "isa_avx512.inc"

namespace bhv {
const IsaKernels* isa_avx512vpopcnt() {
  static constexpr IsaKernels k{"avx512vpopcnt", avx512_popc_block, simd_pack_rows, epilogue_apply_rows, nullptr,
                            0, kFloatKernels};
  const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("popcnt");
  return ok ? &k : nullptr;
}
}  // namespace bhv
#else
namespace bhv {
const IsaKernels* isa_avx512vpopcnt() { return nullptr; }
}  // namespace bhv
#endif
