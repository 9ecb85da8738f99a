// AVX2 kernels (compiled with -mavx2 -mpopcnt; chosen when cpuid reports AVX2 and POPCNT).
// Popcount of 256-bit vectors by nibble lookup (vpshufb), counts accumulated in bytes for up to 31
// words (31 * 8 = 248 < 256) and then summed per 64-bit lane with vpsadbw, so each lane stays one
// output column of the 8-wide weight panel.
#include "bitpack.h"
#include "isa_portable.inc"

#if defined(__x86_64__) && defined(__AVX2__)
#include <immintrin.h>

namespace {

constexpr int64_t kByteChunk = 31;

inline __m256i popcnt_bytes(__m256i v, __m256i lut, __m256i low4) {
  const __m256i lo = _mm256_and_si256(v, low4);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

template <bool AND>
inline __m256i op_vec(__m256i a, __m256i b) {
  return AND ? _mm256_and_si256(a, b) : _mm256_xor_si256(a, b);
}

// (q0..q3), (q4..q7) 64-bit lanes holding counts < 2^32 -> eight int32 (the low halves), stored to out:
// (q4..q7) << 32 | (q0..q3) has the int32 order q0 q4 q1 q5 q2 q6 q3 q7, which one vpermd puts in place
// (one shuffle instead of three: the shuffle port is the bottleneck of the nibble-lookup popcount).
inline void store_lanes(__m256i lo, __m256i hi, int32_t* out) {
  const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const __m256i both = _mm256_or_si256(lo, _mm256_slli_epi64(hi, 32));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permutevar8x32_epi32(both, idx));
}

// Short rows (K <= 31 words): one pass, byte counters summed once, no partial sums.
template <int R, bool AND>
void tile_short(const uint64_t* A, int64_t lda, const uint64_t* bp, int64_t KW, int32_t* P, int64_t ldp) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2,
                                       2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  __m256i acc[R][2];
  BHV_UNROLL
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = zero;
  for (int64_t k = 0; k < KW; ++k) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + k * 8));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + k * 8 + 4));
    BHV_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m256i a = _mm256_set1_epi64x(static_cast<long long>(A[r * lda + k]));
      acc[r][0] = _mm256_add_epi8(acc[r][0], popcnt_bytes(op_vec<AND>(a, b0), lut, low4));
      acc[r][1] = _mm256_add_epi8(acc[r][1], popcnt_bytes(op_vec<AND>(a, b1), lut, low4));
    }
  }
  BHV_UNROLL
  for (int r = 0; r < R; ++r)
    store_lanes(_mm256_sad_epu8(acc[r][0], zero), _mm256_sad_epu8(acc[r][1], zero), P + r * ldp);
}

// R rows of A against one panel (8 columns): P[r * ldp + j].
template <int R, bool AND>
void tile(const uint64_t* A, int64_t lda, const uint64_t* bp, int64_t KW, int32_t* P, int64_t ldp) {
  if (KW <= kByteChunk) {
    tile_short<R, AND>(A, lda, bp, KW, P, ldp);
    return;
  }
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2,
                                       2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  __m256i sum[R][2];
  BHV_UNROLL
  for (int r = 0; r < R; ++r) sum[r][0] = sum[r][1] = zero;
  for (int64_t k0 = 0; k0 < KW; k0 += kByteChunk) {
    const int64_t k1 = std::min(KW, k0 + kByteChunk);
    __m256i acc[R][2];
    BHV_UNROLL
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = zero;
    for (int64_t k = k0; k < k1; ++k) {
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + k * 8));
      const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + k * 8 + 4));
      BHV_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m256i a = _mm256_set1_epi64x(static_cast<long long>(A[r * lda + k]));
        acc[r][0] = _mm256_add_epi8(acc[r][0], popcnt_bytes(op_vec<AND>(a, b0), lut, low4));
        acc[r][1] = _mm256_add_epi8(acc[r][1], popcnt_bytes(op_vec<AND>(a, b1), lut, low4));
      }
    }
    BHV_UNROLL
    for (int r = 0; r < R; ++r) {
      sum[r][0] = _mm256_add_epi64(sum[r][0], _mm256_sad_epu8(acc[r][0], zero));
      sum[r][1] = _mm256_add_epi64(sum[r][1], _mm256_sad_epu8(acc[r][1], zero));
    }
  }
  BHV_UNROLL
  for (int r = 0; r < R; ++r) store_lanes(sum[r][0], sum[r][1], P + r * ldp);
}

template <bool AND>
void popc_block_t(const uint64_t* A, int64_t lda, int64_t M, const uint64_t* Bp, int64_t p0, int64_t p1,
                  int64_t KW, int32_t* P, int64_t ldp) {
  for (int64_t p = p0; p < p1; ++p) {
    const uint64_t* bp = Bp + p * KW * 8;
    int64_t i = 0;
    for (; i + 4 <= M; i += 4) tile<4, AND>(A + i * lda, lda, bp, KW, P + i * ldp + (p - p0) * 8, ldp);
    for (; i < M; ++i) tile<1, AND>(A + i * lda, lda, bp, KW, P + i * ldp + (p - p0) * 8, ldp);
  }
}

void avx2_popc_block(const uint64_t* A, int64_t lda, int64_t M, const uint64_t* Bp, int64_t p0, int64_t p1,
                     int64_t KW, bool op_and, int32_t* P, int64_t ldp) {
  if (op_and)
    popc_block_t<true>(A, lda, M, Bp, p0, p1, KW, P, ldp);
  else
    popc_block_t<false>(A, lda, M, Bp, p0, p1, KW, P, ldp);
}

// Full words by 8-float compares and movemask; the last partial word falls back to the portable loop.
void avx2_pack_rows(const float* x, int64_t ldx, int64_t M, int64_t K, const float* bias, uint64_t* out) {
  const int64_t KW = (K + 63) / 64, full = K / 64;
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t i = 0; i < M; ++i) {
    const float* row = x + i * ldx;
    for (int64_t w = 0; w < full; ++w) {
      uint64_t word = 0;
      for (int c = 0; c < 8; ++c) {
        const int64_t k = w * 64 + c * 8;
        __m256 v = _mm256_loadu_ps(row + k);
        if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + k));
        const uint64_t m = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ)));
        word |= m << (c * 8);
      }
      out[i * KW + w] = word;
    }
  }
  if (full < KW) portable_pack_words(x, ldx, M, K, bias, out, full);
}

}  // namespace

namespace bhv {
const IsaKernels* isa_avx2() {
  static const IsaKernels k{"avx2", avx2_popc_block, avx2_pack_rows, epilogue_apply_rows};
  return (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) ? &k : nullptr;
}
}  // namespace bhv

#else
namespace bhv {
const IsaKernels* isa_avx2() { return nullptr; }
}  // namespace bhv
#endif
