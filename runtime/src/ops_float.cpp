// Float ops (§5): patch_conv, affine, sign_pack, avg_pool, mean_tokens, linear, shift_add.
// Maps are channels-last (B, H, W, C); loops run over pixels in parallel and over channels in vectors.
#include <algorithm>
#include <cstring>

#include "kernels.h"
#include "floatk.h"
#include "ops.h"
#include "ops_parallel.h"

namespace bhr {
namespace {

// Pixels per task of the elementwise ops: enough work per task to amortise scheduling.
int64_t pixel_chunk(int64_t c) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(c, 1)); }

// ---- patch_conv --------------------------------------------------------------------------------------
// y[oh, ow, o] = bias[o] + sum_{c, ky, kx} weight[o, c, ky, kx] x[c, oh k + ky, ow k + kx], as a small GEMM:
// the patches of one output row (OW x K, K ordered (c, ky, kx)) times the transposed weight (K x Cout),
// four pixels per pass over the weight, the channel loop vectorised.
class PatchConv final : public Op {
 public:
  int in = 0, out = 0;
  bool nchw = false;
  int64_t C = 0, H = 0, W = 0, k = 0, cout = 0, oh = 0, ow = 0, K = 0;
  std::vector<float> wt;  // (K, Cout)
  const float* bias = nullptr;

  int prof_kind() const override { return kProfPatchConv; }

  // patch (K) of output pixel (b, r, c0): element (c, ky, kx)
  void gather(const float* src, int64_t b, int64_t r, int64_t c0, float* patch) const {
    for (int64_t c = 0; c < C; ++c)
      for (int64_t ky = 0; ky < k; ++ky)
        for (int64_t kx = 0; kx < k; ++kx) {
          const int64_t y = r * k + ky, x = c0 * k + kx;
          patch[(c * k + ky) * k + kx] = nchw ? src[((b * C + c) * H + y) * W + x] : src[((b * H + y) * W + x) * C + c];
        }
  }

  void run(const Exec& x) const override {
    const float* src = x.f(in);
    float* dst = x.f(out);
    parallel_for(x.batch * oh, x.batch * oh * ow * K * cout, [&](int64_t t) { out_row(src, dst, t / oh, t % oh); });
  }

  BHR_FLOAT_CLONES void out_row(const float* src, float* dst, int64_t b, int64_t r) const {
    float* patch = scratch<float, 10>(static_cast<size_t>(ow * K));
    for (int64_t c0 = 0; c0 < ow; ++c0) gather(src, b, r, c0, patch + c0 * K);
    float* row = dst + (b * oh + r) * ow * cout;
    int64_t p = 0;
    for (; p + 4 <= ow; p += 4) block<4>(patch + p * K, row + p * cout);
    for (; p < ow; ++p) block<1>(patch + p * K, row + p * cout);
  }

  // P pixels x 16 output channels per pass, the 2P accumulators in registers over the whole K (the same
  // additions in the same order as one pixel at a time: 0, + a w for kk = 0 .. K-1, then + bias). Measured
  // on the 4x4 stem of bhvit_small (K = 48, 64 channels, AVX2 Xeon): 1.0 -> 0.5 ms against accumulating whole
  // 64-channel rows in memory.
  template <int P>
  inline __attribute__((always_inline)) void block(const float* __restrict patch, float* __restrict o) const {
    int64_t j0 = 0;
    for (; j0 + 16 <= cout; j0 += 16) {
      vf8 acc[P][2];
      for (int q = 0; q < P; ++q) acc[q][0] = acc[q][1] = vf8{};
      for (int64_t kk = 0; kk < K; ++kk) {
        const vf8 w0 = load8(wt.data() + kk * cout + j0), w1 = load8(wt.data() + kk * cout + j0 + 8);
        for (int q = 0; q < P; ++q) {
          const float a = patch[q * K + kk];
          acc[q][0] = acc[q][0] + a * w0;
          acc[q][1] = acc[q][1] + a * w1;
        }
      }
      for (int q = 0; q < P; ++q) {
        if (bias) acc[q][0] = acc[q][0] + load8(bias + j0), acc[q][1] = acc[q][1] + load8(bias + j0 + 8);
        store8(o + q * cout + j0, acc[q][0]);
        store8(o + q * cout + j0 + 8, acc[q][1]);
      }
    }
    for (; j0 < cout; ++j0)  // channels past the last multiple of 16, one at a time
      for (int q = 0; q < P; ++q) {
        float acc = 0.0f;
        for (int64_t kk = 0; kk < K; ++kk) acc = acc + patch[q * K + kk] * wt[static_cast<size_t>(kk * cout + j0)];
        o[q * cout + j0] = bias ? acc + bias[j0] : acc;
      }
  }
};

// ---- affine --------------------------------------------------------------------------------------------
// y = act(x scale + bias) + add[h, w, c]
class Affine final : public Op {
 public:
  int in = 0, out = 0;
  int64_t C = 0, HW = 0;
  const float *scale = nullptr, *bias = nullptr, *add = nullptr;
  bool gelu = false;
  // A following sign_pack of out, fused (fuse_ops): its bits (and move) packed from each chunk of rows
  // while it is in cache; that op then does nothing.
  int pack_out = -1;
  const float* pack_move = nullptr;

  int prof_kind() const override { return kProfAffine; }

  template <bool S, bool B>
  static void row(const float* xi, const float* __restrict s, const float* __restrict b, int64_t C,
                  float* y) {  // y may be xi (in place)
    for (int64_t c = 0; c < C; ++c) {
      float v = xi[c];
      if (S) v = v * s[c];
      if (B) v = v + b[c];
      y[c] = v;
    }
  }

  void run(const Exec& x) const override {
    const float* src = x.f(in);
    float* dst = x.f(out);
    const int64_t M = x.batch * HW, chunk = pixel_chunk(C);
    uint64_t* bits = pack_out >= 0 ? x.u(pack_out) : nullptr;
    parallel_for((M + chunk - 1) / chunk, M * C * (gelu ? 8 : 1),
                 [&](int64_t t) { rows(src, dst, t * chunk, std::min(M, (t + 1) * chunk), bits); });
  }

  void rows(const float* src, float* dst, int64_t p0, int64_t p1, uint64_t* bits) const {
    float_rows(src, dst, p0, p1);
    if (bits) {
      const int64_t words = (C + 63) / 64;
      bhv::active_kernels().pack_rows(dst + p0 * C, C, p1 - p0, C, pack_move, bits + p0 * words);
    }
  }

  BHR_FLOAT_CLONES void float_rows(const float* src, float* dst, int64_t p0, int64_t p1) const {
      for (int64_t p = p0; p < p1; ++p) {
        const float* xi = src + p * C;
        float* y = dst + p * C;
        if (scale && bias) row<true, true>(xi, scale, bias, C, y);
        else if (scale) row<true, false>(xi, scale, bias, C, y);
        else if (bias) row<false, true>(xi, scale, bias, C, y);
        else if (y != xi) std::memcpy(y, xi, sizeof(float) * static_cast<size_t>(C));
        if (gelu) gelu_row(y, C);
        if (add) {
          const float* __restrict a = add + (p % HW) * C;
          for (int64_t c = 0; c < C; ++c) y[c] = y[c] + a[c];
        }
      }
  }
};

// ---- sign_pack -----------------------------------------------------------------------------------------
class SignPack final : public Op {
 public:
  int in = 0, out = 0;
  int64_t C = 0, HW = 0;
  const float* move = nullptr;
  bool fused = false;  // the preceding affine packs out (fuse_ops)
  int prof_kind() const override { return kProfSignPack; }
  void run(const Exec& x) const override {
    if (!fused) bhv::pack_rows(x.f(in), C, x.batch * HW, C, move, x.u(out));
  }
};

// ---- avg_pool ------------------------------------------------------------------------------------------
// the k x k block summed in row-major order, divided by k^2
class AvgPool final : public Op {
 public:
  int in = 0, out = 0;
  int64_t H = 0, W = 0, C = 0, k = 0, oh = 0, ow = 0;
  int prof_kind() const override { return kProfAvgPool; }
  void run(const Exec& x) const override {
    const float* src = x.f(in);
    float* dst = x.f(out);
    const float div = static_cast<float>(k * k);
    parallel_for(x.batch * oh, x.batch * oh * ow * k * k * C, [&](int64_t t) {
      const int64_t b = t / oh, r = t % oh;
      for (int64_t c0 = 0; c0 < ow; ++c0) {
        float* __restrict o = dst + ((b * oh + r) * ow + c0) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = 0.0f;
        for (int64_t ky = 0; ky < k; ++ky)
          for (int64_t kx = 0; kx < k; ++kx) {
            const float* __restrict p = src + ((b * H + r * k + ky) * W + c0 * k + kx) * C;
            for (int64_t c = 0; c < C; ++c) o[c] = o[c] + p[c];
          }
        for (int64_t c = 0; c < C; ++c) o[c] = o[c] / div;
      }
    });
  }
};

// ---- mean_tokens ---------------------------------------------------------------------------------------
// out[c] = (sum over the H W pixels, in order) / (H W)
class MeanTokens final : public Op {
 public:
  int in = 0, out = 0;
  int64_t HW = 0, C = 0;
  int prof_kind() const override { return kProfMeanTokens; }
  void run(const Exec& x) const override {
    const float* src = x.f(in);
    float* dst = x.f(out);
    const float n = static_cast<float>(HW);
    constexpr int64_t kCols = 256;  // channels per task
    const int64_t nc = (C + kCols - 1) / kCols;
    parallel_for(x.batch * nc, x.batch * HW * C, [&](int64_t t) {
      const int64_t b = t / nc, c0 = (t % nc) * kCols, c1 = std::min(C, c0 + kCols);
      float* __restrict o = dst + b * C;
      for (int64_t c = c0; c < c1; ++c) o[c] = 0.0f;
      for (int64_t p = 0; p < HW; ++p) {
        const float* __restrict r = src + (b * HW + p) * C;
        for (int64_t c = c0; c < c1; ++c) o[c] = o[c] + r[c];
      }
      for (int64_t c = c0; c < c1; ++c) o[c] = o[c] / n;
    });
  }
};

// ---- linear --------------------------------------------------------------------------------------------
// y[n] = bias[n] + sum_k weight[n, k] x[k]: the dot first (8 partial sums), then the bias
class Linear final : public Op {
 public:
  int in = 0, out = 0;
  int64_t K = 0, N = 0;
  const float *weight = nullptr, *bias = nullptr;
  int prof_kind() const override { return kProfLinear; }

  static float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      for (int l = 0; l < 8; ++l) acc[l] = acc[l] + a[i + l] * b[i + l];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; ++i) s = s + a[i] * b[i];
    return s;
  }

  void run(const Exec& x) const override {
    const float* src = x.f(in);
    float* dst = x.f(out);
    constexpr int64_t kRows = 64;  // output features per task
    const int64_t nr = (N + kRows - 1) / kRows;
    parallel_for(x.batch * nr, x.batch * N * K, [&](int64_t t) {
      const int64_t b = t / nr, n0 = (t % nr) * kRows, n1 = std::min(N, n0 + kRows);
      for (int64_t n = n0; n < n1; ++n) {
        const float d = dot(weight + n * K, src + b * K, K);
        dst[b * N + n] = bias ? d + bias[n] : d;
      }
    });
  }
};

// ---- shift_add -----------------------------------------------------------------------------------------
class ShiftAdd final : public Op {
 public:
  int in = 0, out = 0;
  int64_t H = 0, W = 0, C = 0;
  std::vector<int> kernels;
  const float* scales = nullptr;
  int prof_kind() const override { return kProfShiftAdd; }
  void run(const Exec& x) const override {
    bhv::shift_add(x.f(out), x.f(in), x.batch, H, W, C, kernels.data(), static_cast<int64_t>(kernels.size()), scales);
  }
};

RegShape float_map(int64_t h, int64_t w, int64_t c) { return RegShape{RegKind::Float, h, w, c}; }

}  // namespace

// ---- parse functions -------------------------------------------------------------------------------------
std::unique_ptr<Op> parse_patch_conv(Fields& f, Loader& L) {
  auto op = std::make_unique<PatchConv>();
  const Json& in = f.req("in");
  const Value* v = in.is(Json::Kind::String) ? L.lookup(in.text) : nullptr;
  op->nchw = v && v->shape.kind == RegKind::Nchw;  // the images, (C, H, W) per image
  op->in = op->nchw ? L.read(f, "in", RegKind::Nchw) : L.read(f, "in", RegKind::Float);
  const RegShape s = L.value(op->in).shape;
  op->H = s.h, op->W = s.w, op->C = s.c;
  op->k = f.integer("kernel", 1, 16);
  std::vector<int64_t> ws;
  const float* w = L.f32_any(f, "weight", 4, &ws);
  if (ws[0] < 1 || ws[1] != op->C || ws[2] != op->k || ws[3] != op->k)
    f.error("weight", "shape " + shape_str(ws) + ", expected [Cout >= 1, " + std::to_string(op->C) + ", " +
                          std::to_string(op->k) + ", " + std::to_string(op->k) + "]");
  op->cout = ws[0];
  op->bias = L.f32(f, "bias", {op->cout}, true);
  op->oh = op->H / op->k, op->ow = op->W / op->k, op->K = op->C * op->k * op->k;
  op->wt.resize(static_cast<size_t>(op->K * op->cout));
  for (int64_t o = 0; o < op->cout; ++o)
    for (int64_t kk = 0; kk < op->K; ++kk) op->wt[static_cast<size_t>(kk * op->cout + o)] = w[o * op->K + kk];
  op->out = L.define(f, "out", float_map(op->oh, op->ow, op->cout));
  return op;
}

std::unique_ptr<Op> parse_affine(Fields& f, Loader& L) {
  auto op = std::make_unique<Affine>();
  op->in = L.read(f, "in", RegKind::Float);
  const RegShape s = L.value(op->in).shape;
  op->C = s.c, op->HW = s.pixels();
  op->scale = L.f32(f, "scale", {s.c}, true);
  op->bias = L.f32(f, "bias", {s.c}, true);
  const std::string act = f.has("act") ? f.str("act") : "none";  // absent: "none" (the packer omits it)
  if (act != "none" && act != "gelu") f.error("act", "expected \"none\" or \"gelu\", got \"" + act + "\"");
  op->gelu = act == "gelu";
  op->add = L.f32(f, "add", {s.h, s.w, s.c}, true);
  const bool same = f.req("out").is(Json::Kind::String) && f.req("in").text == f.req("out").text;
  op->out = L.define(f, "out", s, same ? op->in : -1);
  return op;
}

std::unique_ptr<Op> parse_sign_pack(Fields& f, Loader& L) {
  auto op = std::make_unique<SignPack>();
  op->in = L.read(f, "in", RegKind::Float);
  RegShape s = L.value(op->in).shape;
  op->C = s.c, op->HW = s.pixels();
  op->move = L.f32(f, "move", {s.c}, true);
  s.kind = RegKind::Bits;
  op->out = L.define(f, "out", s);
  return op;
}

std::unique_ptr<Op> parse_avg_pool(Fields& f, Loader& L) {
  auto op = std::make_unique<AvgPool>();
  op->in = L.read(f, "in", RegKind::Float);
  const RegShape s = L.value(op->in).shape;
  op->H = s.h, op->W = s.w, op->C = s.c;
  op->k = f.integer("kernel", 1, 16);
  op->oh = s.h / op->k, op->ow = s.w / op->k;
  op->out = L.define(f, "out", float_map(op->oh, op->ow, s.c));
  return op;
}

std::unique_ptr<Op> parse_mean_tokens(Fields& f, Loader& L) {
  auto op = std::make_unique<MeanTokens>();
  op->in = L.read(f, "in", RegKind::Float);
  const RegShape s = L.value(op->in).shape;
  op->HW = s.pixels(), op->C = s.c;
  op->out = L.define(f, "out", float_map(1, 1, s.c));
  return op;
}

std::unique_ptr<Op> parse_linear(Fields& f, Loader& L) {
  auto op = std::make_unique<Linear>();
  op->in = L.read(f, "in", RegKind::Float);
  const RegShape s = L.value(op->in).shape;
  if (s.h != 1 || s.w != 1) f.error("in", "expected a pooled (1, 1, K) register, got " + describe(s));
  op->K = s.c;
  std::vector<int64_t> ws;
  op->weight = L.f32_any(f, "weight", 2, &ws);
  if (ws[0] < 1 || ws[1] != op->K)
    f.error("weight", "shape " + shape_str(ws) + ", expected [N >= 1, " + std::to_string(op->K) + "]");
  op->N = ws[0];
  op->bias = L.f32(f, "bias", {op->N}, true);
  op->out = L.define(f, "out", float_map(1, 1, op->N));
  return op;
}

std::unique_ptr<Op> parse_shift_add(Fields& f, Loader& L) {
  auto op = std::make_unique<ShiftAdd>();
  op->in = L.read(f, "in", RegKind::Float);
  const RegShape s = L.value(op->in).shape;
  op->H = s.h, op->W = s.w, op->C = s.c;
  if (s.c % 4) f.error("in", "shift_add needs channels divisible by 4, got " + describe(s));
  for (int64_t k : f.int_list("kernels", 1, 2, 3, 5)) {
    if (k != 3 && k != 5) f.error("kernels", "each kernel must be 3 or 5");
    if (std::find(op->kernels.begin(), op->kernels.end(), static_cast<int>(k)) != op->kernels.end())
      f.error("kernels", "a kernel is listed twice");
    op->kernels.push_back(static_cast<int>(k));
  }
  op->scales = L.f32(f, "scales", {3 * static_cast<int64_t>(op->kernels.size()), 2, s.c});
  op->out = L.accumulate(f, "out", s);
  return op;
}

// ---- fusion ----------------------------------------------------------------------------------------------
// An affine whose output the next op sign-packs (a block's norm then its binary branch's input) runs as one
// pass: the affine packs each chunk of rows while it is in cache, the sign_pack op is left in place but
// does nothing. The bits are then written during the affine, so their value is made to start there
// (values[].def) before the buffers are planned: they never share a buffer with what the affine reads.
// Same bits, same floats. Measured on bhvit_small at 224 (AVX2 Xeon, 1 thread, best of 3 fresh processes):
// the forward 26.7 -> 26.35 ms (sign_pack 0.3 -> 0.1 ms: the rest follow no affine); no change on 2 threads.
void fuse_ops(std::vector<std::unique_ptr<Op>>& ops, std::vector<Value>& values) {
  for (size_t i = 0; i + 1 < ops.size(); ++i) {
    auto* af = dynamic_cast<Affine*>(ops[i].get());
    auto* sp = dynamic_cast<SignPack*>(ops[i + 1].get());
    if (!af || !sp || sp->in != af->out || af->pack_out >= 0) continue;
    af->pack_out = sp->out, af->pack_move = sp->move;
    sp->fused = true;
    values[static_cast<size_t>(sp->out)].def = static_cast<int>(i);
  }
}

}  // namespace bhr
