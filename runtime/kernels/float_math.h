// Float helpers of the kernels (float_kernels.inc, compiled once per ISA file), written as straight
// branch-free loops the compiler vectorises at that file's flags: reductions keep 8 independent partial sums
// (a float sum is only vectorised when its order is spelled out), and exp/erf are polynomials instead of libm
// calls. The kernels are built with -ffp-contract=off, so a*b + c stays two roundings as in torch's eager
// ops, and every ISA's compile gives the same bits. Internal linkage: each translation unit keeps the code
// its flags compile.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#endif

// vf8 values passed between inline functions: the ABI note about 32-byte vectors without AVX concerns
// calls across separately compiled code, which these never are.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// Every helper here is always inlined (an out-of-line copy would pass vf8 in memory or in a register
// depending on the flags of the file that compiled it).
#define BHR_INLINE inline __attribute__((always_inline))

namespace {

// Eight floats as one value (GCC/Clang vector extensions): the compiler maps it to two SSE or one AVX
// register, so the polynomials below run in vectors at any baseline. Loops that call scalar helpers with
// clamps do not vectorise (comparisons may trap under the default -ftrapping-math). Lane-wise selects are
// spelled pick(mask, a, b), the conversions to_int<I>(x) (truncating), as_float<V>(i) and as_int<I>(x)
// (reinterpreting), loads and stores load_v<V>(p) and store_v(p, v): templates over GCC vector types, with
// overloads for the NEON vf8 below.
template <class M, class V>
BHR_INLINE V pick(const M& m, const V& a, const V& b) {
  return m ? a : b;
}
template <class I, class V>
BHR_INLINE I to_int(const V& x) {
  return __builtin_convertvector(x, I);
}
template <class V, class I>
BHR_INLINE V as_float(const I& x) {
  return (V)x;  // a vector cast reinterprets the bits
}
template <class I, class V>
BHR_INLINE I as_int(const V& x) {
  return (I)x;
}
template <class V>
BHR_INLINE V load_v(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V>
BHR_INLINE void store_v(float* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

#if defined(__aarch64__) && defined(__ARM_NEON)
// On aarch64 GCC has no register mode for a 32-byte vector: a vector-extension vf8 lived on the stack,
// its broadcasts went through memory and its selects lane by lane (the stem's patch_block took 115
// instructions per input value where two NEON registers take 40). Here vf8 is two NEON registers and
// every operator the same lane-wise IEEE operation.
struct vf8 {
  float32x4_t lo, hi;
  BHR_INLINE float operator[](int i) const { return i < 4 ? lo[i & 3] : hi[i & 3]; }
};
struct vi8 {
  int32x4_t lo, hi;
};
struct vm8 {  // lane masks of a comparison
  uint32x4_t lo, hi;
};

BHR_INLINE vf8 splat8(float x) { return {vdupq_n_f32(x), vdupq_n_f32(x)}; }
BHR_INLINE vf8 load8(const float* p) { return {vld1q_f32(p), vld1q_f32(p + 4)}; }
BHR_INLINE void store8(float* p, const vf8& v) { vst1q_f32(p, v.lo), vst1q_f32(p + 4, v.hi); }

#define BHR_VF8_OP(op, fn)                                                                                  \
  BHR_INLINE vf8 operator op(const vf8& a, const vf8& b) { return {fn(a.lo, b.lo), fn(a.hi, b.hi)}; }  \
  BHR_INLINE vf8 operator op(const vf8& a, float b) { return a op splat8(b); }                          \
  BHR_INLINE vf8 operator op(float a, const vf8& b) { return splat8(a) op b; }
BHR_VF8_OP(+, vaddq_f32)
BHR_VF8_OP(-, vsubq_f32)
BHR_VF8_OP(*, vmulq_f32)
BHR_VF8_OP(/, vdivq_f32)
#undef BHR_VF8_OP
BHR_INLINE vf8& operator+=(vf8& a, const vf8& b) { return a = a + b; }
BHR_INLINE vf8 operator-(const vf8& a) { return {vnegq_f32(a.lo), vnegq_f32(a.hi)}; }

#define BHR_VF8_CMP(op, fn)                                                                                \
  BHR_INLINE vm8 operator op(const vf8& a, const vf8& b) { return {fn(a.lo, b.lo), fn(a.hi, b.hi)}; } \
  BHR_INLINE vm8 operator op(const vf8& a, float b) { return a op splat8(b); }
BHR_VF8_CMP(<, vcltq_f32)
BHR_VF8_CMP(<=, vcleq_f32)
BHR_VF8_CMP(>, vcgtq_f32)
BHR_VF8_CMP(>=, vcgeq_f32)
#undef BHR_VF8_CMP
BHR_INLINE vf8 pick(const vm8& m, const vf8& a, const vf8& b) {
  return {vbslq_f32(m.lo, a.lo, b.lo), vbslq_f32(m.hi, a.hi, b.hi)};
}

BHR_INLINE vi8 operator+(const vi8& a, int32_t b) { return {vaddq_s32(a.lo, vdupq_n_s32(b)), vaddq_s32(a.hi, vdupq_n_s32(b))}; }
BHR_INLINE vi8 operator<<(const vi8& a, int b) { return {vshlq_s32(a.lo, vdupq_n_s32(b)), vshlq_s32(a.hi, vdupq_n_s32(b))}; }
BHR_INLINE vi8 operator&(const vi8& a, int32_t b) { return {vandq_s32(a.lo, vdupq_n_s32(b)), vandq_s32(a.hi, vdupq_n_s32(b))}; }
BHR_INLINE vi8 operator^(const vi8& a, const vi8& b) { return {veorq_s32(a.lo, b.lo), veorq_s32(a.hi, b.hi)}; }
template <>
BHR_INLINE vi8 to_int<vi8, vf8>(const vf8& x) {
  return {vcvtq_s32_f32(x.lo), vcvtq_s32_f32(x.hi)};
}
template <>
BHR_INLINE vf8 as_float<vf8, vi8>(const vi8& x) {
  return {vreinterpretq_f32_s32(x.lo), vreinterpretq_f32_s32(x.hi)};
}
template <>
BHR_INLINE vi8 as_int<vi8, vf8>(const vf8& x) {
  return {vreinterpretq_s32_f32(x.lo), vreinterpretq_s32_f32(x.hi)};
}
template <>
BHR_INLINE vf8 load_v<vf8>(const float* p) {
  return load8(p);
}
template <>
BHR_INLINE void store_v<vf8>(float* p, const vf8& v) {
  store8(p, v);
}
#else
typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));

BHR_INLINE vf8 splat8(float x) { return vf8{} + x; }
BHR_INLINE vf8 load8(const float* p) { return load_v<vf8>(p); }
BHR_INLINE void store8(float* p, const vf8& v) { store_v(p, v); }
#endif

// The elementwise maps (exp in softmax, the attention masks, GELU) run on vfw: 16 lanes (one zmm) at AVX-512
// flags, else vf8. An elementwise result does not depend on the lane count; the reductions below keep 8
// partial sums on every ISA. Measured on bhvit_small at 224 (AVX-512 Xeon, 1 thread): attention.core 2.20 ->
// 1.97 ms, affine (its one GELU, after the stem) 0.85 -> 0.77 ms.
#if defined(__AVX512F__)
typedef float vfw __attribute__((vector_size(64)));
typedef int32_t viw __attribute__((vector_size(64)));
#else
typedef vf8 vfw;
typedef vi8 viw;
#endif

// The reductions keep 8 interleaved partial sums in one vf8 (lane l sums x[i + l]): spelled as vectors, not
// as a loop over an array of 8 floats, which GCC at AVX-512 flags "vectorised" across 16 iterations with
// permutes (LayerNorm rows 2x slower than at AVX2 flags, measured on bhvit_small's attention).
// The lanes combined pairwise: ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)).
BHR_INLINE float combine8(const vf8& a) { return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])); }

// x[0] + ... + x[n-1] as 8 interleaved partial sums, combined pairwise, then the tail in order.
BHR_INLINE float sum_lanes(const float* __restrict x, int64_t n) {
  vf8 acc{};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc += load8(x + i);
  float s = combine8(acc);
  for (; i < n; ++i) s += x[i];
  return s;
}

// sum of (x[i] - m)^2, the same way.
BHR_INLINE float sum_sq_dev(const float* __restrict x, float m, int64_t n) {
  vf8 acc{};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const vf8 d = load8(x + i) - m;
    acc += d * d;
  }
  float s = combine8(acc);
  for (; i < n; ++i) s += (x[i] - m) * (x[i] - m);
  return s;
}

// a . b the same way: lane l sums a[i + l] b[i + l].
BHR_INLINE float dot_lanes(const float* __restrict a, const float* __restrict b, int64_t n) {
  vf8 acc{};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = acc + load8(a + i) * load8(b + i);
  float s = combine8(acc);
  for (; i < n; ++i) s = s + a[i] * b[i];
  return s;
}

// The maximum, lane-wise from x[0], then the lanes in order, then the tail.
BHR_INLINE float max_lanes(const float* __restrict x, int64_t n) {
  vf8 acc = vf8{} + x[0];
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const vf8 v = load8(x + i);
    acc = pick(v > acc, v, acc);
  }
  float m = acc[0];
  for (int l = 1; l < 8; ++l) m = acc[l] > m ? acc[l] : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// e^x within ~1 ulp for x in [-87, 88] (clamped there; NaN gives e^-87): x = n ln2 + r with |r| <= ln2/2
// (ln2 split in two so n ln2 is exact), e^r by its Taylor series to r^7 (truncation r^8/8! < 6e-9), times
// 2^n built in the exponent bits.
// V a float vector type, I the int32 vector of as many lanes.
template <class V, class I>
BHR_INLINE V exp_v(const V& in) {
  V x = in;
  const V lo = V{} - 87.0f, hi = V{} + 88.0f;
  x = pick(x >= lo, x, lo);
  x = pick(x <= hi, x, hi);
  const V n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round(x / ln2): the 1.5*2^23 trick
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  const V y = (p * (r * r) + r) + 1.0f;
  const I bits = (to_int<I>(n) + 127) << 23;
  return y * as_float<V>(bits);
}

// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7):
// erf(|x|) = 1 - t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) e^{-x^2}, t = 1/(1 + p|x|), odd in x.
template <class V, class I>
BHR_INLINE V erf_v(const V& x) {
  const I xi = as_int<I>(x);
  const I sign = xi & static_cast<int32_t>(0x80000000u), ai = xi & 0x7fffffff;
  const V ax = as_float<V>(ai);
  const V t = 1.0f / (1.0f + 0.3275911f * ax);
  V q = t * 1.061405429f + -1.453152027f;
  q = q * t + 1.421413741f;
  q = q * t + -0.284496736f;
  q = q * t + 0.254829592f;
  const V e = 1.0f - (t * q) * exp_v<V, I>(-(ax * ax));
  return as_float<V>(as_int<I>(e) ^ sign);
}

// y[i] = f(x[i]) for f on vectors of type V, the tail through a zero-padded vector.
template <class V, class F>
BHR_INLINE void map_v(float* y, const float* x, int64_t n, F f) {
  constexpr int64_t kN = sizeof(V) / sizeof(float);
  int64_t i = 0;
  for (; i + kN <= n; i += kN) store_v(y + i, f(load_v<V>(x + i)));
  if (i < n) {
    float buf[kN] = {};
    std::memcpy(buf, x + i, sizeof(float) * static_cast<size_t>(n - i));
    store_v(buf, f(load_v<V>(buf)));
    std::memcpy(y + i, buf, sizeof(float) * static_cast<size_t>(n - i));
  }
}

// gelu(x) = x (1 + erf(x / sqrt 2)) / 2, in place over n values.
BHR_INLINE void gelu_row(float* y, int64_t n) {
  map_v<vfw>(y, y, n, [](const vfw& x) __attribute__((always_inline)) {
    return (x * (1.0f + erf_v<vfw, viw>(x * 0.70710678118654752f))) * 0.5f;
  });
}

// softmax in place: e^(s - max) / sum, as exp values times 1/sum.
BHR_INLINE void softmax_row(float* s, int64_t n) {
  const float m = max_lanes(s, n);
  map_v<vfw>(s, s, n, [m](const vfw& x) __attribute__((always_inline)) { return exp_v<vfw, viw>(x - m); });
  const float inv = 1.0f / sum_lanes(s, n);
  for (int64_t i = 0; i < n; ++i) s[i] = s[i] * inv;
}

// LayerNorm over n values (biased variance): ((x - mean) / sqrt(var + eps)) * w + b.
BHR_INLINE void layer_norm_row(const float* __restrict x, int64_t n, const float* __restrict w,
                               const float* __restrict b,
                           float eps, float* __restrict y) {
  const float mean = sum_lanes(x, n) / static_cast<float>(n);
  const float var = sum_sq_dev(x, mean, n) / static_cast<float>(n);
  const float rstd = 1.0f / std::sqrt(var + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = ((x[i] - mean) * rstd) * w[i] + b[i];
}

// RPReLU per element: (y > 0 ? y : slope y) + b2 with y = z - b1, as max(y,0) + slope min(y,0) (exact, branch-free).
BHR_INLINE float rprelu1(float z, float slope, float b1, float b2) {
  const float y = z - b1;
  return ((y > 0.0f ? y : 0.0f) + slope * (y < 0.0f ? y : 0.0f)) + b2;
}

}  // namespace
