// NEON kernels (aarch64 only; NEON is part of the aarch64 baseline, so no extra flags).
// Two words (two output columns) per 128-bit register; vcnt counts bits per byte, byte counters are
// widened every 31 words (31 * 8 = 248 < 256).
#include "isa.h"
#include "isa_portable.inc"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

namespace {

template <bool AND>
void neon_row_panel(const uint64_t* a, const uint64_t* bp, int64_t KW, int32_t* out) {
  uint64x2_t sum[4];
  for (int c = 0; c < 4; ++c) sum[c] = vdupq_n_u64(0);
  for (int64_t k0 = 0; k0 < KW; k0 += 31) {
    const int64_t k1 = std::min<int64_t>(KW, k0 + 31);
    uint8x16_t acc[4];
    for (int c = 0; c < 4; ++c) acc[c] = vdupq_n_u8(0);
    for (int64_t k = k0; k < k1; ++k) {
      const uint64x2_t av = vdupq_n_u64(a[k]);
      for (int c = 0; c < 4; ++c) {
        const uint64x2_t b = vld1q_u64(bp + k * 8 + 2 * c);
        const uint64x2_t v = AND ? vandq_u64(av, b) : veorq_u64(av, b);
        acc[c] = vaddq_u8(acc[c], vcntq_u8(vreinterpretq_u8_u64(v)));
      }
    }
    for (int c = 0; c < 4; ++c) sum[c] = vaddq_u64(sum[c], vpaddlq_u32(vpaddlq_u16(vpaddlq_u8(acc[c]))));
  }
  for (int c = 0; c < 4; ++c) {
    out[2 * c] = static_cast<int32_t>(vgetq_lane_u64(sum[c], 0));
    out[2 * c + 1] = static_cast<int32_t>(vgetq_lane_u64(sum[c], 1));
  }
}

void neon_popc_block(const uint64_t* A, int64_t lda, int64_t M, const uint64_t* Bp, int64_t p0, int64_t p1,
                     int64_t KW, bool op_and, int32_t* P, int64_t ldp) {
  for (int64_t p = p0; p < p1; ++p)
    for (int64_t i = 0; i < M; ++i) {
      if (op_and)
        neon_row_panel<true>(A + i * lda, Bp + p * KW * 8, KW, P + i * ldp + (p - p0) * 8);
      else
        neon_row_panel<false>(A + i * lda, Bp + p * KW * 8, KW, P + i * ldp + (p - p0) * 8);
    }
}

}  // namespace

namespace bhv {
const IsaKernels* isa_neon() {
  static constexpr IsaKernels k{"neon", neon_popc_block, portable_pack_rows, epilogue_apply_rows, nullptr,
                            0, kFloatKernels};
  return &k;
}
}  // namespace bhv
#else
namespace bhv {
const IsaKernels* isa_neon() { return nullptr; }
}  // namespace bhv
#endif
