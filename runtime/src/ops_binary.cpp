// Binary ops (§5): bconv and blinear on packed signs through the kernels (runtime/kernels/kernels.h), weights
// converted at load once per tensor and layout (loader.h), shared by every op that names the tensor: rows ->
// 8-row panels (bitpack.h convention 7), per-tap popcounts for the exact zero padding of convolutions, and
// the nibble layout of small-K linears (convention 8).
#include <algorithm>
#include <cstring>

#include "kernels.h"
#include "ops.h"

namespace bhr {
namespace {

// The output transform's fields (§4) shared by bconv and blinear.
struct Transform {
  const float *scale = nullptr, *bias = nullptr;
  int res = -1;  // residual register, Cr channels
  int64_t cr = 0;
  RPReLUParams act;
  PostParams post;
  bool accumulate = false;

  bhv::Epilogue epilogue(const Exec& x) const {
    bhv::Epilogue e;
    e.scale = scale;
    e.bias = bias;
    if (res >= 0) e.res = x.f(res), e.res_ld = cr, e.res_cols = cr;
    e.slope = act.slope, e.b1 = act.b1, e.b2 = act.b2;
    e.post_scale = post.scale, e.post_bias = post.bias;
    e.accumulate = accumulate;
    return e;
  }
};

// scale, bias?, residual? (h, w, Cr) with n mod Cr = 0, rprelu?, post?, accumulate
Transform parse_transform(Fields& f, Loader& L, int64_t n, int64_t h, int64_t w) {
  Transform t;
  t.scale = L.f32(f, "scale", {n});
  t.bias = L.f32(f, "bias", {n}, true);
  if (f.has("residual")) {
    t.res = L.read(f, "residual", RegKind::Float);
    const RegShape r = L.value(t.res).shape;
    if (r.h != h || r.w != w || n % r.c)
      f.error("residual", "register holds " + describe(r) + "; expected (" + std::to_string(h) + ", " +
                              std::to_string(w) + ", Cr) with " + std::to_string(n) + " mod Cr = 0");
    t.cr = r.c;
  }
  t.act = parse_rprelu(L, f, "rprelu", n, true);
  t.post = parse_post(L, f, "post", n);
  t.accumulate = f.boolean("accumulate", false);
  return t;
}

// ---- bconv ---------------------------------------------------------------------------------------------
class BConv final : public Op {
 public:
  int in = 0, out = 0;
  bhv::ConvGeom geom{};
  const uint64_t* panels = nullptr;  // (groups, ceil(Ng/8), KWc, 8)
  const int32_t* wpop = nullptr;     // (Cout, taps)
  Transform tr;

  int prof_kind() const override { return kProfBConv; }
  void run(const Exec& x) const override {
    bhv::ConvGeom g = geom;
    g.B = x.batch;
    bhv::Epilogue e = tr.epilogue(x);
    e.out = x.f(out);
    e.out_ld = g.Cout;
    bhv::bconv(x.u(in), g, panels, wpop, e);
  }
};

// ---- blinear -------------------------------------------------------------------------------------------
class BLinear final : public Op {
 public:
  int in = 0, out = -1;
  int64_t HW = 0, K = 0, N = 0;
  const uint64_t* panels = nullptr;  // (ceil(N/8), KW, 8)
  const uint8_t* nib = nullptr;      // nibble layout when it pays (small K), else null
  Transform tr;
  // pack mode: bits of z + move and group means of r columns instead of z
  int pack_out = -1, means = -1, tmp = -1;
  const float* move = nullptr;
  int64_t mean_r = 0;

  int prof_kind() const override { return kProfBLinear; }

  void run(const Exec& x) const override {
    const int64_t M = x.batch * HW, KW = (K + 63) / 64;
    bhv::Epilogue e = tr.epilogue(x);
    const uint8_t* nb = nib;
    if (pack_out < 0) {
      e.out = x.f(out);
      e.out_ld = N;
      bhv::bgemm(x.u(in), M, panels, 0, N, KW, K, 1, e, nb);
      return;
    }
    if (tmp < 0) {  // the engine packs in the output transform (mean_r divides 128)
      e.bits = x.u(pack_out), e.bits_bias = move, e.bits_ld = (N + 63) / 64;
      e.means = x.f(means), e.mean_r = mean_r, e.means_ld = N / mean_r;
      bhv::bgemm(x.u(in), M, panels, 0, N, KW, K, 1, e, nb);
      return;
    }
    float* z = x.f(tmp);  // other mean_r: z first, then its bits and means
    e.out = z;
    e.out_ld = N;
    bhv::bgemm(x.u(in), M, panels, 0, N, KW, K, 1, e, nb);
    bhv::pack_rows(z, N, M, N, move, x.u(pack_out));
    bhv::means_of_groups(z, M, N, mean_r, x.f(means));
  }
};

}  // namespace

std::unique_ptr<Op> parse_bconv(Fields& f, Loader& L) {
  auto op = std::make_unique<BConv>();
  op->in = L.read(f, "in", RegKind::Bits);
  const RegShape s = L.value(op->in).shape;
  const int64_t cin = f.integer("in_channels", 1, kMaxRegElems), cout = f.integer("out_channels", 1, kMaxRegElems);
  if (s.c != cin) f.error("in", "register holds " + describe(s) + " but in_channels is " + std::to_string(cin));
  const std::vector<int64_t> k = f.int_list("kernel", 2, 2, 1, 16);
  const int64_t stride = f.integer("stride", 1, 16), pad = f.integer("padding", 0, 64);
  const int64_t dil = f.integer("dilation", 1, 64), groups = f.integer("groups", 1, cin);
  if (cin % groups || cout % groups)
    f.error("groups", std::to_string(groups) + " groups do not divide in_channels " + std::to_string(cin) +
                          " and out_channels " + std::to_string(cout));
  const int64_t taps = k[0] * k[1];
  if (taps > 16)
    f.error("kernel", "this runtime supports kernels of at most 16 taps (kh*kw), got " + std::to_string(taps));
  const int64_t span_h = s.h + 2 * pad - dil * (k[0] - 1) - 1, span_w = s.w + 2 * pad - dil * (k[1] - 1) - 1;
  if (span_h < 0 || span_w < 0) f.error("kernel", "the dilated kernel is larger than the padded input " + describe(s));
  const int64_t oh = span_h / stride + 1, ow = span_w / stride + 1, cg = cin / groups;
  const int64_t kbits = taps * cg;
  const BinaryWeight w = L.bits(f, "weight", cout, kbits);
  op->tr = parse_transform(f, L, cout, oh, ow);
  const RegShape os{RegKind::Float, oh, ow, cout};
  op->out = op->tr.accumulate ? L.accumulate(f, "out", os) : L.define(f, "out", os);
  op->geom = bhv::ConvGeom{0, s.h, s.w, cin, s.words(), groups, k[0], k[1], stride, pad, dil, oh, ow, cout};
  L.charge(f, product({oh, ow, cout, kbits}), product({oh, ow, cout}));
  op->wpop = L.tap_popcounts(w, taps, cg);
  op->panels = L.panels(w, groups);
  return op;
}

std::unique_ptr<Op> parse_blinear(Fields& f, Loader& L) {
  auto op = std::make_unique<BLinear>();
  op->in = L.read(f, "in", RegKind::Bits);
  const RegShape s = L.value(op->in).shape;
  op->HW = s.pixels();
  op->K = f.integer("in_features", 1, kMaxRegElems);
  op->N = f.integer("out_features", 1, kMaxRegElems);
  if (s.c != op->K) f.error("in", "register holds " + describe(s) + " but in_features is " + std::to_string(op->K));
  const BinaryWeight w = L.bits(f, "weight", op->N, op->K);
  op->tr = parse_transform(f, L, op->N, s.h, s.w);
  if (f.has("pack")) {
    if (f.has("out")) f.error("out", "with pack the op writes pack.out and pack.means; remove 'out'");
    if (op->tr.accumulate || op->tr.post.scale) f.error("pack", "pack excludes post and accumulate (§5)");
    Fields p = f.object("pack");
    op->mean_r = p.integer("mean_r", 1, op->N);
    if (op->N % op->mean_r) p.error("mean_r", std::to_string(op->N) + " out_features are not a multiple of mean_r");
    op->move = L.f32(p, "move", {op->N}, true);
    op->pack_out = L.define(p, "out", RegShape{RegKind::Bits, s.h, s.w, op->N});
    op->means = L.define(p, "means", RegShape{RegKind::Float, s.h, s.w, op->N / op->mean_r});
    if (128 % op->mean_r) op->tmp = L.temp(mul_checked(s.pixels(), op->N * 4, p.path()));
    p.finish();
  } else {
    const RegShape os{RegKind::Float, s.h, s.w, op->N};
    op->out = op->tr.accumulate ? L.accumulate(f, "out", os) : L.define(f, "out", os);
  }
  L.charge(f, product({s.h, s.w, op->N, op->K}), product({s.h, s.w, op->N}));
  op->panels = L.panels(w, 1);
  op->nib = L.nibbles(w);
  return op;
}

}  // namespace bhr
