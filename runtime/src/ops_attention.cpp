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

class WindowAttention final : public Op {
 public:
  int in = 0, out = 0;
  bhv::WindowAttn a;  // its weights point into the file's tensors and the model's converted layouts
  // temporaries (values live during this op only)
  int t_glob = 0, t_hs = 0, t_m[3] = {0, 0, 0}, t_ctx = 0, t_bits = 0;

  int prof_kind() const override { return -1; }

  void run(const Exec& x) const override {
    bhv::AttnBuffers buf;
    buf.glob = x.f(t_glob), buf.hs = x.f(t_hs), buf.ctx = x.f(t_ctx);
    const int64_t branch_words = x.batch * a.nW * a.L * ((a.C + 63) / 64);
    for (int n = 0; n < 3; ++n) buf.m[n] = x.f(t_m[n]), buf.bits[n] = x.u(t_bits) + n * branch_words;
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

void parse_branch(Loader& L, Fields& f, const char* key, int64_t C, bhv::AttnBranch& k) {
  Fields br = f.object(key);
  k.move = L.f32(br, "move", {C});
  const BinaryWeight w = L.bits(br, "weight", C, C);
  k.scale = L.f32(br, "scale", {C});
  k.bias = L.f32(br, "bias", {C}, true);
  const RPReLUParams act = parse_rprelu(L, br, "rprelu", C, false);
  k.slope = act.slope, k.b1 = act.b1, k.b2 = act.b2;
  k.move2 = L.f32(br, "move2", {C});
  br.finish();
  k.panels = L.panels(w, 1);
  k.nib = L.nibbles(w);
}

// 1 - x of the F32 vector a field names (made once per tensor).
const float* one_minus(Loader& L, Fields& f, const std::string& key, const float* x, int64_t c) {
  return L.converted<float>(L.tensor_name(f, key), Layout::OneMinus, 0, 0, c, [&](float* out) {
    for (int64_t i = 0; i < c; ++i) out[i] = 1.0f - x[i];
  });
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
    const Json gs = q.req("grad_scale");
    if (!gs.is(Json::Kind::Bool)) q.error("grad_scale", "expected true or false");
    op.grad_scale = gs.boolean();
  } else if (kind == "gsb") {
    op.lsq = false;
    op.gsb_alpha = L.f32(q, "alpha", {1})[0];
    const float* w = L.f32(q, "weights", {3});
    std::copy(w, w + 3, op.gsb_w);
    const Json th = q.req("thresholds");
    if (!th.is(Json::Kind::Array) || th.size() != 3) q.error("thresholds", "expected 3 numbers");
    int i = 0;
    for (Json t : th.items()) {
      if (!t.is(Json::Kind::Number)) q.error("thresholds", "expected 3 numbers");
      op.theta[i] = static_cast<float>(t.number());
      if (!std::isfinite(op.theta[i])) q.error("thresholds", "expected finite numbers (as float32)");
      ++i;
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
  a.one_minus_alpha = one_minus(L, f, "pool_alpha", a.alpha, s.c);
  Fields tn = f.object("token_norm");
  a.ln_w = L.f32(tn, "weight", {s.c});
  a.ln_b = L.f32(tn, "bias", {s.c});
  a.eps = positive(tn, "eps");
  tn.finish();
  const char* names[3] = {"q", "k", "v"};
  for (int n = 0; n < 3; ++n) parse_branch(L, f, names[n], s.c, a.br[n]);
  a.divisor = positive(f, "score_divisor");
  parse_quant(L, f, a);
  Fields cx = f.object("ctx");
  a.ctx_scale = L.f32(cx, "scale", {s.c});
  a.ctx_bias = L.f32(cx, "bias", {s.c});
  const RPReLUParams act = parse_rprelu(L, cx, "rprelu", s.c, false);
  a.ctx_slope = act.slope, a.ctx_b1 = act.b1, a.ctx_b2 = act.b2;
  cx.finish();
  a.mix = L.f32(f, "mix", {s.c});
  a.one_minus_mix = one_minus(L, f, "mix", a.mix, s.c);
  op->out = L.define(f, "out", s);
  op->t_glob = L.temp(a.nW * s.c * 4);
  op->t_hs = L.temp(elems * 4);
  for (int& t : op->t_m) t = L.temp(elems * 4);
  op->t_ctx = L.temp(elems * 4);
  op->t_bits = L.temp(3 * rows * s.words() * 8);
  // binary: q, k, v (rows x C x C each), per window and head the scores (L x L x d) and the three masks
  // times v (3 L x L x d); float: pooling, LayerNorm, the branches' transforms, context and merge (a few per
  // token and channel), softmax and the masks (4 per score)
  const uint64_t binary = sat_add(product({3, rows, s.c, s.c}), product({4, a.nW, a.L, a.L, s.c}));
  const uint64_t flt = sat_add(sat_add(product({s.h, s.w, s.c}), product({16, rows, s.c})),
                               product({4, a.nW, a.heads, a.L, a.L}));
  L.charge(f, binary, flt);
  for (int k : {kProfAttnPool, kProfAttnQkv, kProfAttnCore, kProfAttnMerge}) L.use(k);
  return op;
}

}  // namespace bhr
