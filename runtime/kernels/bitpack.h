// bhvit packed engine: bit conventions (written down once; docs/packed-format.md repeats them).
//
//  1. Word type: uint64_t, little-endian in files.
//  2. Packing axis: along K, the reduction axis (in-features of a linear, channels of a conv input,
//     head dim for q/k, keys for attention masks and v^T). A row of K values becomes
//     KW = ceil(K / 64) words.
//  3. Bit order: element k of a row lives in word k / 64, bit k % 64 (bit 0 = least significant).
//  4. Values: a set bit means -1, a clear bit means +1. Padding bits (k >= K in the last word) are 0.
//     Activations are packed with bit = (x < 0): exact zeros (and -0.0, NaN) map to +1 (see
//     docs/packed-format.md, "Zeros").
//  5. Dot product of two +-1 rows: a.b = K - 2 * popcount(a XOR b). Padding bits are 0 in both
//     operands, so they never count.
//     A {0,1} mask m against a +-1 row v: m.v = popcount(m) - 2 * popcount(m AND v).
//  6. Output transform (per output channel n, after accumulation, in this order):
//       z = scale[n] * dot + bias[n]          (alpha_n and an eval-mode BatchNorm folded together)
//       z = z + residual[m, n % res_cols]     (optional; res_cols < N tiles the residual, e.g. concat([x]*r))
//       z = PReLU_n(z - b1[n]) + b2[n]        (optional RPReLU)
//       out[m, n] = z   or   out[m, n] += z   (accumulate mode, e.g. summing dilation branches)
//  7. Weight panels: the GEMM right operand (N rows of KW words) is stored as panels of 8 rows,
//     word-interleaved: panel[p][k][j] = row (8p + j), word k. Rows >= N are zero.
//  8. Nibble layout (an in-memory companion of the panels for small K, never stored in files): rows
//     grouped in quads of 32, one byte per row and 4-bit field,
//       nib[q][k][c][j] = (row (32q + j), word k) >> 4c & 15     (c < 16, j < 32; rows >= N are 0),
//     so that popcount(a XOR w) = sum_c T[a >> 4c & 15][nib[..][c][j]] with T[x][v] = popcount(x ^ v)
//     is one byte-table lookup (vpshufb) per 32 rows and field.
#pragma once
#include <cstddef>
#include <cstdint>

// Full unrolling of the short loops over the rows of a register tile, so that the per-row
// accumulators live in registers (GCC otherwise keeps arrays of vectors on the stack and zeroes them
// with `rep stos`, which costs more than the whole tile when K is one or two words).
#if defined(__clang__)
#define BHV_UNROLL _Pragma("unroll")
#define BHV_UNROLL_2 _Pragma("unroll 2")
#elif defined(__GNUC__)
#define BHV_UNROLL _Pragma("GCC unroll 16")
#define BHV_UNROLL_2 _Pragma("GCC unroll 2")
#else
#define BHV_UNROLL
#define BHV_UNROLL_2
#endif

namespace bhv {

constexpr int kWordBits = 64;
constexpr int kPanel = 8;
constexpr int kQuad = 32;           // rows per quad of the nibble layout (convention 8)
// K <= 2048 (every binary linear of BHViT): the weights whose nibble layout is built at load, for the ISAs
// whose table kernels take them (IsaKernels::nibble_max_words).
constexpr int64_t kNibbleMaxWords = 32;

inline int64_t words_for(int64_t k) { return (k + kWordBits - 1) / kWordBits; }
inline int64_t panels_for(int64_t n) { return (n + kPanel - 1) / kPanel; }
inline int64_t quads_for(int64_t n) { return (n + kQuad - 1) / kQuad; }

}  // namespace bhv
