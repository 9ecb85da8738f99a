// The kernels' API: drivers that split every loop over activations into tasks on the thread pool (parallel.h)
// and run each task with the active ISA's kernels (isa.h). Bit conventions: bitpack.h. Plain pointers in,
// no Python or torch types; the runtime (runtime/src) parses, validates and plans, then calls these.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "bitpack.h"
#include "isa.h"
#include "parallel.h"  // get_num_threads, set_num_threads

namespace bhv {

// ---- run-time configuration -------------------------------------------------------------------
std::vector<std::string> available_isas();  // best first; always ends with "generic"
std::string current_isa();
void set_isa(const std::string& name);      // throws std::invalid_argument if unavailable
// The active ISA's kernels (isa.h), for the drivers.
const IsaKernels& active_kernels();

// ---- output transform (bitpack.h, convention 6) ----------------------------------------------
struct Epilogue {
  const float* scale = nullptr;  // (N,) per-channel scale; null -> scale_all
  float scale_all = 1.0f;
  const float* bias = nullptr;   // (N,) or null
  const float* res = nullptr;    // residual rows: res[g * res_gstride + m * res_ld + n % res_cols]
  int64_t res_ld = 0, res_cols = 0, res_gstride = 0;
  const float* slope = nullptr;  // RPReLU: PReLU slope, b1 (before), b2 (after); all (N,) or null
  const float* b1 = nullptr;
  const float* b2 = nullptr;
  const float* post_scale = nullptr;  // optional affine after the RPReLU: z * post_scale + post_bias
  const float* post_bias = nullptr;   // (a following LayerScale, or a BatchNorm after a sum of branches)
  bool accumulate = false;       // out += z instead of out = z
  bool stream = false;           // non-temporal stores (set by the drivers for outputs larger than the
                                 // last-level cache; ignored with accumulate)
  float* out = nullptr;          // out[g * out_gstride + m * out_ld + n]
  int64_t out_ld = 0, out_gstride = 0;
  // Packed mode (bits != null; batch g = 0, no accumulate): instead of writing z to out, the transform
  // packs the next binary layer's input, bit n % 64 of bits[m * bits_ld + n / 64] = (z + bits_bias[n] < 0)
  // (convention 4; bits_bias may be null), and, when means is set, the mean of each group of mean_r
  // consecutive columns, means[m * means_ld + n / mean_r] (summed left to right, times 1/mean_r: the
  // division of means_of_groups, exactly, since mean_r is a power of 2). Columns of a task must start on a
  // multiple of 64 and mean_r must divide 128.
  uint64_t* bits = nullptr;
  const float* bits_bias = nullptr;
  int64_t bits_ld = 0;
  float* means = nullptr;
  int64_t mean_r = 0, means_ld = 0;
};

// ---- packing ----------------------------------------------------------------------------------
// x: (M, K) floats, row stride ldx; bias: (K,) or null -> out (M, KW): bit = (x + bias < 0).
void pack_rows(const float* x, int64_t ldx, int64_t M, int64_t K, const float* bias, uint64_t* out);
// rows: (G, N, KW) -> panels: (G, ceil(N/8), KW, 8), rows >= N zero.
void to_panels(const uint64_t* rows, int64_t G, int64_t N, int64_t KW, uint64_t* panels);
// panels (NP, KW, 8) -> nibble layout (ceil(NP/4), KW, 16, 32) bytes (bitpack.h, convention 8).
void to_nibbles(const uint64_t* panels, int64_t NP, int64_t KW, uint8_t* out);
// Whether a shared N-row weight of KW words gets a nibble layout (built at load) for the table kernels:
// KW <= kNibbleMaxWords, and at least two quads, since a partial quad costs whole 32-row lookups.
bool nibbles_pay(int64_t N, int64_t KW);
// ---- binary products --------------------------------------------------------------------------
// XOR GEMM with fused output transform: dot = K - 2 popcount(a XOR b), batched over G
// (A: (G, M, KW), Bp: (G, NP, KW, 8); b_gstride 0 shares one weight over the batch). nib, optional, is
// the shared weight's nibble layout (to_nibbles): used when nibbles_pay and the active ISA's table kernels
// take KW (IsaKernels::nibble_max_words); the result is the same integers either way.
void bgemm(const uint64_t* A, int64_t M, const uint64_t* Bp, int64_t b_gstride, int64_t N, int64_t KW,
           int64_t K, int64_t G, const Epilogue& e, const uint8_t* nib = nullptr);

struct ConvGeom {
  int64_t B, H, W, C, CW;                 // input (B, H, W) pixels of C channels in CW words each
  int64_t groups, KH, KWd, stride, pad, dil;
  int64_t OH, OW, Cout;
};
// Binary grouped conv on channel-packed pixels, zero padding exact (only valid taps count).
// Bp: (groups, ceil((Cout/groups)/8), KWc, 8) with KWc = ceil(KH*KWd*(C/groups)/64), weight rows
// ordered (tap = ky*KWd + kx, channel); wpop: (Cout, KH*KWd) popcount of each tap's weight bits.
// Output row m = (b*OH + oh)*OW + ow, column n = output channel.
void bconv(const uint64_t* xp, const ConvGeom& g, const uint64_t* Bp, const int32_t* wpop, const Epilogue& e);

// ---- float ops (float_kernels.inc; maps are channels-last (B, H, W, C) floats) -------------------------
// The stem: y[b, oh, ow, o] = bias[o] + sum_{c, ky, kx} w[o, c, ky, kx] x[b, c, oh k + ky, ow k + kx]
// (the additions in kk = (c, ky, kx) order, from 0, then the bias).
struct PatchConv {
  bool nchw = false;  // x is the images (B, C, H, W), else a (B, H, W, C) map
  int64_t C = 0, H = 0, W = 0, k = 0, cout = 0, oh = 0, ow = 0, K = 0;  // K = C k k
  const float* wt = nullptr;    // (K, cout): the weight transposed
  const float* bias = nullptr;  // (cout,) or null
};
void patch_conv(const PatchConv& p, const float* x, int64_t B, float* y);

// y[p, c] = act(x[p, c] scale[c] + bias[c]) + add[p mod HW, c] (each part optional; act: none or GELU); y may
// be x. With bits, the sign words of y + pack_move (convention 4) are written too, per chunk of rows while
// it is in cache (a following sign_pack fused into the affine).
struct Affine {
  int64_t C = 0, HW = 0;
  const float *scale = nullptr, *bias = nullptr, *add = nullptr;  // (C,), (C,), (HW, C)
  bool gelu = false;
  const float* pack_move = nullptr;  // (C,) or null
};
void affine(const Affine& p, const float* x, int64_t B, float* y, uint64_t* bits);

// y[b, oh, ow, c] = (the k x k block summed in row-major order) / k^2
void avg_pool(const float* x, int64_t B, int64_t H, int64_t W, int64_t C, int64_t k, float* y);
// y[b, c] = (sum over the HW pixels, in order) / HW
void mean_tokens(const float* x, int64_t B, int64_t HW, int64_t C, float* y);
// out[m, j] = (z[m, j r] + ... + z[m, j r + r - 1]) / r (summed left to right), z (M, N) with r | N
void means_of_groups(const float* z, int64_t M, int64_t N, int64_t r, float* out);
// Shift branches of the MLP (SPEC section 2), added to out in place, maps (B, H, W, C):
//   for each k in kernels: out += LS_h,k(S_h,k(x)); out += LS_w,k(S_w,k(x)); out += LS_c,k(S_c,k(x))
// ls: per branch (in that order) alpha (C) then bias (C), i.e. (3 * nk, 2, C).
void shift_add(float* out, const float* x, int64_t B, int64_t H, int64_t W, int64_t C, const int* kernels,
               int64_t nk, const float* ls);
// y[b, n] = (sum_k w[n, k] x[b, k], as 8 partial sums) + bias[n]
void linear(const float* x, int64_t B, int64_t K, int64_t N, const float* w, const float* bias, float* y);

// Window attention (docs/packed-format.md §6) over nW windows of w x w pixels plus nW global tokens:
// L = w² + nW tokens per window, C channels, `heads` heads of d = C / heads.
struct AttnBranch {  // one of q, k, v
  const float *move = nullptr, *scale = nullptr, *bias = nullptr, *move2 = nullptr;
  const float *slope = nullptr, *b1 = nullptr, *b2 = nullptr;  // RPReLU
  const uint64_t* panels = nullptr;  // (ceil(C/8), CW, 8)
  const uint8_t* nib = nullptr;      // nibble layout, or null
};
struct WindowAttn {
  int64_t H = 0, W = 0, C = 0, w = 0, heads = 0, d = 0, pad = 0, nW = 0, L = 0;
  const float *alpha = nullptr, *one_minus_alpha = nullptr;  // global-token pooling mix (C,)
  const float *ln_w = nullptr, *ln_b = nullptr;              // token LayerNorm (C,)
  float eps = 0, divisor = 1;
  AttnBranch br[3];
  bool lsq = true, grad_scale = false;               // quantizer: LSQ, or GSB
  const float *step = nullptr, *zero = nullptr;      // LSQ (heads,)
  float gsb_alpha = 1, gsb_w[3] = {0, 0, 0}, theta[3] = {0, 0, 0};
  const float *ctx_scale = nullptr, *ctx_bias = nullptr, *ctx_slope = nullptr, *ctx_b1 = nullptr, *ctx_b2 = nullptr;
  const float *mix = nullptr, *one_minus_mix = nullptr;  // (C,)
};
// Per batch: glob (B, nW, C); hs, m[0..2], ctx (B nW L, C); bits (B nW L, CW) words.
struct AttnBuffers {
  float* glob = nullptr;
  float* hs = nullptr;
  float* m[3] = {nullptr, nullptr, nullptr};
  float* ctx = nullptr;
  uint64_t* bits[3] = {nullptr, nullptr, nullptr};  // sign(hs + move_n) of q, k, v: (B nW L, words(C)) each
};
// 1-2. global tokens G = alpha max + (1 - alpha) avg over each window (padding p: max skips it, avg divides
//      by w²), then the tokens of each window (its w² pixels, then the nW global tokens) LayerNormed into hs,
//      each row packed at once into the three branches' input bits (bits[n] = sign(hs + move_n)).
void attention_pool_norm(const WindowAttn& a, const float* x, int64_t B, const AttnBuffers& buf);
// 3. m_n = RPReLU_n(scale_n (sign(hs + move_n) . sign(W_n)) + bias_n + hs), n = q, k, v.
void attention_qkv(const WindowAttn& a, int64_t B, const AttnBuffers& buf);
// 4. per (window, head): scores (d - 2 popcount(q XOR k)) / divisor, softmax, Â as three binary masks
//    (LSQ levels or GSB thresholds), Â·v by AND-popcounts, into ctx.
void attention_core(const WindowAttn& a, int64_t B, const AttnBuffers& buf);
// 5-6. y = RPReLU_ctx((((ctx scale + bias) + m_q) + m_k) + m_v) in place, then
//      out = y[window pixel] mix + (mean over the windows of global row) (1 - mix).
void attention_merge(const WindowAttn& a, int64_t B, const AttnBuffers& buf, float* out);

}  // namespace bhv
