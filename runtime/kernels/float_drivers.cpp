// Drivers of the float ops (kernels.h): each splits its loop into tasks on the thread pool and runs every task
// with the active ISA's float kernels (float_kernels.inc through isa.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace bhv {
namespace {

constexpr int64_t kMinParallelWork = 1 << 15;  // ~ element operations; below it a call runs on one thread

template <class F>
void parallel_for(int64_t n, int64_t work, F&& f) {
  parallel_tasks(n, work, kMinParallelWork, f);
}

// Pixels per task of the elementwise ops: enough work per task to amortise scheduling.
int64_t pixel_chunk(int64_t c) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(c, 1)); }

// Runs f(r0, r1) over [0, M) in chunks of `chunk` rows.
template <class F>
void chunked(int64_t M, int64_t chunk, int64_t work, F&& f) {
  parallel_for((M + chunk - 1) / chunk, work, [&](int64_t t) { f(t * chunk, std::min(M, (t + 1) * chunk)); });
}

const FloatKernels& fk() { return active_kernels().f; }

}  // namespace

void patch_conv(const PatchConv& p, const float* x, int64_t B, float* y) {
  const FloatKernels& k = fk();
  parallel_for(B * p.oh, B * p.oh * p.ow * p.K * p.cout, [&](int64_t t) { k.patch_conv_row(p, x, y, t / p.oh, t % p.oh); });
}

void affine(const Affine& p, const float* x, int64_t B, float* y, uint64_t* bits) {
  const FloatKernels& k = fk();
  const int64_t M = B * p.HW;
  chunked(M, pixel_chunk(p.C), M * p.C * (p.gelu ? 8 : 1),
          [&](int64_t p0, int64_t p1) { k.affine_rows(p, x, y, p0, p1, bits); });
}

void avg_pool(const float* x, int64_t B, int64_t H, int64_t W, int64_t C, int64_t kernel, float* y) {
  const FloatKernels& k = fk();
  const int64_t oh = H / kernel;
  parallel_for(B * oh, B * H * W * C, [&](int64_t t) { k.avg_pool_row(x, H, W, C, kernel, y, t / oh, t % oh); });
}

void mean_tokens(const float* x, int64_t B, int64_t HW, int64_t C, float* y) {
  const FloatKernels& k = fk();
  constexpr int64_t kCols = 256;  // channels per task
  const int64_t nc = (C + kCols - 1) / kCols;
  parallel_for(B * nc, B * HW * C, [&](int64_t t) {
    const int64_t c0 = (t % nc) * kCols;
    k.mean_tokens_cols(x, HW, C, y, t / nc, c0, std::min(C, c0 + kCols));
  });
}

void means_of_groups(const float* z, int64_t M, int64_t N, int64_t r, float* out) {
  const FloatKernels& k = fk();
  chunked(M, pixel_chunk(N), M * N, [&](int64_t m0, int64_t m1) { k.group_mean_rows(z, N, r, out, m0, m1); });
}

void linear(const float* x, int64_t B, int64_t K, int64_t N, const float* w, const float* bias, float* y) {
  const FloatKernels& k = fk();
  constexpr int64_t kRows = 64;  // output features per task
  const int64_t nr = (N + kRows - 1) / kRows;
  parallel_for(B * nr, B * N * K, [&](int64_t t) {
    const int64_t n0 = (t % nr) * kRows;
    k.linear_rows(x, K, N, w, bias, y, t / nr, n0, std::min(N, n0 + kRows));
  });
}

void shift_add(float* out, const float* x, int64_t B, int64_t H, int64_t W, int64_t C, const int* kernels,
               int64_t nk, const float* ls) {
  const FloatKernels& k = fk();
  parallel_for(B * H, B * H * W * C * 8 * nk, [&](int64_t t) { k.shift_row(out, x, t / H, t % H, H, W, C, kernels, nk, ls); });
}

void attention_pool_norm(const WindowAttn& a, const float* x, int64_t B, const AttnBuffers& buf) {
  const FloatKernels& k = fk();
  parallel_for(B * a.nW, B * a.H * a.W * a.C * 2, [&](int64_t t) { k.attn_global_token(a, x, buf, t); });
  const int64_t M = B * a.nW * a.L;
  chunked(M, std::max<int64_t>(1, 2048 / a.C), M * a.C * 4,
          [&](int64_t r0, int64_t r1) { k.attn_norm_rows(a, x, buf, r0, r1); });
}

void attention_qkv(const WindowAttn& a, int64_t B, const AttnBuffers& buf) {
  const int64_t M = B * a.nW * a.L, C = a.C, CW = words_for(C);
  for (int n = 0; n < 3; ++n) {
    const AttnBranch& br = a.br[n];
    Epilogue e;
    e.scale = br.scale, e.bias = br.bias;
    e.res = buf.hs, e.res_ld = C, e.res_cols = C;
    e.slope = br.slope, e.b1 = br.b1, e.b2 = br.b2;
    e.out = buf.m[n], e.out_ld = C;
    bgemm(buf.bits[n], M, br.panels, 0, C, CW, C, 1, e, br.nib);
  }
}

// LSQ's step and offset of head j: with grad_scale, s - s g + s g (float32) with g = heads / sqrt(3 B nW heads L²)
// computed in double and rounded to float32 (the float model's gradient-scaled parameters, evaluated).
void attention_core(const WindowAttn& a, int64_t B, const AttnBuffers& buf) {
  std::vector<float> step(static_cast<size_t>(a.heads), 0.0f), zero(static_cast<size_t>(a.heads), 0.0f);
  if (a.lsq) {
    const double numel = static_cast<double>(B) * static_cast<double>(a.nW) * static_cast<double>(a.heads) *
                         static_cast<double>(a.L) * static_cast<double>(a.L);
    const float g = static_cast<float>(static_cast<double>(a.heads) / std::sqrt(3.0 * numel));
    for (int64_t j = 0; j < a.heads; ++j) {
      const float s = a.step[j], z = a.zero[j];
      step[static_cast<size_t>(j)] = a.grad_scale ? (s - s * g) + s * g : s;
      zero[static_cast<size_t>(j)] = a.grad_scale ? (z - z * g) + z * g : z;
    }
  }
  const FloatKernels& k = fk();
  const int64_t tasks = B * a.nW * a.heads;
  parallel_for(tasks, tasks * a.L * a.L * std::max<int64_t>(a.d / 8, 1), [&](int64_t t) {
    const size_t j = static_cast<size_t>(t % a.heads);
    k.attn_head(a, buf, t / a.heads, t % a.heads, step[j], zero[j]);
  });
}

void attention_merge(const WindowAttn& a, int64_t B, const AttnBuffers& buf, float* out) {
  const FloatKernels& k = fk();
  const int64_t M = B * a.nW * a.L;
  chunked(M, std::max<int64_t>(1, 2048 / a.C), M * a.C, [&](int64_t r0, int64_t r1) { k.attn_ctx_rows(a, buf, r0, r1); });
  parallel_for(B * a.nW, B * a.nW * a.nW * a.C, [&](int64_t t) { k.attn_global_mean(a, buf, t); });
  parallel_for(B * a.H, B * a.H * a.W * a.C, [&](int64_t t) { k.attn_merge_row(a, buf, out, t); });
}

}  // namespace bhv
