// Standalone self-test of the per-ISA kernels against the portable ones, bit for bit, over awkward
// sizes: the kernels themselves (pack_rows, popc_block, nibble_block), then the drivers of drivers.cpp
// run on each ISA against the same calls on "generic" (bgemm with every output-transform step, with and
// without the nibble layout, batched weights, accumulate mode; grouped dilated and 2x2 stride-2 convs;
// the shift branches; every float op). Needs no Python, so it also runs under an emulator for other
// architectures. Built by runtime/CMakeLists.txt with the flags of every build:
//   cmake -S runtime -B build-test -DBHVIT_BUILD_TESTS=ON && cmake --build build-test -j && ctest --test-dir build-test
//   cmake -S runtime -B build-arm -DBHVIT_BUILD_TESTS=ON -DCMAKE_TOOLCHAIN_FILE=runtime/cmake/aarch64-linux-gnu.cmake
//   cmake --build build-arm -j && qemu-aarch64 -L /usr/aarch64-linux-gnu build-arm/bhvit-selftest
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels.h"
#include "rowops.inc"

namespace {

// Replaces about every 5th value by one whose sign test is awkward: zeros of both signs, NaNs of both signs,
// infinities, the smallest subnormals (bit = value < 0: only -inf and -1e-45 set it).
void salt(float* x, size_t n, std::mt19937_64& rng) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const float odd[] = {0.0f, -0.0f, nan, -nan, inf, -inf, 1e-45f, -1e-45f};
  for (size_t i = 0; i < n; ++i)
    if (rng() % 5 == 0) x[i] = odd[rng() % 8];
}

// The row helpers of rowops.inc as this build compiles them (the vector branches of the host's baseline:
// SSE2 on x86-64, NEON on aarch64, wasm SIMD) against their scalar definitions: sign_word against
// sign_bits with and without a bias (a bias of -0 keeps a -0 value at -0: bit 0), group_means against the
// left-to-right sum for r = 2, 4, 8 and group counts around the vector widths.
int check_rowops(std::mt19937_64& rng) {
  int failures = 0;
  std::normal_distribution<float> nd;
  std::vector<float> z(64 * 40), b(64 * 40);
  for (float& v : z) v = nd(rng);
  for (size_t i = 0; i < b.size(); ++i) b[i] = i % 3 == 0 ? -0.0f : nd(rng);
  salt(z.data(), z.size(), rng);
  for (int64_t w = 0; w < 40; ++w) {
    const float* zw = z.data() + 64 * w;
    const float* bw = b.data() + 64 * w;
    if (sign_word(zw, nullptr) != sign_bits(zw, nullptr, 64) || sign_word(zw, bw) != sign_bits(zw, bw, 64))
      ++failures, std::printf("rowops sign_word, word %lld\n", (long long)w);
  }
  for (int64_t r : {2, 4, 8})
    for (int64_t groups = 0; groups <= 21; ++groups) {
      std::vector<float> got(groups + 1, 7.0f), want(groups + 1, 7.0f);  // the last one must stay untouched
      group_means(z.data(), groups, r, got.data());
      const float inv = 1.0f / static_cast<float>(r);
      for (int64_t j = 0; j < groups; ++j) {
        float s = z[j * r];
        for (int64_t i = 1; i < r; ++i) s = s + z[j * r + i];
        want[j] = s * inv;
      }
      if (std::memcmp(got.data(), want.data(), sizeof(float) * got.size()) != 0)
        ++failures, std::printf("rowops group_means r=%lld groups=%lld\n", (long long)r, (long long)groups);
    }
  return failures;
}

// popc_block at its largest counts: every bit of A set, the weight rows all zeros (XOR counts every bit)
// or all ones (AND does), for K around the word counts where byte counters are summed (15, 16, 31, 32
// words): a counter that wraps gives a wrong total here, never with random bits.
int check_full_counts(const bhv::IsaKernels* k, const bhv::IsaKernels* ref) {
  int failures = 0;
  for (int64_t KW : {15, 16, 31, 32, 62, 63})
    for (uint64_t wbits : {uint64_t(0), ~uint64_t(0)}) {
      const int64_t M = 5, N = 13, NP = bhv::panels_for(N);
      std::vector<uint64_t> a(M * KW, ~uint64_t(0)), bp(NP * KW * 8, 0);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t w = 0; w < KW; ++w) bp[((n / 8) * KW + w) * 8 + n % 8] = wbits;
      for (bool op_and : {false, true}) {
        std::vector<int32_t> p(M * NP * 8), p_ref(M * NP * 8);
        k->popc_block(a.data(), KW, M, bp.data(), 0, NP, KW, op_and, p.data(), NP * 8);
        ref->popc_block(a.data(), KW, M, bp.data(), 0, NP, KW, op_and, p_ref.data(), NP * 8);
        if (p != p_ref)
          ++failures, std::printf("%s popc_block full counts KW=%lld and=%d\n", k->name, (long long)KW, op_and);
      }
    }
  return failures;
}

int check_isa(const bhv::IsaKernels* k, const bhv::IsaKernels* ref, std::mt19937_64& rng) {
  int failures = check_full_counts(k, ref);
  // 254016 bits = 3969 words: past the 128 chunks of 31 words that one 16-bit sum of isa_wasm.cpp holds;
  // 1100 bits = 18 words: a second 16-word block of the AVX2 nibble tables short enough for one byte chunk
  const int64_t ks[] = {1, 3, 31, 33, 63, 64, 65, 127, 128, 1100, 1984, 1985, 2048, 254016, 254017};
  const int64_t ms[] = {1, 3, 5, 8, 9, 17};
  for (int64_t K : ks)
    for (int64_t M : ms) {
      const int64_t KW = bhv::words_for(K), N = 13, NP = bhv::panels_for(N);
      std::vector<float> x(M * K), bias(K);
      std::normal_distribution<float> nd;
      for (float& v : x) v = nd(rng);
      for (float& v : bias) v = nd(rng);
      salt(x.data(), x.size(), rng);
      std::vector<uint64_t> a(M * KW), a_ref(M * KW);
      for (const float* b : {static_cast<const float*>(nullptr), static_cast<const float*>(bias.data())}) {
        k->pack_rows(x.data(), K, M, K, b, a.data());
        ref->pack_rows(x.data(), K, M, K, b, a_ref.data());
        if (a != a_ref)
          ++failures, std::printf("%s pack_rows K=%lld M=%lld bias=%d\n", k->name, (long long)K, (long long)M, !!b);
      }
      std::vector<uint64_t> bp(NP * KW * 8, 0);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t w = 0; w < KW; ++w) {
          uint64_t v = rng();
          if (w == KW - 1 && K % 64) v &= (uint64_t(1) << (K % 64)) - 1;
          bp[((n / 8) * KW + w) * 8 + n % 8] = v;
        }
      for (bool op_and : {false, true}) {
        std::vector<int32_t> p(M * NP * 8), p_ref(M * NP * 8);
        k->popc_block(a.data(), KW, M, bp.data(), 0, NP, KW, op_and, p.data(), NP * 8);
        ref->popc_block(a.data(), KW, M, bp.data(), 0, NP, KW, op_and, p_ref.data(), NP * 8);
        if (p != p_ref)
          ++failures, std::printf("%s popc_block K=%lld M=%lld and=%d\n", k->name, (long long)K, (long long)M, op_and);
      }
      if (KW <= k->nibble_max_words) {  // table kernels = XOR popcounts, whole quads
        const int64_t NQ = bhv::quads_for(N), ldq = NQ * bhv::kQuad;
        std::vector<uint8_t> nib(NQ * KW * 16 * bhv::kQuad);
        bhv::to_nibbles(bp.data(), NP, KW, nib.data());
        std::vector<int32_t> p(M * ldq), p_ref(M * NP * 8);
        k->nibble_block(a.data(), KW, M, nib.data(), 0, NQ, KW, p.data(), ldq);
        ref->popc_block(a.data(), KW, M, bp.data(), 0, NP, KW, false, p_ref.data(), NP * 8);
        bool same = true;
        for (int64_t i = 0; i < M; ++i)
          for (int64_t n = 0; n < N; ++n) same = same && p[i * ldq + n] == p_ref[i * NP * 8 + n];
        if (!same) ++failures, std::printf("%s nibble_block K=%lld M=%lld\n", k->name, (long long)K, (long long)M);
      }
    }
  return failures;
}

}  // namespace

namespace {
// ---- drivers on each ISA against generic ----------------------------------------------------------
struct Rand {
  std::mt19937_64 rng;
  std::vector<float> normal(int64_t n) {
    std::normal_distribution<float> nd;
    std::vector<float> v(n);
    for (float& x : v) x = nd(rng);
    return v;
  }
  std::vector<uint64_t> rows(int64_t n, int64_t K) {  // packed rows with zero padding bits
    const int64_t KW = bhv::words_for(K);
    std::vector<uint64_t> v(n * KW);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t w = 0; w < KW; ++w) {
        uint64_t x = rng();
        if (w == KW - 1 && K % 64) x &= (uint64_t(1) << (K % 64)) - 1;
        v[i * KW + w] = x;
      }
    return v;
  }
};

// Runs f (filling an output vector) on isa and on generic; 1 failure when the bytes differ.
template <class F>
int same_on(const std::string& isa, const char* what, F&& f) {
  bhv::set_isa("generic");
  const std::vector<float> want = f();
  bhv::set_isa(isa);
  const std::vector<float> got = f();
  if (std::memcmp(want.data(), got.data(), sizeof(float) * want.size()) == 0) return 0;
  std::printf("%s: %s differs from generic\n", isa.c_str(), what);
  return 1;
}

int check_bgemm(const std::string& isa, Rand& r) {
  int failures = 0;
  const int64_t ks[] = {1, 63, 64, 65, 200, 256, 1985};
  const int64_t shapes[][2] = {{1, 8}, {7, 13}, {70, 100}, {33, 1100}};
  for (int64_t K : ks)
    for (const auto& mn : shapes) {
      const int64_t M = mn[0], N = mn[1], KW = bhv::words_for(K), NP = bhv::panels_for(N), G = 2;
      const std::vector<uint64_t> a = r.rows(G * M, K), w = r.rows(G * N, K);
      std::vector<uint64_t> panels(G * NP * KW * 8);
      bhv::to_panels(w.data(), G, N, KW, panels.data());
      std::vector<uint8_t> nib(bhv::quads_for(N) * KW * 16 * bhv::kQuad);
      bhv::to_nibbles(panels.data(), NP, KW, nib.data());
      const int64_t res_cols = N % 4 == 0 ? N / 4 : N;
      const std::vector<float> scale = r.normal(N), bias = r.normal(N), res = r.normal(G * M * res_cols),
                               slope = r.normal(N), b1 = r.normal(N), b2 = r.normal(N), ps = r.normal(N),
                               pb = r.normal(N), start = r.normal(G * M * N);
      auto run = [&](bool full, bool tables, bool batched, bool acc) {
        return [&, full, tables, batched, acc] {
          std::vector<float> out = acc ? start : std::vector<float>(G * M * N);
          bhv::Epilogue e;
          e.out = out.data(), e.out_ld = N, e.out_gstride = M * N, e.accumulate = acc;
          if (full) {
            e.scale = scale.data(), e.bias = bias.data(), e.slope = slope.data(), e.b1 = b1.data(), e.b2 = b2.data();
            e.post_scale = ps.data(), e.post_bias = pb.data();
            e.res = res.data(), e.res_ld = res_cols, e.res_cols = res_cols, e.res_gstride = M * res_cols;
          } else {
            e.scale_all = 0.5f;
          }
          bhv::bgemm(a.data(), batched ? M : G * M, panels.data(), batched ? NP * KW * 8 : 0, N, KW, K,
                     batched ? G : 1, e, tables ? nib.data() : nullptr);
          return out;
        };
      };
      char what[96];
      std::snprintf(what, sizeof what, "bgemm K=%lld M=%lld N=%lld", (long long)K, (long long)M, (long long)N);
      for (bool full : {false, true})
        for (bool tables : {false, true}) failures += same_on(isa, what, run(full, tables, false, false));
      failures += same_on(isa, what, run(true, false, true, false));
      failures += same_on(isa, what, run(true, true, false, true));
    }
  return failures;
}

// bgemm in packed mode: the transform's floats become the sign words of the next layer's input (with a
// bias) and the means of groups of mean_r columns, as the MLP's fc1 writes them.
int check_bgemm_packed(const std::string& isa, Rand& r) {
  int failures = 0;
  for (int64_t K : {64, 200})
    for (int64_t N : {64, 200, 320})
      for (int64_t mean_r : {4, 8}) {
        const int64_t M = 37, KW = bhv::words_for(K), NP = bhv::panels_for(N), NW = bhv::words_for(N);
        const std::vector<uint64_t> a = r.rows(M, K), w = r.rows(N, K);
        std::vector<uint64_t> panels(NP * KW * 8);
        bhv::to_panels(w.data(), 1, N, KW, panels.data());
        const std::vector<float> scale = r.normal(N), bias = r.normal(N), slope = r.normal(N), b1 = r.normal(N),
                                 b2 = r.normal(N), move = r.normal(N);
        char what[96];
        std::snprintf(what, sizeof what, "bgemm packed K=%lld N=%lld r=%lld", (long long)K, (long long)N,
                      (long long)mean_r);
        failures += same_on(isa, what, [&] {
          std::vector<float> out(M * NW * 2 + M * (N / mean_r));  // the words (as floats), then the means
          bhv::Epilogue e;
          e.scale = scale.data(), e.bias = bias.data(), e.slope = slope.data(), e.b1 = b1.data(), e.b2 = b2.data();
          e.bits = reinterpret_cast<uint64_t*>(out.data()), e.bits_ld = NW, e.bits_bias = move.data();
          e.means = out.data() + M * NW * 2, e.mean_r = mean_r, e.means_ld = N / mean_r;
          bhv::bgemm(a.data(), M, panels.data(), 0, N, KW, K, 1, e, nullptr);
          return out;
        });
      }
  return failures;
}

int check_bconv(const std::string& isa, Rand& r) {
  int failures = 0;
  struct Case { int64_t B, H, W, C, groups, k, stride, pad, dil, Cout; };
  const Case cases[] = {{1, 7, 7, 64, 4, 3, 1, 1, 1, 64}, {2, 11, 6, 100, 4, 3, 1, 3, 3, 100},
                        {1, 5, 9, 20, 1, 3, 1, 5, 5, 20}, {2, 8, 6, 65, 1, 2, 2, 0, 1, 130}};
  for (const Case& c : cases) {
    bhv::ConvGeom g{c.B, c.H, c.W, c.C, bhv::words_for(c.C), c.groups, c.k, c.k, c.stride, c.pad, c.dil, 0, 0, c.Cout};
    g.OH = (c.H + 2 * c.pad - c.dil * (c.k - 1) - 1) / c.stride + 1;
    g.OW = (c.W + 2 * c.pad - c.dil * (c.k - 1) - 1) / c.stride + 1;
    const int64_t Cg = c.C / c.groups, Ng = c.Cout / c.groups, T = c.k * c.k, KWc = bhv::words_for(T * Cg);
    const std::vector<uint64_t> xp = r.rows(c.B * c.H * c.W, c.C), w = r.rows(c.Cout, T * Cg);
    std::vector<uint64_t> panels(c.groups * bhv::panels_for(Ng) * KWc * 8);
    bhv::to_panels(w.data(), c.groups, Ng, KWc, panels.data());
    std::vector<int32_t> wpop(c.Cout * T, 0);
    for (int64_t o = 0; o < c.Cout; ++o)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t ch = 0; ch < Cg; ++ch) {
          const int64_t bit = t * Cg + ch;
          wpop[o * T + t] += static_cast<int32_t>((w[o * KWc + bit / 64] >> (bit % 64)) & 1);
        }
    const int64_t M = c.B * g.OH * g.OW;
    const std::vector<float> scale = r.normal(c.Cout), bias = r.normal(c.Cout), slope = r.normal(c.Cout),
                             start = r.normal(M * c.Cout);
    failures += same_on(isa, "bconv", [&] {
      std::vector<float> out = start;
      bhv::Epilogue e;
      e.scale = scale.data(), e.bias = bias.data(), e.slope = slope.data(), e.b1 = bias.data(), e.b2 = scale.data();
      e.out = out.data(), e.out_ld = c.Cout, e.accumulate = true;
      bhv::bconv(xp.data(), g, panels.data(), wpop.data(), e);
      return out;
    });
  }
  return failures;
}

// Window attention over a 6 x 4 map in 2 x 2 windows (6 windows, L = 10 tokens), 2 heads: the four phases.
int check_attention(const std::string& isa, Rand& r, int64_t C, bool lsq) {
  bhv::WindowAttn a;
  a.H = 6, a.W = 4, a.C = C, a.w = 2, a.heads = 2, a.d = C / 2, a.pad = 0, a.nW = 6, a.L = 10;
  const int64_t B = 2, rows = B * a.nW * a.L, CW = bhv::words_for(C), NP = bhv::panels_for(C);
  std::vector<std::vector<float>> keep;  // every parameter vector, alive for the checks
  auto vec = [&](int64_t n) { return keep.emplace_back(r.normal(n)).data(); };
  a.alpha = vec(C), a.one_minus_alpha = vec(C), a.ln_w = vec(C), a.ln_b = vec(C), a.eps = 1e-5f, a.divisor = 3.0f;
  std::vector<std::vector<uint64_t>> panels(3);
  for (int n = 0; n < 3; ++n) {
    bhv::AttnBranch& br = a.br[n];
    br.move = vec(C), br.scale = vec(C), br.bias = vec(C), br.move2 = vec(C), br.slope = vec(C), br.b1 = vec(C);
    br.b2 = vec(C);
    const std::vector<uint64_t> w = r.rows(C, C);
    panels[n].resize(NP * CW * 8);
    bhv::to_panels(w.data(), 1, C, CW, panels[n].data());
    br.panels = panels[n].data();
  }
  a.lsq = lsq, a.grad_scale = true;
  std::vector<float> step = {0.3f, 0.7f}, zero = {0.1f, -0.2f};
  a.step = step.data(), a.zero = zero.data(), a.gsb_alpha = 0.05f;
  a.gsb_w[0] = 0.2f, a.gsb_w[1] = 0.5f, a.gsb_w[2] = 0.9f, a.theta[0] = 1e-5f, a.theta[1] = 0.7f, a.theta[2] = 0.9f;
  a.ctx_scale = vec(C), a.ctx_bias = vec(C), a.ctx_slope = vec(C), a.ctx_b1 = vec(C), a.ctx_b2 = vec(C);
  a.mix = vec(C), a.one_minus_mix = vec(C);
  const std::vector<float> x = r.normal(B * a.H * a.W * C);
  return same_on(isa, lsq ? "window attention (LSQ)" : "window attention (GSB)", [&] {
    // glob, hs, m[3], ctx, bits[3] (as floats), out
    std::vector<float> all(B * a.nW * C + 5 * rows * C + 3 * rows * CW * 2 + B * a.H * a.W * C);
    bhv::AttnBuffers buf;
    float* p = all.data();
    buf.glob = p, p += B * a.nW * C;
    buf.hs = p, p += rows * C;
    for (float*& m : buf.m) m = p, p += rows * C;
    buf.ctx = p, p += rows * C;
    for (uint64_t*& bits : buf.bits) bits = reinterpret_cast<uint64_t*>(p), p += rows * CW * 2;
    bhv::attention_pool_norm(a, x.data(), B, buf);
    bhv::attention_qkv(a, B, buf);
    bhv::attention_core(a, B, buf);
    bhv::attention_merge(a, B, buf, p);
    return all;
  });
}

int check_shift(const std::string& isa, Rand& r) {
  int failures = 0;
  const int kernels[] = {3, 5};
  for (int64_t H : {1, 4, 7})
    for (int64_t C : {4, 12, 64}) {
      const int64_t B = 2, W = H + 2;
      const std::vector<float> x = r.normal(B * H * W * C), ls = r.normal(6 * 2 * C), start = r.normal(B * H * W * C);
      failures += same_on(isa, "shift_add", [&] {
        std::vector<float> out = start;
        bhv::shift_add(out.data(), x.data(), B, H, W, C, kernels, 2, ls.data());
        return out;
      });
    }
  return failures;
}

// The float ops' drivers (float_kernels.inc) on each ISA against generic: affine with every option, the
// stem, pooling, means, the classifier, and window attention (LSQ and GSB) with awkward sizes.
int check_float(const std::string& isa, Rand& r) {
  int failures = 0;
  for (int64_t C : {1, 17, 64, 72}) {
    const int64_t B = 2, HW = 5, M = B * HW, words = bhv::words_for(C);
    const std::vector<float> x = r.normal(M * C), s = r.normal(C), b = r.normal(C), add = r.normal(HW * C),
                             mv = r.normal(C);
    for (int gelu = 0; gelu < 2; ++gelu)
      failures += same_on(isa, "affine", [&] {
        bhv::Affine p;
        p.C = C, p.HW = HW, p.scale = s.data(), p.bias = b.data(), p.add = add.data(), p.gelu = gelu;
        p.pack_move = mv.data();
        std::vector<float> y(M * C + M * words * 2);  // the floats, then the sign words
        bhv::affine(p, x.data(), B, y.data(), reinterpret_cast<uint64_t*>(y.data() + M * C));
        return y;
      });
    const std::vector<float> w = r.normal(13 * C), wb = r.normal(13);
    failures += same_on(isa, "linear", [&] {
      std::vector<float> y(B * 13);
      bhv::linear(x.data(), B, C, 13, w.data(), wb.data(), y.data());
      return y;
    });
  }
  for (int64_t cout : {16, 17, 64})
    for (bool nchw : {true, false}) {
      bhv::PatchConv p;
      p.nchw = nchw, p.C = 3, p.H = 12, p.W = 8, p.k = 4, p.cout = cout, p.oh = 3, p.ow = 2, p.K = 48;
      const std::vector<float> x = r.normal(2 * 3 * 12 * 8), wt = r.normal(48 * cout), bias = r.normal(cout);
      p.wt = wt.data(), p.bias = bias.data();
      failures += same_on(isa, "patch_conv", [&] {
        std::vector<float> y(2 * 3 * 2 * cout);
        bhv::patch_conv(p, x.data(), 2, y.data());
        return y;
      });
    }
  const std::vector<float> map = r.normal(2 * 6 * 4 * 24);
  failures += same_on(isa, "avg_pool", [&] {
    std::vector<float> y(2 * 3 * 2 * 24);
    bhv::avg_pool(map.data(), 2, 6, 4, 24, 2, y.data());
    return y;
  });
  failures += same_on(isa, "mean_tokens", [&] {
    std::vector<float> y(2 * 24);
    bhv::mean_tokens(map.data(), 2, 24, 24, y.data());
    return y;
  });
  failures += same_on(isa, "means_of_groups", [&] {
    std::vector<float> y(48 * 8);
    bhv::means_of_groups(map.data(), 48, 24, 3, y.data());
    return y;
  });
  for (int64_t C : {16, 24})
    for (bool lsq : {true, false}) failures += check_attention(isa, r, C, lsq);
  return failures;
}

}  // namespace

int main() {
  std::mt19937_64 rng(42);
  const bhv::IsaKernels* ref = bhv::isa_generic();
  int failures = check_rowops(rng), tested = 0;
  for (auto f : {bhv::isa_avx512vpopcnt, bhv::isa_avx512bw, bhv::isa_avx2, bhv::isa_neon, bhv::isa_wasm_simd128,
                 bhv::isa_popcnt}) {
    if (const bhv::IsaKernels* k = f()) {
      failures += check_isa(k, ref, rng);
      std::printf("checked %s\n", k->name);
      ++tested;
    }
  }
  Rand r{std::mt19937_64(7)};
  for (const std::string& isa : bhv::available_isas()) {
    if (isa == "generic") continue;
    for (int threads : {1, 2}) {
      bhv::set_num_threads(threads);
      failures += check_bgemm(isa, r) + check_bgemm_packed(isa, r) + check_bconv(isa, r) + check_shift(isa, r) +
                  check_float(isa, r);
    }
    std::printf("checked drivers on %s\n", isa.c_str());
  }
  std::printf("%d ISA(s) checked against generic, %d failure(s)\n", tested, failures);
  return failures ? 1 : 0;
}
