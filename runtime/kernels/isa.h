// The table of one instruction set's kernels: every loop over activations, binary and float, compiled once
// per ISA file (isa_*.cpp, each with its own -m flags) and chosen at run time by cpuid (drivers.cpp). The
// drivers (kernels.h) split work into tasks and call the active table; nothing else dispatches on the CPU.
#pragma once
#include <cstdint>

#include "bitpack.h"

namespace bhv {

struct Epilogue;    // kernels.h
struct PatchConv;   // kernels.h
struct Affine;      // kernels.h
struct WindowAttn;  // kernels.h
struct AttnBuffers; // kernels.h

// Float kernels (float_kernels.inc), each one task of its driver in kernels.h: the same operations in the same
// order on every ISA (no FMA: -ffp-contract=off), so every ISA gives the same bits.
struct FloatKernels {
  // output row r of image b
  void (*patch_conv_row)(const PatchConv& p, const float* x, float* y, int64_t b, int64_t r);
  // pixels [p0, p1) (of B H W); bits, when not null, receive their sign words
  void (*affine_rows)(const Affine& p, const float* x, float* y, int64_t p0, int64_t p1, uint64_t* bits);
  // output row r of image b of a k x k average pool
  void (*avg_pool_row)(const float* x, int64_t H, int64_t W, int64_t C, int64_t k, float* y, int64_t b, int64_t r);
  // channels [c0, c1) of image b: the mean over its HW pixels
  void (*mean_tokens_cols)(const float* x, int64_t HW, int64_t C, float* y, int64_t b, int64_t c0, int64_t c1);
  // rows [m0, m1) of z (M, N): out[m, j] = (z[m, j r] + ... + z[m, j r + r - 1]) / r, summed left to right
  void (*group_mean_rows)(const float* z, int64_t N, int64_t r, float* out, int64_t m0, int64_t m1);
  // outputs [n0, n1) of image b: y = w x + bias
  void (*linear_rows)(const float* x, int64_t K, int64_t N, const float* w, const float* bias, float* y, int64_t b,
                      int64_t n0, int64_t n1);
  // the MLP's shift branches added into output row (b, i) of (B, H, W, C) maps
  void (*shift_row)(float* out, const float* x, int64_t b, int64_t i, int64_t H, int64_t W, int64_t C,
                    const int* kernels, int64_t nk, const float* ls);
  // window attention (kernels.h, attention_*): the global token of window t (over B nW), the token norm of
  // rows [r0, r1), one (window, head) of the core, the context transform of rows [r0, r1), the mean of global
  // token t (over B nW) over the windows, output row t (over B H)
  void (*attn_global_token)(const WindowAttn& a, const float* x, const AttnBuffers& buf, int64_t t);
  void (*attn_norm_rows)(const WindowAttn& a, const float* x, const AttnBuffers& buf, int64_t r0, int64_t r1);
  void (*attn_head)(const WindowAttn& a, const AttnBuffers& buf, int64_t win, int64_t head, float step, float zero);
  void (*attn_ctx_rows)(const WindowAttn& a, const AttnBuffers& buf, int64_t r0, int64_t r1);
  void (*attn_global_mean)(const WindowAttn& a, const AttnBuffers& buf, int64_t t);
  void (*attn_merge_row)(const WindowAttn& a, const AttnBuffers& buf, float* out, int64_t t);
};

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
                       int64_t KW, int32_t* P, int64_t ldp);
  // The largest KW that nibble_block takes (0 without it); at most kNibbleMaxWords (bitpack.h), the largest
  // for which the nibble layout is built.
  int64_t nibble_max_words;
  FloatKernels f;
};

// Returns the kernels of an ISA, or null when this build or this CPU lacks it.
const IsaKernels* isa_generic();
const IsaKernels* isa_popcnt();
const IsaKernels* isa_avx2();
const IsaKernels* isa_avx512bw();
const IsaKernels* isa_avx512vpopcnt();
const IsaKernels* isa_neon();
const IsaKernels* isa_wasm_simd128();  // WebAssembly with -msimd128 (isa_wasm.cpp)

}  // namespace bhv
