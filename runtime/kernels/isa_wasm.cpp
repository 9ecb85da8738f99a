// WebAssembly SIMD kernels (compiled with -msimd128; chosen at build time: a SIMD module only instantiates in
// an engine that has WebAssembly SIMD, so there is nothing to detect at run time).
// Two words (two output columns of the 8-wide weight panel) per 128-bit vector; i8x16.popcnt counts bits per
// byte, and byte counters hold up to 31 words (31 * 8 = 248 < 256) before they are widened pairwise into
// 16-bit sums (at most 16 per word and lane: exact up to 4095 words, so they are widened again into 32 bits
// every kWideChunks byte chunks).
#include "isa.h"
#include "isa_portable.inc"

#if defined(__wasm_simd128__)
#include <wasm_simd128.h>

namespace {

constexpr int64_t kByteChunk = 31;
constexpr int64_t kWideChunks = 128;  // byte chunks per 16-bit sum: 128 * 31 * 16 = 63488 < 65536

template <bool AND>
inline v128_t op_vec(v128_t a, v128_t b) {
  return AND ? wasm_v128_and(a, b) : wasm_v128_xor(a, b);
}

// s[c] (c < 4): 32-bit sums whose lanes (0, 1) belong to word 2c and (2, 3) to word 2c + 1 -> out[0..8).
inline void store_panel(const v128_t* s, int32_t* out) {
  for (int h = 0; h < 2; ++h) {
    const v128_t even = wasm_i32x4_shuffle(s[2 * h], s[2 * h + 1], 0, 2, 4, 6);
    const v128_t odd = wasm_i32x4_shuffle(s[2 * h], s[2 * h + 1], 1, 3, 5, 7);
    wasm_v128_store(out + 4 * h, wasm_i32x4_add(even, odd));
  }
}

// acc: byte counters of one row (c < 4: words 2c, 2c + 1) -> out[0..8), widened to 32 bits.
inline void store_bytes(const v128_t* acc, int32_t* out) {
  v128_t s[4];
  BHV_UNROLL
  for (int c = 0; c < 4; ++c) s[c] = wasm_u32x4_extadd_pairwise_u16x8(wasm_u16x8_extadd_pairwise_u8x16(acc[c]));
  store_panel(s, out);
}

// Adds popcount(a op b) of words [k0, k1) of R activation rows against the panel's 8 columns to byte
// counters acc[r][c] (columns 2c, 2c + 1); at most kByteChunk words, so no byte overflows.
template <int R, bool AND>
inline void count_bytes(const uint64_t* A, int64_t lda, const uint64_t* bp, int64_t k0, int64_t k1,
                        v128_t (&acc)[R][4]) {
  for (int64_t k = k0; k < k1; ++k) {
    const uint64_t* bk = bp + k * 8;
    v128_t b[4];
    BHV_UNROLL
    for (int c = 0; c < 4; ++c) b[c] = wasm_v128_load(bk + 2 * c);
    BHV_UNROLL
    for (int r = 0; r < R; ++r) {
      const v128_t a = wasm_i64x2_splat(static_cast<int64_t>(A[r * lda + k]));
      BHV_UNROLL
      for (int c = 0; c < 4; ++c) acc[r][c] = wasm_i8x16_add(acc[r][c], wasm_i8x16_popcnt(op_vec<AND>(a, b[c])));
    }
  }
}

// Short rows (KW <= kByteChunk): one pass of byte counters, widened once.
template <int R, bool AND>
void tile_short(const uint64_t* A, int64_t lda, const uint64_t* bp, int64_t KW, int32_t* P, int64_t ldp) {
  v128_t acc[R][4];
  BHV_UNROLL
  for (int r = 0; r < R; ++r)
    BHV_UNROLL
    for (int c = 0; c < 4; ++c) acc[r][c] = wasm_i32x4_splat(0);
  count_bytes<R, AND>(A, lda, bp, 0, KW, acc);
  BHV_UNROLL
  for (int r = 0; r < R; ++r) store_bytes(acc[r], P + r * ldp);
}

// R rows of A against one panel (8 columns): P[r * ldp + j]. The inner loop keeps R * 4 byte counters, the
// panel's 4 vectors of word k and the broadcast activation word live: 13 vectors for R = 2, within the 16
// registers that V8 gives SIMD code on x86-64 (measured in Node 20 on bhvit_small:
// R = 3 no faster, R = 4 spills and runs 8 % slower).
template <int R, bool AND>
void tile(const uint64_t* A, int64_t lda, const uint64_t* bp, int64_t KW, int32_t* P, int64_t ldp) {
  if (KW <= kByteChunk) {
    tile_short<R, AND>(A, lda, bp, KW, P, ldp);
    return;
  }
  v128_t sum[R][4];  // 32-bit
  v128_t wide[R][4];  // 16-bit
  BHV_UNROLL
  for (int r = 0; r < R; ++r)
    BHV_UNROLL
    for (int c = 0; c < 4; ++c) sum[r][c] = wide[r][c] = wasm_i32x4_splat(0);
  int64_t chunks = 0;
  for (int64_t k0 = 0; k0 < KW; k0 += kByteChunk) {
    const int64_t k1 = std::min(KW, k0 + kByteChunk);
    v128_t acc[R][4];
    BHV_UNROLL
    for (int r = 0; r < R; ++r)
      BHV_UNROLL
      for (int c = 0; c < 4; ++c) acc[r][c] = wasm_i32x4_splat(0);
    count_bytes<R, AND>(A, lda, bp, k0, k1, acc);
    BHV_UNROLL
    for (int r = 0; r < R; ++r)
      BHV_UNROLL
      for (int c = 0; c < 4; ++c) wide[r][c] = wasm_i16x8_add(wide[r][c], wasm_u16x8_extadd_pairwise_u8x16(acc[r][c]));
    if (++chunks == kWideChunks || k1 == KW) {
      BHV_UNROLL
      for (int r = 0; r < R; ++r)
        BHV_UNROLL
        for (int c = 0; c < 4; ++c) {
          sum[r][c] = wasm_i32x4_add(sum[r][c], wasm_u32x4_extadd_pairwise_u16x8(wide[r][c]));
          wide[r][c] = wasm_i32x4_splat(0);
        }
      chunks = 0;
    }
  }
  BHV_UNROLL
  for (int r = 0; r < R; ++r) store_panel(sum[r], P + r * ldp);
}

template <bool AND>
void popc_block_t(const uint64_t* A, int64_t lda, int64_t M, const uint64_t* Bp, int64_t p0, int64_t p1,
                  int64_t KW, int32_t* P, int64_t ldp) {
  for (int64_t p = p0; p < p1; ++p) {
    const uint64_t* bp = Bp + p * KW * 8;
    int32_t* out = P + (p - p0) * 8;
    int64_t i = 0;
    for (; i + 2 <= M; i += 2) tile<2, AND>(A + i * lda, lda, bp, KW, out + i * ldp, ldp);
    for (; i < M; ++i) tile<1, AND>(A + i * lda, lda, bp, KW, out + i * ldp, ldp);
  }
}

void wasm_popc_block(const uint64_t* A, int64_t lda, int64_t M, const uint64_t* Bp, int64_t p0, int64_t p1,
                     int64_t KW, bool op_and, int32_t* P, int64_t ldp) {
  if (op_and)
    popc_block_t<true>(A, lda, M, Bp, p0, p1, KW, P, ldp);
  else
    popc_block_t<false>(A, lda, M, Bp, p0, p1, KW, P, ldp);
}

// ---- nibble tables (small K) ------------------------------------------------------------------
// popcount(a XOR w) = sum over the 16 nibbles c of T_c[w_c], T_c[v] = popcount(a_c ^ v) (convention 8): the
// 16-byte table of row a and nibble c looks up nibble c of 16 weight rows with one i8x16.swizzle, and one
// byte add counts it, against an XOR, a popcnt and an add per 2 weight rows and word above. Byte counters
// hold 3 words (3 * 64 = 192 < 256) before they are widened into the int32 output.
constexpr int64_t kNibbleChunk = 3;
constexpr int64_t kTableBytes = 16 * 16;  // the 16 tables of one activation word
constexpr int64_t kWasmNibbleWords = 4;   // K <= 256: the sizes these tables were measured for (docs/web.md)

// tab[c][v] = popcount(nibble c of a XOR v) for c, v < 16.
inline void build_tables(uint64_t a, uint8_t* tab) {
  const v128_t iota = wasm_i8x16_make(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  BHV_UNROLL
  for (int c = 0; c < 16; ++c) {
    const v128_t x = wasm_i8x16_splat(static_cast<int8_t>((a >> (4 * c)) & 15));
    wasm_v128_store(tab + 16 * c, wasm_i8x16_popcnt(wasm_v128_xor(x, iota)));
  }
}

// Stores (first chunk) or adds 16 byte counters as int32 at out[0..16).
inline void widen_bytes(v128_t acc, int32_t* out, bool add) {
  const v128_t lo = wasm_u16x8_extend_low_u8x16(acc), hi = wasm_u16x8_extend_high_u8x16(acc);
  const v128_t v[4] = {wasm_u32x4_extend_low_u16x8(lo), wasm_u32x4_extend_high_u16x8(lo),
                       wasm_u32x4_extend_low_u16x8(hi), wasm_u32x4_extend_high_u16x8(hi)};
  BHV_UNROLL
  for (int u = 0; u < 4; ++u) {
    int32_t* o = out + 4 * u;
    wasm_v128_store(o, add ? wasm_i32x4_add(wasm_v128_load(o), v[u]) : v[u]);
  }
}

// R rows (their tables: tab[(r * KW + k) * 256 + 16 c + v]) against one quad (32 weight rows, two vectors):
// P[r * ldp + i]. Live in the inner loop: 2 R byte counters, the quad's 2 vectors of nibble c and a table
// (11 vectors for R = 4).
template <int R>
void nibble_tile(const uint8_t* tab, const uint8_t* nib, int64_t KW, int32_t* P, int64_t ldp) {
  for (int64_t k0 = 0; k0 < KW; k0 += kNibbleChunk) {
    const int64_t k1 = std::min(KW, k0 + kNibbleChunk);
    v128_t acc[R][2];
    BHV_UNROLL
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = wasm_i32x4_splat(0);
    for (int64_t k = k0; k < k1; ++k) {
      const uint8_t* nk = nib + k * 16 * bhv::kQuad;
      const uint8_t* tk = tab + k * kTableBytes;
      for (int c = 0; c < 16; ++c) {
        const v128_t w0 = wasm_v128_load(nk + c * bhv::kQuad), w1 = wasm_v128_load(nk + c * bhv::kQuad + 16);
        BHV_UNROLL
        for (int r = 0; r < R; ++r) {
          const v128_t t = wasm_v128_load(tk + r * KW * kTableBytes + 16 * c);
          acc[r][0] = wasm_i8x16_add(acc[r][0], wasm_i8x16_swizzle(t, w0));
          acc[r][1] = wasm_i8x16_add(acc[r][1], wasm_i8x16_swizzle(t, w1));
        }
      }
    }
    BHV_UNROLL
    for (int r = 0; r < R; ++r) {
      widen_bytes(acc[r][0], P + r * ldp, k0 > 0);
      widen_bytes(acc[r][1], P + r * ldp + 16, k0 > 0);
    }
  }
}

// R rows of A against quads [q0, q1).
template <int R>
void nibble_rows(const uint64_t* A, int64_t lda, const uint8_t* nib, int64_t q0, int64_t q1, int64_t KW, int32_t* P,
                 int64_t ldp) {
  alignas(16) uint8_t tab[R * kWasmNibbleWords * kTableBytes];
  for (int r = 0; r < R; ++r)
    for (int64_t k = 0; k < KW; ++k) build_tables(A[r * lda + k], tab + (r * KW + k) * kTableBytes);
  const int64_t nq = KW * 16 * bhv::kQuad;  // bytes per quad
  for (int64_t q = q0; q < q1; ++q) nibble_tile<R>(tab, nib + q * nq, KW, P + (q - q0) * bhv::kQuad, ldp);
}

void wasm_nibble_block(const uint64_t* A, int64_t lda, int64_t M, const uint8_t* nib, int64_t q0, int64_t q1,
                       int64_t KW, int32_t* P, int64_t ldp) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4) nibble_rows<4>(A + i * lda, lda, nib, q0, q1, KW, P + i * ldp, ldp);
  for (; i < M; ++i) nibble_rows<1>(A + i * lda, lda, nib, q0, q1, KW, P + i * ldp, ldp);
}

}  // namespace

namespace bhv {
const IsaKernels* isa_wasm_simd128() {
  static constexpr IsaKernels k{"wasm_simd128", wasm_popc_block, simd_pack_rows, epilogue_apply_rows,
                                wasm_nibble_block, kWasmNibbleWords, kFloatKernels};
  return &k;
}
}  // namespace bhv
#else
namespace bhv {
const IsaKernels* isa_wasm_simd128() { return nullptr; }
}  // namespace bhv
#endif
