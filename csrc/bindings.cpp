// Python bindings (pybind11 + numpy buffers only; no torch headers). Every entry point checks shapes,
// requires C-contiguous arrays of the exact dtype (no silent copies) and releases the GIL while working.
//
// Hostile arguments (a crafted packed file, or a direct call from Python): every size and geometry argument
// and every array extent is checked against the others and against kMaxExtent, and every size derived from
// them (conv output size, M*N, buffer sizes, the drivers' work estimates) is computed with overflow checks
// and bounded by kMaxElements, before any native code runs. A violation is std::invalid_argument (a Python
// ValueError) naming the argument. A numpy array may have a huge extent beside a zero one (np.empty((2**58,
// 0))): where the output is empty the entry points return before the drivers loop over such extents.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#if __has_include(<sys/mman.h>)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <optional>
#include <utility>
#include <stdexcept>
#include <string>

#include "kernels.h"

namespace py = pybind11;
using bhv::Epilogue;

namespace {

// No size argument or array extent of an honest call comes near these (the largest layer of a 224 px model
// has 3136 rows per image and 4096 columns; a batch-256 stage-1 output has 4e8 floats). They keep every
// product the drivers form (rows x columns x words) inside int64 and the int32 popcounts exact.
constexpr int64_t kMaxExtent = (int64_t(1) << 31) - 1;
constexpr int64_t kMaxElements = int64_t(1) << 36;  // elements of one output (256 GiB of floats)

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument(msg); }

// v if lo <= v <= hi, else invalid_argument naming the argument.
int64_t arg_in(const char* name, int64_t v, int64_t lo, int64_t hi = kMaxExtent) {
  if (v < lo || v > hi)
    bad(std::string(name) + " is " + std::to_string(v) + ", must be in [" + std::to_string(lo) + ", " +
        std::to_string(hi) + "]");
  return v;
}

// a * b for a, b >= 0, or invalid_argument when it would exceed `limit` (or overflow int64).
int64_t mul(int64_t a, int64_t b, const char* what, int64_t limit = INT64_MAX) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r) || r > limit) bad(std::string(what) + " is too large");
  return r;
}

// The product of sizes (each >= 0), bounded by kMaxElements: an output's element count (0 when any is 0).
int64_t elements(std::initializer_list<int64_t> dims, const char* what) {
  for (int64_t d : dims)
    if (d == 0) return 0;
  int64_t n = 1;
  for (int64_t d : dims) n = mul(n, d, what, kMaxElements);
  return n;
}

// The drivers' work estimate (rows * columns * words, used to choose threads) must fit int64.
void check_work(std::initializer_list<int64_t> factors, const char* what) {
  for (int64_t f : factors)
    if (f == 0) return;
  int64_t n = 1;
  for (int64_t f : factors) n = mul(n, f, what);
}

template <class T>
using Arr = py::array_t<T, py::array::c_style>;
template <class T>
using OptArr = std::optional<Arr<T>>;

// Every extent of an array the kernels read: at most kMaxExtent.
template <class T>
void check_extents(const Arr<T>& a, const char* what) {
  for (py::ssize_t i = 0; i < a.ndim(); ++i)
    if (a.shape(i) > kMaxExtent)
      bad(std::string(what) + ": dim " + std::to_string(i) + " is " + std::to_string(a.shape(i)) + ", at most " +
          std::to_string(kMaxExtent));
}

// a has exactly these dims (-1: any extent) and no extent above kMaxExtent.
template <class T>
void check(const Arr<T>& a, std::initializer_list<int64_t> shape, const char* what) {
  if (a.ndim() != static_cast<py::ssize_t>(shape.size()))
    throw std::invalid_argument(std::string(what) + ": expected " + std::to_string(shape.size()) + " dims, got " +
                                std::to_string(a.ndim()));
  check_extents(a, what);
  int i = 0;
  for (int64_t s : shape) {
    if (s >= 0 && a.shape(i) != s)
      throw std::invalid_argument(std::string(what) + ": dim " + std::to_string(i) + " is " +
                                  std::to_string(a.shape(i)) + ", expected " + std::to_string(s));
    ++i;
  }
}

template <class T>
const T* opt_ptr(const OptArr<T>& a, int64_t n, const char* what) {
  if (!a) return nullptr;
  check(*a, {n}, what);
  return a->data();
}

// Fills the per-channel part of an epilogue from optional arrays (convention 6 of bitpack.h).
void fill_epilogue(Epilogue& e, int64_t N, const OptArr<float>& scale, float scale_all, const OptArr<float>& bias,
                   const OptArr<float>& slope, const OptArr<float>& b1, const OptArr<float>& b2,
                   const OptArr<float>& post_scale, const OptArr<float>& post_bias) {
  e.post_scale = opt_ptr(post_scale, N, "post_scale");
  e.post_bias = opt_ptr(post_bias, N, "post_bias");
  if ((e.post_scale != nullptr) != (e.post_bias != nullptr))
    throw std::invalid_argument("post_scale and post_bias go together");
  e.scale = opt_ptr(scale, N, "scale");
  e.scale_all = scale_all;
  e.bias = opt_ptr(bias, N, "bias");
  e.slope = opt_ptr(slope, N, "slope");
  e.b1 = opt_ptr(b1, N, "b1");
  e.b2 = opt_ptr(b2, N, "b2");
  if ((e.slope != nullptr) != (e.b1 != nullptr) || (e.slope != nullptr) != (e.b2 != nullptr))
    throw std::invalid_argument("RPReLU needs slope, b1 and b2 together");
}

// Residual (M, Rc) or (G, M, Rc) with N % Rc == 0.
void fill_residual(Epilogue& e, const OptArr<float>& res, int64_t G, int64_t M, int64_t N) {
  if (!res) return;
  const int64_t nd = res->ndim();
  if (nd != 2 && nd != 3) bad("residual: expected 2 or 3 dims, got " + std::to_string(nd));
  const int64_t rc = res->shape(nd - 1);
  if (nd == 2) {
    check(*res, {M, -1}, "residual");
  } else {
    check(*res, {G, M, -1}, "residual");
    e.res_gstride = mul(M, rc, "residual size");
  }
  if (rc <= 0 || N % rc != 0) throw std::invalid_argument("residual columns must divide N");
  e.res = res->data();
  e.res_ld = rc;
  e.res_cols = rc;
}

// ---- output buffers ------------------------------------------------------------------------------
// Outputs of at least kCachedBytes come from a small cache of freed buffers (2 MiB aligned, huge pages
// advised). A fresh large array costs the kernel zeroing every page on first touch (a 205 MB batch-32
// stage-1 fc1 output: ~20 ms, as long as the GEMM itself); a forward pass frees and asks for the same
// sizes again, so reused buffers skip that. The cache keeps at most BufferCache::limit bytes of freed
// buffers (set_buffer_cache_mb; 0 disables it). Smaller outputs are numpy arrays, viewed from the first
// 64-byte boundary so that streamed stores cover whole cache lines.
constexpr size_t kCachedBytes = size_t(4) << 20;
constexpr size_t kHugePage = size_t(2) << 20;

struct BufferCache {
  std::mutex mu;
  std::vector<std::pair<size_t, void*>> free;  // (bytes, buffer), oldest first
  size_t held = 0;
  std::atomic<size_t> limit{size_t(512) << 20};

  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu);
      for (size_t i = free.size(); i-- > 0;)
        if (free[i].first == bytes) {
          void* p = free[i].second;
          free.erase(free.begin() + static_cast<std::ptrdiff_t>(i));
          held -= bytes;
          return p;
        }
    }
    void* p = std::aligned_alloc(kHugePage, bytes);
    if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
  }

  // Takes back a freed buffer (p null: none), then frees the oldest ones beyond the limit.
  void give(void* p, size_t bytes) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (p) {
        free.emplace_back(bytes, p);
        held += bytes;
      }
      while (held > limit && !free.empty()) {
        held -= free.front().first;
        drop.push_back(free.front().second);
        free.erase(free.begin());
      }
    }
    for (void* q : drop) std::free(q);
  }
};

BufferCache& buffer_cache() {
  static BufferCache* c = new BufferCache();  // never destroyed: arrays may outlive module teardown
  return *c;
}

struct CachedBuffer {
  void* p;
  size_t bytes;
};

template <class T>
Arr<T> new_array(const std::vector<py::ssize_t>& shape) {
  py::ssize_t n = 1;
  for (py::ssize_t s : shape) arg_in("output dim", s, 0, kMaxElements);
  if (std::find(shape.begin(), shape.end(), 0) == shape.end())
    for (py::ssize_t s : shape) n = mul(n, s, "output size", kMaxElements);
  else
    n = 0;
  const size_t need = static_cast<size_t>(n) * sizeof(T);
  if (need >= kCachedBytes && buffer_cache().limit > 0) {
    const size_t bytes = (need + kHugePage - 1) / kHugePage * kHugePage;
    auto* b = new CachedBuffer{buffer_cache().take(bytes), bytes};
    py::capsule owner(b, [](void* q) {
      auto* cb = static_cast<CachedBuffer*>(q);
      buffer_cache().give(cb->p, cb->bytes);
      delete cb;
    });
    return Arr<T>(shape, static_cast<T*>(b->p), owner);
  }
  constexpr py::ssize_t pad = 64 / sizeof(T);
  Arr<T> flat(n + pad);
  const uintptr_t addr = reinterpret_cast<uintptr_t>(flat.data());
  const py::ssize_t skip = static_cast<py::ssize_t>(((64 - addr % 64) % 64) / sizeof(T));
  return Arr<T>(shape, flat.mutable_data() + skip, flat);
}

void set_buffer_cache_mb(int64_t mb) {
  if (mb < 0) bad("buffer cache size must be >= 0 MB, got " + std::to_string(mb));
  arg_in("buffer cache size (MB)", mb, 0, int64_t(1) << 30);
  buffer_cache().limit = static_cast<size_t>(mb) << 20;
  buffer_cache().give(nullptr, 0);
}

int64_t buffer_cache_mb() { return static_cast<int64_t>(buffer_cache().limit >> 20); }

Arr<float> output(std::optional<Arr<float>>& out, std::vector<py::ssize_t> shape, bool accumulate) {
  if (out) {
    if (static_cast<size_t>(out->ndim()) != shape.size()) throw std::invalid_argument("out: wrong rank");
    for (size_t i = 0; i < shape.size(); ++i)
      if (out->shape(i) != shape[i]) throw std::invalid_argument("out: wrong shape");
    if (!out->writeable()) bad("out: array is read-only");
    return *out;
  }
  if (accumulate) throw std::invalid_argument("accumulate=True needs out=");
  return new_array<float>(shape);
}

// ---- entry points ----------------------------------------------------------------------------------
// An empty output returns before the drivers run: its other extents may be huge (see the top of the file).

Arr<uint64_t> pack_rows(const Arr<float>& x, const OptArr<float>& bias) {
  if (x.ndim() < 1) bad("x: need at least 1 dim");
  check_extents(x, "x");
  const int64_t K = x.shape(x.ndim() - 1), M = K ? x.size() / K : 0;
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  shape.back() = bhv::words_for(K);
  Arr<uint64_t> out = new_array<uint64_t>(shape);
  const float* b = opt_ptr(bias, K, "bias");
  if (M == 0) return out;
  uint64_t* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    bhv::pack_rows(x.data(), K, M, K, b, o);
  }
  return out;
}

Arr<uint64_t> to_panels(const Arr<uint64_t>& rows) {
  check(rows, {-1, -1, -1}, "rows (G, N, KW)");
  const int64_t G = rows.shape(0), N = rows.shape(1), KW = rows.shape(2), NP = bhv::panels_for(N);
  elements({G, NP, KW, bhv::kPanel}, "panels (G, NP, KW, 8)");
  Arr<uint64_t> out({G, NP, KW, int64_t(bhv::kPanel)});
  if (out.size() == 0) return out;
  bhv::to_panels(rows.data(), G, N, KW, out.mutable_data());
  return out;
}

Arr<uint64_t> pack_cols_panels(const Arr<float>& x, const OptArr<float>& bias) {
  check(x, {-1, -1, -1}, "x (G, S, D)");
  const int64_t G = x.shape(0), S = x.shape(1), D = x.shape(2);
  elements({G, bhv::panels_for(D), bhv::words_for(S), bhv::kPanel}, "panels (G, ceil(D/8), ceil(S/64), 8)");
  Arr<uint64_t> out({G, bhv::panels_for(D), bhv::words_for(S), int64_t(bhv::kPanel)});
  const float* b = opt_ptr(bias, D, "bias");
  if (x.size() == 0) return out;  // then out is empty too (S = 0 or D = 0 or G = 0)
  uint64_t* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    bhv::pack_cols_panels(x.data(), G, S, D, b, o);
  }
  return out;
}

Arr<uint64_t> pack_nonzero(const Arr<uint8_t>& m) {
  if (m.ndim() < 1) bad("m: need at least 1 dim");
  check_extents(m, "m");
  const int64_t K = m.shape(m.ndim() - 1), M = K ? m.size() / K : 0;
  std::vector<py::ssize_t> shape(m.shape(), m.shape() + m.ndim());
  shape.back() = bhv::words_for(K);
  Arr<uint64_t> out = new_array<uint64_t>(shape);
  if (M == 0) return out;
  uint64_t* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    bhv::pack_nonzero(m.data(), M, K, o);
  }
  return out;
}

Arr<int32_t> popcount_gemm(const Arr<uint64_t>& a, const Arr<uint64_t>& bp, int64_t N, bool op_and) {
  arg_in("n", N, 0);
  check(a, {-1, -1, -1}, "a (G, M, KW)");
  const int64_t G = a.shape(0), M = a.shape(1), KW = a.shape(2), NP = bhv::panels_for(N);
  check(bp, {G, NP, KW, bhv::kPanel}, "b panels (G, NP, KW, 8)");
  elements({G, M, N}, "output (G, M, n)");
  check_work({G, M, NP, bhv::kPanel, KW}, "popcount_gemm work (G * M * n * KW)");
  Arr<int32_t> out({G, M, N});
  int32_t* o = out.mutable_data();
  if (out.size() == 0) return out;
  if (KW == 0) {  // no words: every popcount is 0
    std::fill(o, o + out.size(), 0);
    return out;
  }
  {
    py::gil_scoped_release nogil;
    bhv::popcount_gemm(a.data(), M, bp.data(), N, KW, G, op_and, o);
  }
  return out;
}

Arr<uint8_t> to_nibbles(const Arr<uint64_t>& bp) {
  check(bp, {-1, -1, bhv::kPanel}, "panels (NP, KW, 8)");
  const int64_t NP = bp.shape(0), KW = bp.shape(1);
  const int64_t NQ = bhv::quads_for(mul(NP, bhv::kPanel, "panel rows"));
  elements({NQ, KW, 16, bhv::kQuad}, "nibbles (ceil(NP/4), KW, 16, 32)");
  Arr<uint8_t> out({NQ, KW, int64_t(16), int64_t(bhv::kQuad)});
  if (out.size() == 0) return out;
  uint8_t* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    bhv::to_nibbles(bp.data(), NP, KW, o);
  }
  return out;
}

// The nibble layout of an N-row weight of KW words (to_nibbles), checked, or null. Its bytes are used
// through their low 4 bits only (vpshufb), so no byte value can index outside the tables.
const uint8_t* nibbles_ptr(const OptArr<uint8_t>& nibbles, int64_t N, int64_t KW) {
  if (!nibbles) return nullptr;
  check(*nibbles, {bhv::quads_for(N), KW, 16, bhv::kQuad}, "nibbles (ceil(N/32), KW, 16, 32)");
  return nibbles->data();
}

// a: (M, KW) or (G, M, KW); bp: (NP, KW, 8) shared, or (G, NP, KW, 8); nibbles: to_nibbles(bp) or None.
Arr<float> bgemm(const Arr<uint64_t>& a, const Arr<uint64_t>& bp, int64_t N, int64_t K, const OptArr<float>& scale,
                 float scale_all, const OptArr<float>& bias, const OptArr<float>& residual,
                 const OptArr<float>& slope, const OptArr<float>& b1, const OptArr<float>& b2,
                 const OptArr<float>& post_scale, const OptArr<float>& post_bias,
                 std::optional<Arr<float>> out, bool accumulate, const OptArr<uint8_t>& nibbles) {
  arg_in("n", N, 0);
  arg_in("k", K, 1);
  const int64_t KW = bhv::words_for(K), NP = bhv::panels_for(N);
  const bool batched = a.ndim() == 3;
  if (!batched) check(a, {-1, KW}, "a (M, KW)");
  else check(a, {-1, -1, KW}, "a (G, M, KW)");
  const int64_t G = batched ? a.shape(0) : 1, M = a.shape(batched ? 1 : 0);
  int64_t b_gstride = 0;
  if (bp.ndim() == 4) {
    check(bp, {G, NP, KW, bhv::kPanel}, "b panels (G, NP, KW, 8)");
    b_gstride = elements({NP, KW, bhv::kPanel}, "b panels per batch");
  } else {
    check(bp, {NP, KW, bhv::kPanel}, "b panels (NP, KW, 8)");
  }
  if (nibbles && b_gstride) throw std::invalid_argument("nibbles: only for a weight shared over the batch");
  const uint8_t* nib = nibbles_ptr(nibbles, N, KW);
  const int64_t n_out = elements({G, M, N}, "output (G, M, n)");
  check_work({G, M, NP, bhv::kPanel, KW}, "bgemm work (G * M * n * KW)");
  Epilogue e;
  fill_epilogue(e, N, scale, scale_all, bias, slope, b1, b2, post_scale, post_bias);
  fill_residual(e, residual, G, M, N);
  std::vector<py::ssize_t> shape = batched ? std::vector<py::ssize_t>{G, M, N} : std::vector<py::ssize_t>{M, N};
  Arr<float> o = output(out, shape, accumulate);
  if (n_out == 0) return o;
  e.out = o.mutable_data();
  e.out_ld = N;
  e.out_gstride = M * N;
  e.accumulate = accumulate;
  {
    py::gil_scoped_release nogil;
    bhv::bgemm(a.data(), M, bp.data(), b_gstride, N, KW, K, G, e, nib);
  }
  return o;
}

// bgemm in packed mode (Epilogue::bits): a (M, KW) against one shared weight; instead of the floats z
// (M, N) returns the next binary layer's input, bits (M, ceil(N/64)) of z + pack_bias < 0, and, with
// mean_r > 0, the group means (M, N / mean_r) of z (or None).
py::tuple bgemm_pack(const Arr<uint64_t>& a, const Arr<uint64_t>& bp, int64_t N, int64_t K, const OptArr<float>& scale,
                     float scale_all, const OptArr<float>& bias, const OptArr<float>& residual,
                     const OptArr<float>& slope, const OptArr<float>& b1, const OptArr<float>& b2,
                     const OptArr<float>& post_scale, const OptArr<float>& post_bias, const OptArr<uint8_t>& nibbles,
                     const OptArr<float>& pack_bias, int64_t mean_r) {
  arg_in("n", N, 0);
  arg_in("k", K, 1);
  arg_in("mean_r", mean_r, 0, 128);
  const int64_t KW = bhv::words_for(K), NP = bhv::panels_for(N), NW = bhv::words_for(N);
  check(a, {-1, KW}, "a (M, KW)");
  check(bp, {NP, KW, bhv::kPanel}, "b panels (NP, KW, 8)");
  const int64_t M = a.shape(0);
  if (mean_r > 0 && (128 % mean_r != 0 || N % mean_r != 0))
    bad("mean_r is " + std::to_string(mean_r) + ", must divide 128 and n = " + std::to_string(N));
  const uint8_t* nib = nibbles_ptr(nibbles, N, KW);
  elements({M, N}, "output (M, n)");
  check_work({M, NP, bhv::kPanel, KW}, "bgemm_pack work (M * n * KW)");
  Epilogue e;
  fill_epilogue(e, N, scale, scale_all, bias, slope, b1, b2, post_scale, post_bias);
  fill_residual(e, residual, 1, M, N);
  Arr<uint64_t> bits = new_array<uint64_t>({M, NW});
  e.bits = bits.mutable_data();
  e.bits_ld = NW;
  e.bits_bias = opt_ptr(pack_bias, N, "pack_bias");
  py::object means = py::none();
  if (mean_r > 0) {
    Arr<float> mo = new_array<float>({M, N / mean_r});
    e.means = mo.mutable_data();
    e.mean_r = mean_r;
    e.means_ld = N / mean_r;
    means = mo;
  }
  if (M == 0 || N == 0) return py::make_tuple(bits, means);
  {
    py::gil_scoped_release nogil;
    bhv::bgemm(a.data(), M, bp.data(), 0, N, KW, K, 1, e, nib);
  }
  return py::make_tuple(bits, means);
}

// Output side of a conv along one axis: (in + 2 pad - (dil (k - 1) + 1)) / stride + 1, or invalid_argument
// when the dilated kernel does not fit the padded input. Every term is below 2^36 (arguments <= kMaxExtent,
// k <= 16), so the int64 arithmetic cannot overflow.
int64_t conv_out(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil, const char* axis) {
  const int64_t span = dil * (k - 1) + 1, padded = in + 2 * pad;
  if (padded < span)
    bad(std::string("conv output would be empty: ") + axis + " + 2 * pad = " + std::to_string(padded) +
        " < dilated kernel " + std::to_string(span));
  return (padded - span) / stride + 1;
}

// xp: (B, H, W, CW) channel-packed pixels; wp: (groups, NPg, KWc, 8); wpop: (Cout, KH*KW).
Arr<float> bconv(const Arr<uint64_t>& xp, int64_t C, const Arr<uint64_t>& wp, const Arr<int32_t>& wpop,
                 int64_t Cout, int64_t groups, int64_t kh, int64_t kw, int64_t stride, int64_t pad, int64_t dil,
                 const OptArr<float>& scale, const OptArr<float>& bias, const OptArr<float>& residual,
                 const OptArr<float>& slope, const OptArr<float>& b1, const OptArr<float>& b2,
                 const OptArr<float>& post_scale, const OptArr<float>& post_bias,
                 std::optional<Arr<float>> out, bool accumulate) {
  arg_in("c", C, 1);
  arg_in("cout", Cout, 1);
  arg_in("groups", groups, 1);
  if (C % groups || Cout % groups)
    bad("groups = " + std::to_string(groups) + " must divide c = " + std::to_string(C) + " and cout = " +
        std::to_string(Cout));
  arg_in("kh", kh, 1, 16);
  arg_in("kw", kw, 1, 16);
  if (kh * kw > 16) bad("kh * kw = " + std::to_string(kh * kw) + " taps, at most 16");
  arg_in("stride", stride, 1);
  arg_in("pad", pad, 0);
  arg_in("dil", dil, 1);
  check(xp, {-1, -1, -1, bhv::words_for(C)}, "xp (B, H, W, CW)");
  bhv::ConvGeom g{xp.shape(0), xp.shape(1), xp.shape(2), C, xp.shape(3), groups, kh, kw, stride, pad, dil, 0, 0, Cout};
  g.OH = conv_out(g.H, kh, stride, pad, dil, "H");
  g.OW = conv_out(g.W, kw, stride, pad, dil, "W");
  const int64_t M = elements({g.B, g.OH, g.OW}, "conv output rows (B * OH * OW)");
  const int64_t n_out = elements({M, Cout}, "conv output (B * OH * OW, cout)");
  // word offsets of the taps inside the input (im2col_bits): dil * (k - 1) rows of W pixels of CW words
  check_work({dil * (kh + kw), g.W + 1, g.CW}, "conv input offsets (dil * taps * W * CW)");
  const int64_t KWc = bhv::words_for(kh * kw * (C / groups));
  check(wp, {groups, bhv::panels_for(Cout / groups), KWc, bhv::kPanel}, "weight panels (groups, NPg, KWc, 8)");
  check(wpop, {Cout, kh * kw}, "wpop (Cout, taps)");
  check_work({M, Cout, KWc}, "bconv work (rows * cout * KWc)");
  Epilogue e;
  fill_epilogue(e, Cout, scale, 1.0f, bias, slope, b1, b2, post_scale, post_bias);
  fill_residual(e, residual, 1, M, Cout);
  Arr<float> o = output(out, {g.B, g.OH * g.OW, Cout}, accumulate);
  if (n_out == 0) return o;
  e.out = o.mutable_data();
  e.out_ld = Cout;
  e.accumulate = accumulate;
  {
    py::gil_scoped_release nogil;
    bhv::bconv(xp.data(), g, wp.data(), wpop.data(), e);
  }
  return o;
}

Arr<float> masked_av(const Arr<uint64_t>& masks, const Arr<uint64_t>& vp, const Arr<float>& w, int64_t S, int64_t D) {
  arg_in("s", S, 0);
  arg_in("d", D, 0);
  const int64_t SW = bhv::words_for(S), NP = bhv::panels_for(D);
  check(masks, {-1, -1, S, SW}, "masks (G, R, S, SW)");
  const int64_t G = masks.shape(0), R = masks.shape(1);
  check(vp, {G, NP, SW, bhv::kPanel}, "v panels (G, ceil(D/8), SW, 8)");
  check(w, {G, R}, "w (G, R)");
  elements({G, S, D}, "output (G, S, D)");
  elements({R, S, NP, bhv::kPanel}, "popcounts per batch (R * S * D)");
  check_work({G, R, S, NP, bhv::kPanel, SW}, "masked_av work (G * R * S * D * SW)");
  Arr<float> out = new_array<float>({G, S, D});
  if (out.size() == 0) return out;
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    bhv::masked_av(masks.data(), vp.data(), w.data(), G, R, S, D, o);
  }
  return out;
}

Arr<float> group_mean(const Arr<float>& x, int64_t r) {
  arg_in("r", r, 1);
  if (x.ndim() < 1) bad("x: need at least 1 dim");
  check_extents(x, "x");
  const int64_t rc = x.shape(x.ndim() - 1), M = rc ? x.size() / rc : 0;
  if (rc % r) bad("x: last dim " + std::to_string(rc) + " must be a multiple of r = " + std::to_string(r));
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  shape.back() = rc / r;
  Arr<float> out = new_array<float>(shape);
  if (M == 0) return out;
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    bhv::group_mean(x.data(), M, rc / r, r, o);
  }
  return out;
}

void shift_add(Arr<float> out, const Arr<float>& x, const std::vector<int64_t>& kernels, const Arr<float>& ls) {
  check(x, {-1, -1, -1, -1}, "x (B, H, W, C)");
  const int64_t B = x.shape(0), H = x.shape(1), W = x.shape(2), C = x.shape(3);
  const int64_t nk = static_cast<int64_t>(kernels.size());
  check(out, {B, H, W, C}, "out (B, H, W, C)");
  check(ls, {mul(3, nk, "3 * len(kernels)"), 2, C}, "ls (3 * len(kernels), 2, C)");
  for (int64_t k : kernels)  // the kernels read at most 2 neighbours on each side (float_ops.inc)
    if (k != 3 && k != 5) bad("kernels: each must be 3 or 5 (the MLP's shift branches), got " + std::to_string(k));
  if (C % 4) bad("x: C = " + std::to_string(C) + " must be a multiple of 4");
  if (x.size() == 0) return;
  check_work({x.size(), 8, nk}, "shift_add work");
  const std::vector<int> ks(kernels.begin(), kernels.end());
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    bhv::shift_add(o, x.data(), B, H, W, C, ks.data(), nk, ls.data());
  }
}

Arr<uint64_t> lsq_masks(const Arr<float>& attn, const Arr<float>& a, const Arr<float>& z) {
  check(attn, {-1, -1, -1}, "attn (G, L, L)");
  const int64_t G = attn.shape(0), L = attn.shape(1);
  check(attn, {G, L, L}, "attn (G, L, L)");
  check(a, {G}, "a (G,)");
  check(z, {G}, "z (G,)");
  elements({G, 3, L, bhv::words_for(L)}, "masks (G, 3, L, ceil(L/64))");
  check_work({G, L, L}, "lsq_masks work");
  Arr<uint64_t> out({G, int64_t(3), L, bhv::words_for(L)});
  if (out.size() == 0) return out;
  uint64_t* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    bhv::lsq_masks(attn.data(), a.data(), z.data(), G, L, o);
  }
  return out;
}

// PReLU's backward and its column sums (engine.h): g, t (M, C), a (C,); out, optional, receives gx and may
// be g itself. Returns (gx, ga, sum_gx, sum_g).
py::tuple rprelu_backward(const Arr<float>& g, const Arr<float>& t, const Arr<float>& a, std::optional<Arr<float>> out) {
  check(g, {-1, -1}, "g (M, C)");
  const int64_t M = g.shape(0), C = g.shape(1);
  check(t, {M, C}, "t (M, C)");
  check(a, {C}, "a (C,)");
  elements({M, C}, "g (M, C)");
  Arr<float> gx = out ? *out : new_array<float>({M, C});
  if (out) {
    check(gx, {M, C}, "out (M, C)");
    if (!gx.writeable()) bad("out: the array is read-only");
  }
  Arr<float> ga = new_array<float>({C}), sx = new_array<float>({C}), sg = new_array<float>({C});
  if (M > 0 && C > 0) {
    float* o = gx.mutable_data();
    float *pa = ga.mutable_data(), *px = sx.mutable_data(), *pg = sg.mutable_data();
    py::gil_scoped_release nogil;
    bhv::rprelu_backward(g.data(), t.data(), a.data(), M, C, o, pa, px, pg);
  } else if (C > 0) {
    std::fill_n(ga.mutable_data(), C, 0.0f), std::fill_n(sx.mutable_data(), C, 0.0f), std::fill_n(sg.mutable_data(), C, 0.0f);
  }
  return py::make_tuple(gx, ga, sx, sg);
}

void set_num_threads(int64_t n) { bhv::set_num_threads(static_cast<int>(arg_in("num_threads", n, 1, 4096))); }

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "bhvit packed engine kernels (bit conventions: csrc/bitpack.h, docs/packed-format.md)";
  m.def("available_isas", &bhv::available_isas);
  m.def("current_isa", &bhv::current_isa);
  m.def("set_isa", &bhv::set_isa, py::arg("name"));
  m.def("get_num_threads", &bhv::get_num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("pack_rows", &pack_rows, py::arg("x"), py::arg("bias") = py::none());
  m.def("to_panels", &to_panels, py::arg("rows"));
  m.def("pack_cols_panels", &pack_cols_panels, py::arg("x"), py::arg("bias") = py::none());
  m.def("pack_nonzero", &pack_nonzero, py::arg("m"));
  m.def("popcount_gemm", &popcount_gemm, py::arg("a"), py::arg("bp"), py::arg("n"), py::arg("op_and") = false);
  m.def("bgemm", &bgemm, py::arg("a"), py::arg("bp"), py::arg("n"), py::arg("k"), py::arg("scale") = py::none(),
        py::arg("scale_all") = 1.0f, py::arg("bias") = py::none(), py::arg("residual") = py::none(),
        py::arg("slope") = py::none(), py::arg("b1") = py::none(), py::arg("b2") = py::none(),
        py::arg("post_scale") = py::none(), py::arg("post_bias") = py::none(), py::arg("out").noconvert() = py::none(),
        py::arg("accumulate") = false, py::arg("nibbles") = py::none());
  m.def("bgemm_pack", &bgemm_pack, py::arg("a"), py::arg("bp"), py::arg("n"), py::arg("k"),
        py::arg("scale") = py::none(), py::arg("scale_all") = 1.0f, py::arg("bias") = py::none(),
        py::arg("residual") = py::none(), py::arg("slope") = py::none(), py::arg("b1") = py::none(),
        py::arg("b2") = py::none(), py::arg("post_scale") = py::none(), py::arg("post_bias") = py::none(),
        py::arg("nibbles") = py::none(), py::arg("pack_bias") = py::none(), py::arg("mean_r") = 0);
  m.def("to_nibbles", &to_nibbles, py::arg("bp"));
  m.def("nibbles_pay", &bhv::nibbles_pay, py::arg("n"), py::arg("kw"));
  m.def("set_buffer_cache_mb", &set_buffer_cache_mb, py::arg("mb"));
  m.def("buffer_cache_mb", &buffer_cache_mb);
  m.def("bconv", &bconv, py::arg("xp"), py::arg("c"), py::arg("wp"), py::arg("wpop"), py::arg("cout"),
        py::arg("groups"), py::arg("kh"), py::arg("kw"), py::arg("stride"), py::arg("pad"), py::arg("dil"),
        py::arg("scale") = py::none(), py::arg("bias") = py::none(), py::arg("residual") = py::none(),
        py::arg("slope") = py::none(), py::arg("b1") = py::none(), py::arg("b2") = py::none(),
        py::arg("post_scale") = py::none(), py::arg("post_bias") = py::none(), py::arg("out").noconvert() = py::none(),
        py::arg("accumulate") = false);
  m.def("lsq_masks", &lsq_masks, py::arg("attn"), py::arg("a"), py::arg("z"));
  m.def("group_mean", &group_mean, py::arg("x"), py::arg("r"));
  m.def("shift_add", &shift_add, py::arg("out").noconvert(), py::arg("x"), py::arg("kernels"), py::arg("ls"));
  m.def("rprelu_backward", &rprelu_backward, py::arg("g"), py::arg("t"), py::arg("a"),
        py::arg("out").noconvert() = py::none());
  m.def("masked_av", &masked_av, py::arg("masks"), py::arg("vp"), py::arg("w"), py::arg("s"), py::arg("d"));
}
