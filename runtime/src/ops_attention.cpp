// window_attention (§6): global tokens, token LayerNorm, binary q/k/v with the blinear output transform,
// per window and head the binary scores, softmax, Â as three binary masks, Â·v by AND-popcounts, then the
// context transform and the merge of window and global tokens.
//
// Work and memory per image, nW windows of L = w² + nW tokens, C channels, h heads of d = C/h:
//   phases 1-2 (pool_norm) and 5-6 (merge): O(nW L C) floats, parallel over rows;
//   phase 3 (qkv): three bgemms (nW L) x C x C bits, parallel inside the engine;
//   phase 4 (core): per (window, head) task, query rows in blocks of 64 so the scratch is O(64 L), not O(L²).
#include <algorithm>
#include <cmath>

#include "kernels.h"
#include "ops.h"

namespace bhr {
namespace {

struct Branch {  // one of q, k, v: its weight in the layouts the kernels read (a.br[n] points into them)
  std::vector<uint64_t> panels;  // (ceil(C/8), CW, 8)
  std::vector<uint8_t> nib;
};

class WindowAttention final : public Op {
 public:
  int in = 0, out = 0;
  bhv::WindowAttn a;
  std::vector<float> one_minus_mix, one_minus_alpha;  // a.one_minus_mix, a.one_minus_alpha
  Branch br[3];
  // temporaries (values live during this op only)
  int t_glob = 0, t_hs = 0, t_m[3] = {0, 0, 0}, t_ctx = 0, t_bits = 0;

  int prof_kind() const override { return -1; }

  void run(const Exec& x) const override {
    bhv::AttnBuffers buf;
    buf.glob = x.f(t_glob), buf.hs = x.f(t_hs), buf.ctx = x.f(t_ctx), buf.bits = x.u(t_bits);
    for (int n = 0; n < 3; ++n) buf.m[n] = x.f(t_m[n]);
    {
      ProfScope s(x.prof, kProfAttnPool);
      bhv::attention_pool_norm(a, x.f(in), x.batch, buf);
    }
    {
      ProfScope s(x.prof, kProfAttnQkv);
      bhv::attention_qkv(a, x.batch, buf);
    }
    {
      ProfScope s(x.prof, kProfAttnCore);
      bhv::attention_core(a, x.batch, buf);
    }
    {
      ProfScope s(x.prof, kProfAttnMerge);
      bhv::attention_merge(a, x.batch, buf, x.f(out));
    }
  }
};

void parse_branch(Loader& L, Fields& f, const char* key, int64_t C, Branch& b, bhv::AttnBranch& k) {
  Fields br = f.object(key);
  k.move = L.f32(br, "move", {C});
  const std::vector<uint64_t> rows = L.bits(br, "weight", C, C);
  k.scale = L.f32(br, "scale", {C});
  k.bias = L.f32(br, "bias", {C}, true);
  const RPReLUParams act = parse_rprelu(L, br, "rprelu", C, false);
  k.slope = act.slope, k.b1 = act.b1, k.b2 = act.b2;
  k.move2 = L.f32(br, "move2", {C});
  br.finish();
  const int64_t KW = (C + 63) / 64, NP = (C + 7) / 8;
  b.panels.resize(static_cast<size_t>(NP * KW * 8));
  bhv::to_panels(rows.data(), 1, C, KW, b.panels.data());
  if (bhv::nibbles_pay(C, KW)) {
    b.nib.resize(static_cast<size_t>(bhv::quads_for(NP * 8) * KW * 16 * bhv::kQuad));
    bhv::to_nibbles(b.panels.data(), NP, KW, b.nib.data());
  }
  k.panels = b.panels.data();
  k.nib = b.nib.empty() ? nullptr : b.nib.data();
}

float positive(Fields& f, const std::string& key) {
  const double v = f.number(key);
  const float x = static_cast<float>(v);
  if (!(x > 0.0f) || !std::isfinite(x)) f.error(key, "expected a finite number > 0");
  return x;
}

void parse_quant(Loader& L, Fields& f, bhv::WindowAttn& op) {
  Fields q = f.object("quant");
  const std::string kind = q.str("kind");
  if (kind == "lsq") {
    op.lsq = true;
    op.step = L.f32(q, "step", {op.heads});
    op.zero = L.f32(q, "zero", {op.heads});
    const Json& gs = q.req("grad_scale");
    if (!gs.is(Json::Kind::Bool)) q.error("grad_scale", "expected true or false");
    op.grad_scale = gs.boolean;
  } else if (kind == "gsb") {
    op.lsq = false;
    op.gsb_alpha = L.f32(q, "alpha", {1})[0];
    const float* w = L.f32(q, "weights", {3});
    std::copy(w, w + 3, op.gsb_w);
    const Json& th = q.req("thresholds");
    if (!th.is(Json::Kind::Array) || th.items.size() != 3) q.error("thresholds", "expected 3 numbers");
    for (int i = 0; i < 3; ++i) {
      if (!th.items[static_cast<size_t>(i)].is(Json::Kind::Number)) q.error("thresholds", "expected 3 numbers");
      op.theta[i] = static_cast<float>(th.items[static_cast<size_t>(i)].number);
      if (!std::isfinite(op.theta[i])) q.error("thresholds", "expected finite numbers (as float32)");
    }
  } else {
    q.error("kind", "expected \"lsq\" or \"gsb\", got \"" + kind + "\"");
  }
  q.finish();
}

}  // namespace

std::unique_ptr<Op> parse_window_attention(Fields& f, Loader& L) {
  auto op = std::make_unique<WindowAttention>();
  bhv::WindowAttn& a = op->a;
  op->in = L.read(f, "in", RegKind::Float);
  const RegShape s = L.value(op->in).shape;
  a.H = s.h, a.W = s.w, a.C = s.c;
  a.w = f.integer("window", 1, 64);
  if (s.h % a.w || s.w % a.w) f.error("window", "the map " + describe(s) + " is not a whole number of windows");
  a.heads = f.integer("heads", 1, s.c);
  if (s.c % a.heads)
    f.error("heads", std::to_string(a.heads) + " heads do not divide " + std::to_string(s.c) + " channels");
  a.d = s.c / a.heads;
  a.pad = f.integer("pool_padding", 0, a.w / 2);
  if ((s.h + 2 * a.pad - a.w) / a.w + 1 != s.h / a.w || (s.w + 2 * a.pad - a.w) / a.w + 1 != s.w / a.w)
    f.error("pool_padding", "the pooling does not give one global token per window");
  a.nW = (s.h / a.w) * (s.w / a.w);
  a.L = a.w * a.w + a.nW;
  const std::string rows_what = f.path() + " tokens";
  const int64_t rows = mul_checked(a.nW, a.L, rows_what), elems = mul_checked(rows, s.c, rows_what);
  if (elems > kMaxRegElems)
    f.error("window", std::to_string(a.nW) + " windows of " + std::to_string(a.L) + " tokens x " +
                          std::to_string(s.c) + " channels exceed 2^30 elements per image");
  a.alpha = L.f32(f, "pool_alpha", {s.c});
  op->one_minus_alpha.resize(static_cast<size_t>(s.c));
  for (int64_t c = 0; c < s.c; ++c) op->one_minus_alpha[static_cast<size_t>(c)] = 1.0f - a.alpha[c];
  a.one_minus_alpha = op->one_minus_alpha.data();
  Fields tn = f.object("token_norm");
  a.ln_w = L.f32(tn, "weight", {s.c});
  a.ln_b = L.f32(tn, "bias", {s.c});
  a.eps = positive(tn, "eps");
  tn.finish();
  const char* names[3] = {"q", "k", "v"};
  for (int n = 0; n < 3; ++n) parse_branch(L, f, names[n], s.c, op->br[n], a.br[n]);
  a.divisor = positive(f, "score_divisor");
  parse_quant(L, f, a);
  Fields cx = f.object("ctx");
  a.ctx_scale = L.f32(cx, "scale", {s.c});
  a.ctx_bias = L.f32(cx, "bias", {s.c});
  const RPReLUParams act = parse_rprelu(L, cx, "rprelu", s.c, false);
  a.ctx_slope = act.slope, a.ctx_b1 = act.b1, a.ctx_b2 = act.b2;
  cx.finish();
  a.mix = L.f32(f, "mix", {s.c});
  op->one_minus_mix.resize(static_cast<size_t>(s.c));
  for (int64_t c = 0; c < s.c; ++c) op->one_minus_mix[static_cast<size_t>(c)] = 1.0f - a.mix[c];
  a.one_minus_mix = op->one_minus_mix.data();
  op->out = L.define(f, "out", s);
  op->t_glob = L.temp(a.nW * s.c * 4);
  op->t_hs = L.temp(elems * 4);
  for (int& t : op->t_m) t = L.temp(elems * 4);
  op->t_ctx = L.temp(elems * 4);
  op->t_bits = L.temp(rows * s.words() * 8);
  for (int k : {kProfAttnPool, kProfAttnQkv, kProfAttnCore, kProfAttnMerge}) L.use(k);
  return op;
}

}  // namespace bhr
