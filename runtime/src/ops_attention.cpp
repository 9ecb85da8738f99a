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
#include <cstring>
#include <limits>

#include "kernels.h"
#include "floatk.h"
#include "ops.h"
#include "ops_parallel.h"
#include "rowops.inc"

namespace bhr {
namespace {

constexpr int64_t kQueryBlock = 64;

struct Branch {  // one of q, k, v
  const float *move = nullptr, *scale = nullptr, *bias = nullptr, *move2 = nullptr;
  RPReLUParams act;
  std::vector<uint64_t> panels;  // (ceil(C/8), CW, 8)
  std::vector<uint8_t> nib;
};

// Bits of n <= 64 values: bit t = (z[t] + b[t] < 0), vector compares for whole words (rowops.inc).
inline uint64_t pack_word(const float* z, const float* b, int64_t n) {
  return n == 64 ? sign_word(z, b) : sign_bits(z, b, n);
}

// In-place transpose of a 64 x 64 bit matrix, a[r] bit c -> a[c] bit r: swap the off-diagonal blocks of
// halving size (32, 16, ..., 1), all rows at once per level (6 x 32 masked swaps instead of 4096 bit moves).
inline void transpose64(uint64_t* a) {
  constexpr uint64_t kMasks[6] = {0x00000000FFFFFFFFull, 0x0000FFFF0000FFFFull, 0x00FF00FF00FF00FFull,
                                  0x0F0F0F0F0F0F0F0Full, 0x3333333333333333ull, 0x5555555555555555ull};
  for (int level = 0; level < 6; ++level) {
    const int j = 32 >> level;
    const uint64_t m = kMasks[level];
    for (int k = 0; k < 64; ++k) {
      if (k & j) continue;
      const uint64_t t = ((a[k] >> j) ^ a[k | j]) & m;
      a[k] ^= t << j;
      a[k | j] ^= t;
    }
  }
}

// 64 copies of 0.5, 1.5, 2.5: an integer level l >= r exactly when -l + (r - 0.5) < 0.
struct LevelBias {
  float v[3][64];
  LevelBias() {
    for (int r = 0; r < 3; ++r)
      for (float& x : v[r]) x = static_cast<float>(r) + 0.5f;
  }
};
const LevelBias kLevelBias;

class WindowAttention final : public Op {
 public:
  int in = 0, out = 0;
  int64_t H = 0, W = 0, C = 0, w = 0, heads = 0, d = 0, pad = 0, nW = 0, L = 0;
  const float *alpha = nullptr, *ln_w = nullptr, *ln_b = nullptr, *ctx_scale = nullptr, *ctx_bias = nullptr;
  const float* mix = nullptr;
  std::vector<float> one_minus_mix, one_minus_alpha;
  float eps = 0, divisor = 1;
  RPReLUParams ctx_act;
  Branch br[3];
  // quant
  bool lsq = true, grad_scale = false;
  const float *step = nullptr, *zero = nullptr;
  float gsb_alpha = 1, gsb_w[3] = {0, 0, 0}, theta[3] = {0, 0, 0};
  // temporaries (values live during this op only)
  int t_glob = 0, t_hs = 0, t_m[3] = {0, 0, 0}, t_ctx = 0, t_bits = 0;

  int prof_kind() const override { return -1; }

  void run(const Exec& x) const override {
    {
      ProfScope s(x.prof, kProfAttnPool);
      global_tokens(x);
      token_norm(x);
    }
    {
      ProfScope s(x.prof, kProfAttnQkv);
      qkv(x);
    }
    {
      ProfScope s(x.prof, kProfAttnCore);
      core(x);
    }
    {
      ProfScope s(x.prof, kProfAttnMerge);
      merge(x);
    }
  }

  // 1. G = alpha max + (1 - alpha) avg over w x w blocks with padding p (max skips it, avg divides by w²)
  void global_tokens(const Exec& x) const {
    const float* src = x.f(in);
    float* g = x.f(t_glob);
    const int64_t gw = W / w;
    const float div = static_cast<float>(w * w);
    parallel_for(x.batch * nW, x.batch * H * W * C * 2, [&](int64_t t) {
      const int64_t b = t / nW, n = t % nW, r0 = (n / gw) * w - pad, c0 = (n % gw) * w - pad;
      float* mx = scratch<float, 20>(static_cast<size_t>(2 * C));
      float* sm = mx + C;
      bool first = true;
      for (int64_t c = 0; c < C; ++c) sm[c] = 0.0f;
      for (int64_t r = std::max<int64_t>(r0, 0); r < std::min(H, r0 + w); ++r)
        for (int64_t q = std::max<int64_t>(c0, 0); q < std::min(W, c0 + w); ++q) {
          const float* __restrict p = src + ((b * H + r) * W + q) * C;
          for (int64_t c = 0; c < C; ++c) {
            mx[c] = first || p[c] > mx[c] ? p[c] : mx[c];
            sm[c] = sm[c] + p[c];
          }
          first = false;
        }
      float* __restrict o = g + t * C;
      for (int64_t c = 0; c < C; ++c) o[c] = alpha[c] * mx[c] + one_minus_alpha[c] * (sm[c] / div);
    });
  }

  // 2. tokens of each window (its w² pixels, then the nW global tokens), LayerNorm over C
  void token_norm(const Exec& x) const {
    const float* src = x.f(in);
    const float* g = x.f(t_glob);
    float* hs = x.f(t_hs);
    const int64_t M = x.batch * nW * L, chunk = std::max<int64_t>(1, 2048 / C);
    parallel_for((M + chunk - 1) / chunk, M * C * 4, [&](int64_t t) {
      norm_rows(src, g, hs, t * chunk, std::min(M, (t + 1) * chunk));
    });
  }

  BHR_FLOAT_CLONES void norm_rows(const float* src, const float* g, float* hs, int64_t r0, int64_t r1) const {
    const int64_t gw = W / w;
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t b = row / (nW * L), n = (row / L) % nW, i = row % L;
      const float* tok = i < w * w ? src + ((b * H + (n / gw) * w + i / w) * W + (n % gw) * w + i % w) * C
                                   : g + (b * nW + (i - w * w)) * C;
      layer_norm_row(tok, C, ln_w, ln_b, eps, hs + row * C);
    }
  }

  // 3. m_n = RPReLU_n(scale_n (sign(hs + move_n) . sign(W_n)) + bias_n + hs)
  void qkv(const Exec& x) const {
    const int64_t M = x.batch * nW * L, CW = (C + 63) / 64;
    const float* hs = x.f(t_hs);
    uint64_t* bits = x.u(t_bits);
    for (int n = 0; n < 3; ++n) {
      const Branch& b = br[n];
      bhv::pack_rows(hs, C, M, C, b.move, bits);
      bhv::Epilogue e;
      e.scale = b.scale, e.bias = b.bias;
      e.res = hs, e.res_ld = C, e.res_cols = C;
      e.slope = b.act.slope, e.b1 = b.act.b1, e.b2 = b.act.b2;
      e.out = x.f(t_m[n]), e.out_ld = C;
      bhv::bgemm(bits, M, b.panels.data(), 0, C, CW, C, 1, e, b.nib.empty() ? nullptr : b.nib.data());
    }
  }

  // LSQ step and offset of head j: with grad_scale, a = s - s g + s g (float32) with
  // g = h / sqrt(3 B nW h L²) in double, rounded to float32.
  void lsq_params(int64_t batch, float* a, float* z) const {
    const double numel = static_cast<double>(batch) * static_cast<double>(nW) * static_cast<double>(heads) *
                         static_cast<double>(L) * static_cast<double>(L);
    const float g = static_cast<float>(static_cast<double>(heads) / std::sqrt(3.0 * numel));
    for (int64_t j = 0; j < heads; ++j) {
      const float s = step[j], zz = zero[j];
      a[j] = grad_scale ? (s - s * g) + s * g : s;
      z[j] = grad_scale ? (zz - zz * g) + zz * g : zz;
    }
  }

  void core(const Exec& x) const {
    std::vector<float> a(static_cast<size_t>(heads)), z(static_cast<size_t>(heads));
    if (lsq) lsq_params(x.batch, a.data(), z.data());
    const int64_t tasks = x.batch * nW * heads;
    parallel_for(tasks, tasks * L * L * std::max<int64_t>(d / 8, 1), [&](int64_t t) {
      const int64_t win = t / heads, j = t % heads;
      head(x, win, j, lsq ? a[static_cast<size_t>(j)] : 0.0f, lsq ? z[static_cast<size_t>(j)] : 0.0f);
    });
  }

  // 4. one window (global index win over batch x nW) and head j: ctx[:, j d : j d + d] of the window
  BHR_FLOAT_CLONES void head(const Exec& x, int64_t win, int64_t j, float a, float z) const {
    const bhv::IsaKernels& isa = bhv::active_kernels();
    const int64_t dW = (d + 63) / 64, LW = (L + 63) / 64, NPL = (L + 7) / 8, NPd = (d + 7) / 8;
    const int64_t c0 = j * d;
    const float* mq = x.f(t_m[0]) + win * L * C + c0;
    const float* mk = x.f(t_m[1]) + win * L * C + c0;
    const float* mv = x.f(t_m[2]) + win * L * C + c0;
    float* ctx = x.f(t_ctx) + win * L * C + c0;
    uint64_t* qb = scratch<uint64_t, 30>(static_cast<size_t>(L * dW + NPL * dW * 8 + NPd * LW * 8));
    uint64_t* kp = qb + L * dW;   // k rows as panels (NPL, dW, 8)
    uint64_t* vp = kp + NPL * dW * 8;  // v^T panels (NPd, LW, 8): bit s of channel dd
    std::memset(kp, 0, sizeof(uint64_t) * static_cast<size_t>(NPL * dW * 8 + NPd * LW * 8));
    for (int64_t i = 0; i < L; ++i)
      for (int64_t k = 0; k < dW; ++k) {
        const int64_t n = std::min<int64_t>(64, d - 64 * k);
        qb[i * dW + k] = pack_word(mq + i * C + 64 * k, br[0].move2 + c0 + 64 * k, n);
        kp[((i / 8) * dW + k) * 8 + i % 8] = pack_word(mk + i * C + 64 * k, br[1].move2 + c0 + 64 * k, n);
      }
    // v^T: sign words of each token (over its d channels), then 64 x 64 bit transposes into the panels
    uint64_t* vb = scratch<uint64_t, 35>(static_cast<size_t>(L * dW));
    for (int64_t i = 0; i < L; ++i)
      for (int64_t k = 0; k < dW; ++k)
        vb[i * dW + k] = pack_word(mv + i * C + 64 * k, br[2].move2 + c0 + 64 * k, std::min<int64_t>(64, d - 64 * k));
    for (int64_t sw = 0; sw < LW; ++sw)
      for (int64_t k = 0; k < dW; ++k) {
        uint64_t a[64];
        for (int64_t i = 0; i < 64; ++i) a[i] = 64 * sw + i < L ? vb[(64 * sw + i) * dW + k] : 0;
        transpose64(a);  // a[j]: tokens of block sw for channel 64 k + j
        for (int64_t j = 0; j < std::min<int64_t>(64, d - 64 * k); ++j) {
          const int64_t dd = 64 * k + j;
          vp[((dd / 8) * LW + sw) * 8 + dd % 8] = a[j];
        }
      }
    const int64_t ldp = NPL * 8, ldv = NPd * 8;
    int32_t* P = scratch<int32_t, 31>(static_cast<size_t>(kQueryBlock * ldp + 3 * kQueryBlock * ldv));
    int32_t* Pv = P + kQueryBlock * ldp;
    float* S = scratch<float, 32>(static_cast<size_t>(kQueryBlock * L));
    uint64_t* masks = scratch<uint64_t, 33>(static_cast<size_t>(3 * kQueryBlock * LW));
    const float wr[3] = {lsq ? a : gsb_w[0], lsq ? a : gsb_w[1], lsq ? a : gsb_w[2]};
    const float fd = static_cast<float>(d);
    for (int64_t r0 = 0; r0 < L; r0 += kQueryBlock) {
      const int64_t rows = std::min(kQueryBlock, L - r0);
      isa.popc_block(qb + r0 * dW, dW, rows, kp, 0, NPL, dW, false, P, ldp);
      for (int64_t i = 0; i < rows; ++i) {
        float* s = S + i * L;
        const int32_t* p = P + i * ldp;
        for (int64_t t = 0; t < L; ++t) s[t] = (fd - 2.0f * static_cast<float>(p[t])) / divisor;
        softmax_row(s, L);
        row_masks(s, a, z, masks + i * LW, masks + (rows + i) * LW, masks + (2 * rows + i) * LW);
      }
      isa.popc_block(masks, LW, 3 * rows, vp, 0, NPd, LW, true, Pv, ldv);
      for (int64_t i = 0; i < rows; ++i) {
        float* __restrict o = ctx + (r0 + i) * C;
        for (int64_t dd = 0; dd < d; ++dd) o[dd] = 0.0f;
        for (int r = 0; r < 3; ++r) {
          const uint64_t* m = masks + (r * rows + i) * LW;
          int32_t pc = 0;
          for (int64_t k = 0; k < LW; ++k) pc += __builtin_popcountll(m[k]);
          const int32_t* __restrict pv = Pv + (r * rows + i) * ldv;
          for (int64_t dd = 0; dd < d; ++dd) o[dd] = o[dd] + wr[r] * static_cast<float>(pc - 2 * pv[dd]);
        }
      }
    }
  }

  // The three masks of one row of A (§6 quant): LSQ [l >= 1], [l >= 2], [l >= 3] with
  // l = clamp(round(3 A / a + z), 0, 3); GSB [q > θ0], [q > θ1 max q], [q > θ2 max q] with q = A / α.
  // Values are computed in vectors into a row of floats, then packed by sign as in sign_pack.
  BHR_FLOAT_CLONES void row_masks(const float* A, float a, float z, uint64_t* t1, uint64_t* t2, uint64_t* t3) const {
    const int64_t LW = (L + 63) / 64;
    // v padded to whole words with +inf, which packs to 0 against every (finite) bias: each word of the
    // masks is then a vector sign_word (a scalar loop over the L = 50-53 tokens of BHViT's windows cost
    // 1/3 of attention.core)
    float* v = scratch<float, 34>(static_cast<size_t>(LW * 64));
    for (int64_t i = L; i < LW * 64; ++i) v[i] = std::numeric_limits<float>::infinity();
    const float* bias[3];
    float th[3][64];
    if (lsq) {  // v = -l; round half to even of x >= 0 by adding 2^23 (no libm call at the baseline)
      map8(v, A, L, [a, z](const vf8& x) __attribute__((always_inline)) {
        const vf8 y = x * 3.0f / a + z, r = (y + 8388608.0f) - 8388608.0f;
        const vf8 l = y < 8388608.0f ? r : y;
        return -(y >= 0.0f ? l : vf8{});  // below 0 (and NaN): level 0
      });
      for (int r = 0; r < 3; ++r) bias[r] = kLevelBias.v[r];
    } else {  // v = -q
      const float inv_alpha = gsb_alpha;
      map8(v, A, L, [inv_alpha](const vf8& x) __attribute__((always_inline)) { return x / inv_alpha; });
      const float mx = max_lanes(v, L), lim[3] = {theta[0], theta[1] * mx, theta[2] * mx};
      map8(v, v, L, [](const vf8& x) __attribute__((always_inline)) { return -x; });
      for (int r = 0; r < 3; ++r) {
        for (float& x : th[r]) x = lim[r];
        bias[r] = th[r];
      }
    }
    uint64_t* out[3] = {t1, t2, t3};
    for (int64_t k = 0; k < LW; ++k)
      for (int r = 0; r < 3; ++r) out[r][k] = sign_word(v + 64 * k, bias[r]);
  }

  // 5. y = RPReLU_ctx((((ctx scale + bias) + m_q) + m_k) + m_v), in place over ctx;
  // 6. out = y_n[i] mix + g (1 - mix), g = mean over the windows of global row w² + n
  void merge(const Exec& x) const {
    float* y = x.f(t_ctx);
    const float *mq = x.f(t_m[0]), *mk = x.f(t_m[1]), *mv = x.f(t_m[2]);
    const int64_t M = x.batch * nW * L, chunk = std::max<int64_t>(1, 2048 / C);
    parallel_for((M + chunk - 1) / chunk, M * C, [&](int64_t t) {
      for (int64_t row = t * chunk; row < std::min(M, (t + 1) * chunk); ++row) {
        float* __restrict o = y + row * C;
        const float *q = mq + row * C, *k = mk + row * C, *v = mv + row * C;
        for (int64_t c = 0; c < C; ++c) {
          float s = o[c] * ctx_scale[c] + ctx_bias[c];
          s = ((s + q[c]) + k[c]) + v[c];
          o[c] = rprelu1(s, ctx_act.slope[c], ctx_act.b1[c], ctx_act.b2[c]);
        }
      }
    });
    float* g = x.f(t_glob);  // reused: (B, nW, C) means of the global rows
    const float fn = static_cast<float>(nW);
    parallel_for(x.batch * nW, x.batch * nW * nW * C, [&](int64_t t) {
      const int64_t b = t / nW, tok = t % nW;
      float* __restrict o = g + t * C;
      for (int64_t c = 0; c < C; ++c) o[c] = 0.0f;
      for (int64_t n = 0; n < nW; ++n) {
        const float* __restrict r = y + ((b * nW + n) * L + w * w + tok) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = o[c] + r[c];
      }
      for (int64_t c = 0; c < C; ++c) o[c] = o[c] / fn;
    });
    float* dst = x.f(out);
    const int64_t gw = W / w;
    parallel_for(x.batch * H, x.batch * H * W * C, [&](int64_t t) {
      const int64_t b = t / H, r = t % H;
      for (int64_t q = 0; q < W; ++q) {
        const int64_t n = (r / w) * gw + q / w, i = (r % w) * w + q % w;
        const float* __restrict yi = y + ((b * nW + n) * L + i) * C;
        const float* __restrict gi = g + (b * nW + n) * C;
        float* __restrict o = dst + ((b * H + r) * W + q) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = yi[c] * mix[c] + gi[c] * one_minus_mix[c];
      }
    });
  }
};

void parse_branch(Loader& L, Fields& f, const char* key, int64_t C, Branch& b) {
  Fields br = f.object(key);
  b.move = L.f32(br, "move", {C});
  const std::vector<uint64_t> rows = L.bits(br, "weight", C, C);
  b.scale = L.f32(br, "scale", {C});
  b.bias = L.f32(br, "bias", {C}, true);
  b.act = parse_rprelu(L, br, "rprelu", C, false);
  b.move2 = L.f32(br, "move2", {C});
  br.finish();
  const int64_t KW = (C + 63) / 64, NP = (C + 7) / 8;
  b.panels.resize(static_cast<size_t>(NP * KW * 8));
  bhv::to_panels(rows.data(), 1, C, KW, b.panels.data());
  if (bhv::nibbles_pay(C, KW)) {
    b.nib.resize(static_cast<size_t>(bhv::quads_for(NP * 8) * KW * 16 * bhv::kQuad));
    bhv::to_nibbles(b.panels.data(), NP, KW, b.nib.data());
  }
}

float positive(Fields& f, const std::string& key) {
  const double v = f.number(key);
  const float x = static_cast<float>(v);
  if (!(x > 0.0f) || !std::isfinite(x)) f.error(key, "expected a finite number > 0");
  return x;
}

void parse_quant(Loader& L, Fields& f, WindowAttention& op) {
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
  op->in = L.read(f, "in", RegKind::Float);
  const RegShape s = L.value(op->in).shape;
  op->H = s.h, op->W = s.w, op->C = s.c;
  op->w = f.integer("window", 1, 64);
  if (s.h % op->w || s.w % op->w) f.error("window", "the map " + describe(s) + " is not a whole number of windows");
  op->heads = f.integer("heads", 1, s.c);
  if (s.c % op->heads)
    f.error("heads", std::to_string(op->heads) + " heads do not divide " + std::to_string(s.c) + " channels");
  op->d = s.c / op->heads;
  op->pad = f.integer("pool_padding", 0, op->w / 2);
  if ((s.h + 2 * op->pad - op->w) / op->w + 1 != s.h / op->w || (s.w + 2 * op->pad - op->w) / op->w + 1 != s.w / op->w)
    f.error("pool_padding", "the pooling does not give one global token per window");
  op->nW = (s.h / op->w) * (s.w / op->w);
  op->L = op->w * op->w + op->nW;
  const std::string rows_what = f.path() + " tokens";
  const int64_t rows = mul_checked(op->nW, op->L, rows_what), elems = mul_checked(rows, s.c, rows_what);
  if (elems > kMaxRegElems)
    f.error("window", std::to_string(op->nW) + " windows of " + std::to_string(op->L) + " tokens x " +
                          std::to_string(s.c) + " channels exceed 2^30 elements per image");
  op->alpha = L.f32(f, "pool_alpha", {s.c});
  op->one_minus_alpha.resize(static_cast<size_t>(s.c));
  for (int64_t c = 0; c < s.c; ++c) op->one_minus_alpha[static_cast<size_t>(c)] = 1.0f - op->alpha[c];
  Fields tn = f.object("token_norm");
  op->ln_w = L.f32(tn, "weight", {s.c});
  op->ln_b = L.f32(tn, "bias", {s.c});
  op->eps = positive(tn, "eps");
  tn.finish();
  const char* names[3] = {"q", "k", "v"};
  for (int n = 0; n < 3; ++n) parse_branch(L, f, names[n], s.c, op->br[n]);
  op->divisor = positive(f, "score_divisor");
  parse_quant(L, f, *op);
  Fields cx = f.object("ctx");
  op->ctx_scale = L.f32(cx, "scale", {s.c});
  op->ctx_bias = L.f32(cx, "bias", {s.c});
  op->ctx_act = parse_rprelu(L, cx, "rprelu", s.c, false);
  cx.finish();
  op->mix = L.f32(f, "mix", {s.c});
  op->one_minus_mix.resize(static_cast<size_t>(s.c));
  for (int64_t c = 0; c < s.c; ++c) op->one_minus_mix[static_cast<size_t>(c)] = 1.0f - op->mix[c];
  op->out = L.define(f, "out", s);
  op->t_glob = L.temp(op->nW * s.c * 4);
  op->t_hs = L.temp(elems * 4);
  for (int& t : op->t_m) t = L.temp(elems * 4);
  op->t_ctx = L.temp(elems * 4);
  op->t_bits = L.temp(rows * s.words() * 8);
  for (int k : {kProfAttnPool, kProfAttnQkv, kProfAttnCore, kProfAttnMerge}) L.use(k);
  return op;
}

}  // namespace bhr
