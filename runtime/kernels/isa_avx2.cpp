// AVX2 kernels (compiled with -mavx2 -mpopcnt; chosen when cpuid reports AVX2 and POPCNT).
// Popcount of 256-bit vectors by nibble lookup (vpshufb), counts accumulated in bytes for up to 31
// words (31 * 8 = 248 < 256) and then summed per 64-bit lane with vpsadbw, so each lane stays one
// output column of the 8-wide weight panel.
#include "isa.h"
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

// ---- nibble tables (every linear of K <= kNibbleMaxWords words with N >= 64) ---------------------
// popcount(a XOR w) = sum over the 16 nibbles c of T_c[w_c], T_c[v] = popcount(a_c ^ v). The 16-byte
// table of row a and nibble c (in both lanes) looks up nibble c of 32 weight rows at once: one vpshufb
// on the prepared bytes (convention 8) and one byte add per 32 outputs and nibble, against 4 shuffles
// or shifts and 4 other ops per 8 outputs and word for the nibble-count popcount above. Byte counters
// hold 3 words (3 * 64 = 192 < 256) before they are widened. Measured against the popcount tiles
// (bench_gemm shapes, AVX2 on the Xeon, 1 thread): K = 512-2048 0.66-0.85x the time, so the tables serve
// every K up to the layout's 2048 (on the Zen 4 box they were measured, and chosen, for K <= 256).
constexpr int64_t kNibbleChunk = 3;
constexpr int64_t kTableBytes = 16 * 16;  // the 16 tables of one activation word
constexpr int64_t kNibbleBlockWords = 16;  // K words whose tables are built and used at once

// tab[16 c + v] = popcount(nibble c of a XOR v) for c, v < 16.
inline void build_tables(uint64_t a, uint8_t* tab) {
  const __m256i pop = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3,
                                       1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i iota = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5,
                                        6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m128i bytes = _mm_cvtsi64_si128(static_cast<long long>(a));
  const __m128i low4 = _mm_set1_epi8(0x0f);
  // lane 0: the low nibble of each byte (nibble 2b), lane 1: the high one (nibble 2b + 1)
  const __m256i nibs = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), low4), _mm_and_si128(bytes, low4));
  BHV_UNROLL
  for (int b = 0; b < 8; ++b) {
    const __m256i x = _mm256_shuffle_epi8(nibs, _mm256_set1_epi8(static_cast<char>(b)));  // broadcast per lane
    const __m256i t = _mm256_shuffle_epi8(pop, _mm256_xor_si256(x, iota));
    _mm256_store_si256(reinterpret_cast<__m256i*>(tab + 32 * b), t);  // tables 2b, 2b + 1
  }
}

// The 16 nibbles of a as bytes (byte c = nibble c).
inline __m128i nibble_bytes(uint64_t a) {
  const __m128i bytes = _mm_cvtsi64_si128(static_cast<long long>(a));
  const __m128i low4 = _mm_set1_epi8(0x0f);
  return _mm_unpacklo_epi8(_mm_and_si128(bytes, low4), _mm_and_si128(_mm_srli_epi16(bytes, 4), low4));
}

// The tables of two words side by side: tab[c * stride + 16 i + v] = popcount(nibble c of a_i XOR v) for
// i < 2 and c, v < 16 (one shuffle pair per two tables, as build_tables).
inline void build_tables2(uint64_t a0, uint64_t a1, uint8_t* tab, int64_t stride) {
  const __m256i pop = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3,
                                       1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i iota = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5,
                                        6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m256i nibs = _mm256_set_m128i(nibble_bytes(a1), nibble_bytes(a0));
  BHV_UNROLL
  for (int c = 0; c < 16; ++c) {
    const __m256i x = _mm256_shuffle_epi8(nibs, _mm256_set1_epi8(static_cast<char>(c)));  // broadcast per lane
    const __m256i t = _mm256_shuffle_epi8(pop, _mm256_xor_si256(x, iota));
    _mm256_store_si256(reinterpret_cast<__m256i*>(tab + c * stride), t);
  }
}

// The tables of R rows of A over words [k0, k0 + kb), interleaved as nibble_chunk reads them.
template <int R>
inline void build_row_tables(const uint64_t* A, int64_t lda, int64_t k0, int64_t kb, uint8_t* tab) {
  static_assert(R == 1 || R % 2 == 0, "rows are built in pairs");
  for (int64_t k = 0; k < kb; ++k) {
    uint8_t* tk = tab + k * R * kTableBytes;
    if (R == 1) {
      build_tables(A[k0 + k], tk);
      continue;
    }
    for (int r = 0; r < R; r += 2) build_tables2(A[r * lda + k0 + k], A[(r + 1) * lda + k0 + k], tk + 16 * r, 16 * R);
  }
}

// Stores (ADD false) or adds the eight int32 v[u] at out[8u..8u+8), u < 4.
template <bool ADD>
inline void put_i32x32(const __m256i (&v)[4], int32_t* out) {
  BHV_UNROLL
  for (int u = 0; u < 4; ++u) {
    __m256i* o = reinterpret_cast<__m256i*>(out + 8 * u);
    _mm256_storeu_si256(o, ADD ? _mm256_add_epi32(_mm256_loadu_si256(o), v[u]) : v[u]);
  }
}

// 32 byte counters as int32 at out[0..32).
template <bool ADD>
inline void widen_bytes(__m256i acc, int32_t* out) {
  const __m128i lo = _mm256_castsi256_si128(acc), hi = _mm256_extracti128_si256(acc, 1);
  const __m256i v[4] = {_mm256_cvtepu8_epi32(lo), _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)),
                        _mm256_cvtepu8_epi32(hi), _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))};
  put_i32x32<ADD>(v, out);
}

// 32 counters held as 16-bit lanes, even (counters 0, 2, .., 30) and odd (1, 3, .., 31), as int32 at
// out[0..32): the 16-bit interleaves give counters 0-7 and 16-23 (lo), 8-15 and 24-31 (hi).
template <bool ADD>
inline void widen_pairs(__m256i even, __m256i odd, int32_t* out) {
  const __m256i lo = _mm256_unpacklo_epi16(even, odd), hi = _mm256_unpackhi_epi16(even, odd);
  const __m256i v[4] = {_mm256_cvtepu16_epi32(_mm256_castsi256_si128(lo)),
                        _mm256_cvtepu16_epi32(_mm256_castsi256_si128(hi)),
                        _mm256_cvtepu16_epi32(_mm256_extracti128_si256(lo, 1)),
                        _mm256_cvtepu16_epi32(_mm256_extracti128_si256(hi, 1))};
  put_i32x32<ADD>(v, out);
}

// Byte counters of R rows (their tables interleaved: tab[((k * 16 + c) * R + r) * 16 + v], so that one
// pointer reaches all R: with one per row GCC ran out of registers and reloaded them in the loop) against
// J quads (32 J weight rows) over words [k0, k1), at most kNibbleChunk of them. nq: bytes between quads of nib.
template <int R, int J>
inline void nibble_chunk(const uint8_t* tab, const uint8_t* nib, int64_t nq, int64_t k0, int64_t k1,
                         __m256i (&acc)[R][J]) {
  BHV_UNROLL
  for (int r = 0; r < R; ++r) {
    BHV_UNROLL
    for (int j = 0; j < J; ++j) acc[r][j] = _mm256_setzero_si256();
  }
  for (int64_t k = k0; k < k1; ++k) {
    const uint8_t* nk = nib + k * 16 * bhv::kQuad;
    const uint8_t* tk = tab + k * R * kTableBytes;
    // Unrolled by 2 only: fully unrolled, GCC sums the 16 lookups as a tree and spills them.
    BHV_UNROLL_2
    for (int c = 0; c < 16; ++c) {
      __m256i w[J];
      BHV_UNROLL
      for (int j = 0; j < J; ++j)
        w[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(nk + j * nq + c * bhv::kQuad));
      BHV_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m256i t = _mm256_broadcastsi128_si256(
            _mm_load_si128(reinterpret_cast<const __m128i*>(tk + (c * R + r) * 16)));
        BHV_UNROLL
        for (int j = 0; j < J; ++j) acc[r][j] = _mm256_add_epi8(acc[r][j], _mm256_shuffle_epi8(t, w[j]));
      }
    }
  }
}

// The counts of R rows against J quads over KW words (tables and nq as in nibble_chunk), stored (ADD false)
// or added at P[r * ldp + 32 j + i]. Up to kNibbleChunk words the byte counters are widened once; past it,
// each chunk's bytes are added into 16-bit counters, even and odd bytes apart (an AND and a shift, off the
// shuffle port), and those are widened once at the end. Widening every chunk into the int32 rows instead
// (six shuffles, four loads, adds and stores per 32 counters) measured 0-7 % slower on K = 256-2048
// (bench_gemm shapes, AVX2 on the Xeon, 1 thread: 2048 x 512 at 49 rows 97.5 -> 91.0 us).
template <int R, int J, bool ADD>
void nibble_tile(const uint8_t* tab, const uint8_t* nib, int64_t nq, int64_t KW, int32_t* P, int64_t ldp) {
  __m256i acc[R][J];
  if (KW <= kNibbleChunk) {
    nibble_chunk<R, J>(tab, nib, nq, 0, KW, acc);
    BHV_UNROLL
    for (int r = 0; r < R; ++r) {
      BHV_UNROLL
      for (int j = 0; j < J; ++j) widen_bytes<ADD>(acc[r][j], P + r * ldp + j * bhv::kQuad);
    }
    return;
  }
  const __m256i low8 = _mm256_set1_epi16(0xff);
  __m256i even[R][J], odd[R][J];
  BHV_UNROLL
  for (int r = 0; r < R; ++r) {
    BHV_UNROLL
    for (int j = 0; j < J; ++j) even[r][j] = odd[r][j] = _mm256_setzero_si256();
  }
  for (int64_t k0 = 0; k0 < KW; k0 += kNibbleChunk) {
    nibble_chunk<R, J>(tab, nib, nq, k0, std::min(KW, k0 + kNibbleChunk), acc);
    BHV_UNROLL
    for (int r = 0; r < R; ++r) {
      BHV_UNROLL
      for (int j = 0; j < J; ++j) {
        even[r][j] = _mm256_add_epi16(even[r][j], _mm256_and_si256(acc[r][j], low8));
        odd[r][j] = _mm256_add_epi16(odd[r][j], _mm256_srli_epi16(acc[r][j], 8));
      }
    }
  }
  BHV_UNROLL
  for (int r = 0; r < R; ++r) {
    BHV_UNROLL
    for (int j = 0; j < J; ++j) widen_pairs<ADD>(even[r][j], odd[r][j], P + r * ldp + j * bhv::kQuad);
  }
}

// R rows against quads [q0, q1) over KW words, two quads (64 weight rows) at a time.
template <int R, bool ADD>
void nibble_quads(const uint8_t* tab, const uint8_t* nib, int64_t nq, int64_t q0, int64_t q1, int64_t KW, int32_t* P,
                  int64_t ldp) {
  int64_t q = q0;
  for (; q + 2 <= q1; q += 2) nibble_tile<R, 2, ADD>(tab, nib + q * nq, nq, KW, P + (q - q0) * bhv::kQuad, ldp);
  if (q < q1) nibble_tile<R, 1, ADD>(tab, nib + q * nq, nq, KW, P + (q - q0) * bhv::kQuad, ldp);
}

// R rows of A against quads [q0, q1), in blocks of kNibbleBlockWords words: the tables of a block
// (R x 4 KiB at most) stay in L1 while every quad reads them, and its 16-bit counters cannot overflow.
template <int R>
void nibble_rows(const uint64_t* A, int64_t lda, const uint8_t* nib, int64_t q0, int64_t q1, int64_t KW, int32_t* P,
                 int64_t ldp) {
  alignas(32) uint8_t tab[R * kNibbleBlockWords * kTableBytes];
  const int64_t nq = KW * 16 * bhv::kQuad;  // bytes per quad
  for (int64_t kb0 = 0; kb0 < KW; kb0 += kNibbleBlockWords) {
    const int64_t kb = std::min(kNibbleBlockWords, KW - kb0);
    build_row_tables<R>(A, lda, kb0, kb, tab);
    const uint8_t* nb = nib + kb0 * 16 * bhv::kQuad;  // word kb0 of every quad
    if (kb0 == 0)
      nibble_quads<R, false>(tab, nb, nq, q0, q1, kb, P, ldp);
    else
      nibble_quads<R, true>(tab, nb, nq, q0, q1, kb, P, ldp);
  }
}

void avx2_nibble_block(const uint64_t* A, int64_t lda, int64_t M, const uint8_t* nib, int64_t q0, int64_t q1,
                       int64_t KW, int32_t* P, int64_t ldp) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4) nibble_rows<4>(A + i * lda, lda, nib, q0, q1, KW, P + i * ldp, ldp);
  for (; i < M; ++i) nibble_rows<1>(A + i * lda, lda, nib, q0, q1, KW, P + i * ldp, ldp);
}

}  // namespace

namespace bhv {
const IsaKernels* isa_avx2() {
  static constexpr IsaKernels k{"avx2", avx2_popc_block, simd_pack_rows, epilogue_apply_rows, avx2_nibble_block,
                            kNibbleMaxWords, kFloatKernels};
  return (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) ? &k : nullptr;
}
}  // namespace bhv

#else
namespace bhv {
const IsaKernels* isa_avx2() { return nullptr; }
}  // namespace bhv
#endif
