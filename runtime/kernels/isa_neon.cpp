// NEON kernels (aarch64 only; NEON is part of the aarch64 baseline, so no extra flags).
// Two words (two output columns) per 128-bit register; vcnt counts bits per byte, byte counters are
// widened every 31 words (31 * 8 = 248 < 256).
#if defined(__aarch64__) && defined(__ARM_NEON)
#define BHV_TRANSFORM_ROWS 2  // the output transform two rows at a time (epilogue.inc)
#endif
#include "isa.h"
#include "isa_portable.inc"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

// GCC's scheduling before register allocation interleaves the 4 rows' 16 counters of neon_tile<4> with
// their temporaries and spills two of them in the inner loop; without it the loop keeps every counter in a
// register (measured under qemu, bhvit_tiny, 224 px, one forward: 98.4 -> 94.5 M instructions in the tile).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-schedule-insns")
#endif

namespace {

constexpr int64_t kByteChunk = 31;  // words per pass of the byte counters (31 * 8 = 248 < 256)
constexpr int64_t kPairChunk = 15;  // words whose byte counters may be added in pairs (15 * 16 = 240)

// *p in both lanes, p advanced by one word: one ld1r with post-increment. GCC splits vld1q_dup_u64 of an
// indexed address into a load and a dup, 4 more instructions per word of 4 rows (61 -> 57).
inline uint64x2_t load_dup(const uint64_t*& p) {
  uint64x2_t v;
  asm("ld1r {%0.2d}, [%1], #8" : "=w"(v), "+r"(p) : "m"(*p));
  return v;
}

template <bool AND>
inline uint8x16_t op_count(uint64x2_t a, uint64x2_t b) {
  return vcntq_u8(vreinterpretq_u8_u64(AND ? vandq_u64(a, b) : veorq_u64(a, b)));
}

// The byte counters of one row against a panel (acc[c]: columns 2c, 2c + 1 in its halves) -> the 8 column
// sums as u16 (at most 31 * 64 = 1984) by pairwise adds that interleave the registers: [c0 x4 c1 x4 c2 x4
// c3 x4] and [c4 ... c7], then [c0 c0 c1 c1 c2 c2 c3 c3] and [c4 ... c7], then [c0 ... c7]. With PAIRS (at
// most 15 words) the first level adds bytes, 5 instructions; otherwise it widens first, 7 (widening each
// register to 64-bit lanes took 12 and the lane stores 8 more).
template <bool PAIRS>
inline uint16x8_t column_sums(const uint8x16_t (&acc)[4]) {
  if (PAIRS)
    return vpaddq_u16(vpaddlq_u8(vpaddq_u8(acc[0], acc[1])), vpaddlq_u8(vpaddq_u8(acc[2], acc[3])));
  const uint16x8_t p01 = vpaddq_u16(vpaddlq_u8(acc[0]), vpaddlq_u8(acc[1]));
  const uint16x8_t p23 = vpaddq_u16(vpaddlq_u8(acc[2]), vpaddlq_u8(acc[3]));
  return vpaddq_u16(p01, p23);
}

// Byte counters of R rows of A against one panel (8 columns) over words [k0, k1), 0 < k1 - k0 <= 31:
// acc[r][c] holds columns 2c, 2c + 1 of row r in its halves. Per word and row: one broadcast load, and per
// pair of columns op, vcnt and a byte add (3 instructions per 128 bit-MACs); the panel's word (4
// registers, one load) serves the R rows. The first word initialises the counters.
template <int R, bool AND>
inline void count_words(const uint64_t* A, int64_t lda, const uint64_t* bp, int64_t k0, int64_t k1,
                        uint8x16_t (&acc)[R][4]) {
  const uint64_t* a[R];
  BHV_UNROLL
  for (int r = 0; r < R; ++r) a[r] = A + r * lda + k0;
  const uint64_t* b = bp + k0 * 8;
  {
    const uint64x2x4_t w = vld1q_u64_x4(b);
    BHV_UNROLL
    for (int r = 0; r < R; ++r) {
      const uint64x2_t x = load_dup(a[r]);
      BHV_UNROLL
      for (int c = 0; c < 4; ++c) acc[r][c] = op_count<AND>(x, w.val[c]);
    }
  }
  for (int64_t k = k0 + 1; k < k1; ++k) {
    b += 8;
    const uint64x2x4_t w = vld1q_u64_x4(b);
    BHV_UNROLL
    for (int r = 0; r < R; ++r) {
      const uint64x2_t x = load_dup(a[r]);
      BHV_UNROLL
      for (int c = 0; c < 4; ++c) acc[r][c] = vaddq_u8(acc[r][c], op_count<AND>(x, w.val[c]));
    }
  }
}

inline void store_sums(int32_t* out, uint32x4_t lo, uint32x4_t hi) {
  vst1q_s32_x2(out, int32x4x2_t{{vreinterpretq_s32_u32(lo), vreinterpretq_s32_u32(hi)}});
}

// R rows of A against panels [p0, p1) (8 columns each): P[r * ldp + 8 (p - p0) + j]. Rows of at most 31
// words (WORDS = 1: at most 15) take one pass of the byte counters, longer ones (WORDS = 2) add each pass's
// column sums into int32 lanes. The panel loop inside keeps the rows' setup out of it.
// Measured under qemu (bhvit_tiny, 224 px, one forward; K is 1 to 16 words, 3 on average): one row at a
// time took 172.1 M instructions, 18 per row and word plus ~50 per row and panel; 4 rows at a time take
// 85.3 M, 14 per row and word (56 per word of 4 rows) plus ~11 per row and panel.
template <int R, bool AND, int WORDS>
void neon_rows(const uint64_t* A, int64_t lda, const uint64_t* Bp, int64_t p0, int64_t p1, int64_t KW, int32_t* P,
               int64_t ldp) {
  for (int64_t p = p0; p < p1; ++p) {
    const uint64_t* bp = Bp + p * KW * 8;
    int32_t* out = P + (p - p0) * 8;
    uint8x16_t acc[R][4];
    if (WORDS < 2) {
      count_words<R, AND>(A, lda, bp, 0, KW, acc);
      BHV_UNROLL
      for (int r = 0; r < R; ++r) {
        const uint16x8_t s = column_sums<WORDS == 0>(acc[r]);
        store_sums(out + r * ldp, vmovl_u16(vget_low_u16(s)), vmovl_high_u16(s));
      }
      continue;
    }
    uint32x4_t lo[R], hi[R];  // column sums 0-3, 4-7
    BHV_UNROLL
    for (int r = 0; r < R; ++r) lo[r] = hi[r] = vdupq_n_u32(0);
    for (int64_t k0 = 0; k0 < KW; k0 += kByteChunk) {
      count_words<R, AND>(A, lda, bp, k0, std::min(KW, k0 + kByteChunk), acc);
      BHV_UNROLL
      for (int r = 0; r < R; ++r) {
        const uint16x8_t s = column_sums<false>(acc[r]);
        lo[r] = vaddw_u16(lo[r], vget_low_u16(s));
        hi[r] = vaddw_high_u16(hi[r], s);
      }
    }
    BHV_UNROLL
    for (int r = 0; r < R; ++r) store_sums(out + r * ldp, lo[r], hi[r]);
  }
}

template <bool AND, int WORDS>
void neon_popc_block_t(const uint64_t* A, int64_t lda, int64_t M, const uint64_t* Bp, int64_t p0, int64_t p1,
                       int64_t KW, int32_t* P, int64_t ldp) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4) neon_rows<4, AND, WORDS>(A + i * lda, lda, Bp, p0, p1, KW, P + i * ldp, ldp);
  if (i + 2 <= M) neon_rows<2, AND, WORDS>(A + i * lda, lda, Bp, p0, p1, KW, P + i * ldp, ldp), i += 2;
  if (i < M) neon_rows<1, AND, WORDS>(A + i * lda, lda, Bp, p0, p1, KW, P + i * ldp, ldp);
}

template <bool AND>
void neon_popc_block_k(const uint64_t* A, int64_t lda, int64_t M, const uint64_t* Bp, int64_t p0, int64_t p1,
                       int64_t KW, int32_t* P, int64_t ldp) {
  if (KW <= kPairChunk)
    neon_popc_block_t<AND, 0>(A, lda, M, Bp, p0, p1, KW, P, ldp);
  else if (KW <= kByteChunk)
    neon_popc_block_t<AND, 1>(A, lda, M, Bp, p0, p1, KW, P, ldp);
  else
    neon_popc_block_t<AND, 2>(A, lda, M, Bp, p0, p1, KW, P, ldp);
}

void neon_popc_block(const uint64_t* A, int64_t lda, int64_t M, const uint64_t* Bp, int64_t p0, int64_t p1,
                     int64_t KW, bool op_and, int32_t* P, int64_t ldp) {
  if (KW <= 0) {  // no words: every count is 0 (the tiles read a first word)
    for (int64_t i = 0; i < M; ++i) std::fill(P + i * ldp, P + i * ldp + (p1 - p0) * 8, 0);
    return;
  }
  if (op_and)
    neon_popc_block_k<true>(A, lda, M, Bp, p0, p1, KW, P, ldp);
  else
    neon_popc_block_k<false>(A, lda, M, Bp, p0, p1, KW, P, ldp);
}

}  // namespace

namespace bhv {
const IsaKernels* isa_neon() {
  static constexpr IsaKernels k{"neon", neon_popc_block, simd_pack_rows, epilogue_apply_rows, nullptr,
                            0, kFloatKernels};
  return &k;
}
}  // namespace bhv
#else
namespace bhv {
const IsaKernels* isa_neon() { return nullptr; }
}  // namespace bhv
#endif
