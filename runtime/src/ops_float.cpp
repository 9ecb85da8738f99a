// Float ops (§5): patch_conv, affine, sign_pack, avg_pool, mean_tokens, linear, shift_add: each reads and checks
// its fields, then runs as one call of its kernel (runtime/kernels/kernels.h). Maps are channels-last (B, H, W, C).
#include <algorithm>

#include "kernels.h"
#include "ops.h"

namespace bhr {
namespace {

// ---- patch_conv ------------------------------------------------------------------------------------------
class PatchConv final : public Op {
 public:
  int in = 0, out = 0;
  bhv::PatchConv p;  // p.wt: the weight transposed, (K, Cout), made once per tensor

  int prof_kind() const override { return kProfPatchConv; }
  void run(const Exec& x) const override { bhv::patch_conv(p, x.f(in), x.batch, x.f(out)); }
};

// ---- affine ----------------------------------------------------------------------------------------------
class Affine final : public Op {
 public:
  int in = 0, out = 0;
  bhv::Affine p;
  // A following sign_pack of out, fused (fuse_ops): its bits (and p.pack_move) packed from each chunk of rows
  // while it is in cache; that op then does nothing.
  int pack_out = -1;

  int prof_kind() const override { return kProfAffine; }
  void run(const Exec& x) const override {
    bhv::affine(p, x.f(in), x.batch, x.f(out), pack_out >= 0 ? x.u(pack_out) : nullptr);
  }
};

// ---- sign_pack -------------------------------------------------------------------------------------------
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

// ---- avg_pool, mean_tokens, linear, shift_add --------------------------------------------------------------
class AvgPool final : public Op {
 public:
  int in = 0, out = 0;
  int64_t H = 0, W = 0, C = 0, k = 0;
  int prof_kind() const override { return kProfAvgPool; }
  void run(const Exec& x) const override { bhv::avg_pool(x.f(in), x.batch, H, W, C, k, x.f(out)); }
};

class MeanTokens final : public Op {
 public:
  int in = 0, out = 0;
  int64_t HW = 0, C = 0;
  int prof_kind() const override { return kProfMeanTokens; }
  void run(const Exec& x) const override { bhv::mean_tokens(x.f(in), x.batch, HW, C, x.f(out)); }
};

class Linear final : public Op {
 public:
  int in = 0, out = 0;
  int64_t K = 0, N = 0;
  const float *weight = nullptr, *bias = nullptr;
  int prof_kind() const override { return kProfLinear; }
  void run(const Exec& x) const override { bhv::linear(x.f(in), x.batch, K, N, weight, bias, x.f(out)); }
};

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
  const Json in = f.req("in");
  const Value* v = in.is(Json::Kind::String) ? L.lookup(std::string(in.text())) : nullptr;
  bhv::PatchConv& p = op->p;
  p.nchw = v && v->shape.kind == RegKind::Nchw;  // the images, (C, H, W) per image
  op->in = p.nchw ? L.read(f, "in", RegKind::Nchw) : L.read(f, "in", RegKind::Float);
  const RegShape s = L.value(op->in).shape;
  p.H = s.h, p.W = s.w, p.C = s.c;
  p.k = f.integer("kernel", 1, 16);
  std::vector<int64_t> ws;
  const float* w = L.f32_any(f, "weight", 4, &ws);
  if (ws[0] < 1 || ws[1] != p.C || ws[2] != p.k || ws[3] != p.k)
    f.error("weight", "shape " + shape_str(ws) + ", expected [Cout >= 1, " + std::to_string(p.C) + ", " +
                          std::to_string(p.k) + ", " + std::to_string(p.k) + "]");
  p.cout = ws[0];
  p.bias = L.f32(f, "bias", {p.cout}, true);
  p.oh = p.H / p.k, p.ow = p.W / p.k, p.K = p.C * p.k * p.k;
  op->out = L.define(f, "out", float_map(p.oh, p.ow, p.cout));
  L.charge(f, 0, product({p.oh, p.ow, p.cout, p.K}));
  p.wt = L.converted<float>(L.tensor_name(f, "weight"), Layout::Transposed, 0, 0, p.K * p.cout, [&](float* wt) {
    for (int64_t o = 0; o < p.cout; ++o)
      for (int64_t kk = 0; kk < p.K; ++kk) wt[kk * p.cout + o] = w[o * p.K + kk];
  });
  return op;
}

std::unique_ptr<Op> parse_affine(Fields& f, Loader& L) {
  auto op = std::make_unique<Affine>();
  op->in = L.read(f, "in", RegKind::Float);
  const RegShape s = L.value(op->in).shape;
  op->p.C = s.c, op->p.HW = s.pixels();
  op->p.scale = L.f32(f, "scale", {s.c}, true);
  op->p.bias = L.f32(f, "bias", {s.c}, true);
  const std::string act = f.has("act") ? f.str("act") : "none";  // absent: "none" (the packer omits it)
  if (act != "none" && act != "gelu") f.error("act", "expected \"none\" or \"gelu\", got \"" + act + "\"");
  op->p.gelu = act == "gelu";
  op->p.add = L.f32(f, "add", {s.h, s.w, s.c}, true);
  const bool same = f.req("out").is(Json::Kind::String) && f.req("in").text() == f.req("out").text();
  op->out = L.define(f, "out", s, same ? op->in : -1);
  L.charge(f, 0, product({s.h, s.w, s.c}));
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
  L.charge(f, 0, product({s.h, s.w, s.c}));
  return op;
}

std::unique_ptr<Op> parse_avg_pool(Fields& f, Loader& L) {
  auto op = std::make_unique<AvgPool>();
  op->in = L.read(f, "in", RegKind::Float);
  const RegShape s = L.value(op->in).shape;
  op->H = s.h, op->W = s.w, op->C = s.c;
  op->k = f.integer("kernel", 1, 16);
  op->out = L.define(f, "out", float_map(s.h / op->k, s.w / op->k, s.c));
  L.charge(f, 0, product({s.h, s.w, s.c}));
  return op;
}

std::unique_ptr<Op> parse_mean_tokens(Fields& f, Loader& L) {
  auto op = std::make_unique<MeanTokens>();
  op->in = L.read(f, "in", RegKind::Float);
  const RegShape s = L.value(op->in).shape;
  op->HW = s.pixels(), op->C = s.c;
  op->out = L.define(f, "out", float_map(1, 1, s.c));
  L.charge(f, 0, product({s.h, s.w, s.c}));
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
  L.charge(f, 0, product({op->K, op->N}));
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
  int64_t per_element = 0;  // per k: the h and w sums of k terms and the channel shift, each scaled and added
  for (int k : op->kernels) per_element += 2 * k + 7;
  L.charge(f, 0, product({s.h, s.w, s.c, per_element}));
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
    af->pack_out = sp->out, af->p.pack_move = sp->move;
    sp->fused = true;
    values[static_cast<size_t>(sp->out)].def = static_cast<int>(i);
  }
}

}  // namespace bhr
