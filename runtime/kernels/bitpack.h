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
constexpr int64_t kNibbleMaxWords = 4;  // K <= 256: where the nibble-table kernels beat the plain ones

inline int64_t words_for(int64_t k) { return (k + kWordBits - 1) / kWordBits; }
inline int64_t panels_for(int64_t n) { return (n + kPanel - 1) / kPanel; }
inline int64_t quads_for(int64_t n) { return (n + kQuad - 1) / kQuad; }

struct Epilogue;  // kernels.h

// One ISA's kernels. popc_block fills P[i * ldp + 8 * (p - p0) + j] (i < M, p0 <= p < p1, j < 8) with
//   sum_k popcount(op(A[i * lda + k], Bp[(p * KW + k) * 8 + j])),  op = XOR, or AND if op_and.
struct IsaKernels {
  const char* name;
  void (*popc_block)(const uint64_t* A, int64_t lda, int64_t M, const uint64_t* Bp, int64_t p0,
                     int64_t p1, int64_t KW, bool op_and, int32_t* P, int64_t ldp);
  // Packs rows of x (M x K floats, row stride ldx) into out (M x KW words, row stride KW):
  // bit = (x[i, k] + bias[k] < 0); bias may be null.
  void (*pack_rows)(const float* x, int64_t ldx, int64_t M, int64_t K, const float* bias,
                    uint64_t* out);
  // Output transform (convention 6) of rows [m0, m0 + rows) of batch g on columns [n0, n1): v[i * ldv + n - n0]
  // are dots, or raw popcounts when kdot >= 0 (then dot = kdot - 2 v). Compiled per ISA so that it vectorises.
  void (*apply_rows)(const Epilogue& e, int64_t g, int64_t m0, int64_t rows, const int32_t* v, int64_t ldv,
                     int32_t kdot, int64_t n0, int64_t n1);
  // Optional (null when this ISA has no table lookup): the XOR popcounts of popc_block from the nibble
  // layout (convention 8) of quads [q0, q1) of one weight, P[i * ldp + 32 * (q - q0) + j]; ldp must leave
  // room for whole quads.
  void (*nibble_block)(const uint64_t* A, int64_t lda, int64_t M, const uint8_t* nib, int64_t q0, int64_t q1,
                       int64_t KW, int32_t* P, int64_t ldp) = nullptr;
  // The MLP's shift branches added into output row (b, i) of (B, H, W, C) maps (kernels.h, shift_add),
  // compiled per ISA so that the channel loops run at its vector width (float_ops.inc).
  void (*shift_row)(float* out, const float* x, int64_t b, int64_t i, int64_t H, int64_t W, int64_t C,
                    const int* kernels, int64_t nk, const float* ls) = nullptr;
};

// Returns the kernels of an ISA, or null when this build or this CPU lacks it.
const IsaKernels* isa_generic();
const IsaKernels* isa_popcnt();
const IsaKernels* isa_avx2();
const IsaKernels* isa_avx512bw();
const IsaKernels* isa_avx512vpopcnt();
const IsaKernels* isa_neon();

}  // namespace bhv
