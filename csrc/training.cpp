// bhvit._C: the training-time kernel of bhvit.layers (pybind11 + numpy buffers; no torch headers), kept out of
// the inference library libbhvit_runtime. Its loops run on the kernels' thread pool (runtime/kernels/parallel.h,
// compiled into this module: its own pool, sized per call by the caller, torch's thread count).
//
//   rprelu_backward(g, t, a, out=None, threads=1) -> (gx, ga, sum_gx, sum_g)
//
// PReLU's backward with the column sums its callers need, in one pass over (M, C) maps:
//   gx = t > 0 ? g : a g,   ga[c] = sum_m (t > 0 ? 0 : t g),   sum_gx[c] = sum_m gx,   sum_g[c] = sum_m g
// (the element values of torch's _prelu_kernel_backward). The sums run over fixed blocks of 64 rows, each summed
// in order, then the blocks in order: the same bits for any thread count. out (optional, may be g) receives gx.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.h"

namespace py = pybind11;

namespace {

// Eight floats as one value (GCC/Clang vector extensions; two SSE registers at the x86-64 baseline, NEON on
// aarch64): the select below must stay a blend, since a branch on the sign of t mispredicts half the time
// (measured on a (25088, 512) map, 1 thread: 58 ms for the branchy scalar loop GCC made of the plain
// version, 28 ms blended; torch's _prelu_kernel_backward and three sums 126 ms). The helpers are always
// inlined, so the ABI note about 32-byte vectors without AVX (-Wpsabi) concerns no real call.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));

inline __attribute__((always_inline)) vf8 load8(const float* p) {
  vf8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline __attribute__((always_inline)) void store8(float* p, const vf8& v) { std::memcpy(p, &v, sizeof v); }

// One row: d = g or a g, and the row's terms added to the block's column sums. gx may be g (each element is
// read before it is written).
void prelu_backward_row(const float* g, const float* t, const float* a, int64_t C, float* gx, float* pa, float* px,
                        float* pg) {
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    const vf8 gv = load8(g + c), tv = load8(t + c);
    const vi8 pos = tv > 0.0f;  // all ones where t > 0; the selects are bitwise (GCC turns ?: into branches)
    const vf8 ag = load8(a + c) * gv, tg = tv * gv;
    const vf8 d = (vf8)(((vi8)gv & pos) | ((vi8)ag & ~pos));
    const vf8 w = (vf8)((vi8)tg & ~pos);
    store8(gx + c, d);
    store8(pa + c, load8(pa + c) + w);
    store8(px + c, load8(px + c) + d);
    store8(pg + c, load8(pg + c) + gv);
  }
  for (; c < C; ++c) {
    const float gv = g[c], tv = t[c];
    const bool pos = tv > 0.0f;
    const float d = pos ? gv : a[c] * gv;
    gx[c] = d;
    pa[c] = pa[c] + (pos ? 0.0f : tv * gv);
    px[c] = px[c] + d;
    pg[c] = pg[c] + gv;
  }
}

void rprelu_backward_maps(const float* g, const float* t, const float* a, int64_t M, int64_t C, float* gx,
                          float* ga, float* sum_gx, float* sum_g) {
  constexpr int64_t kRows = 64;  // rows per block: the unit of the fixed summation order
  const int64_t nb = (M + kRows - 1) / kRows;
  std::vector<float> part(static_cast<size_t>(nb * 3 * C), 0.0f);  // per block: ga, sum_gx, sum_g
  bhv::parallel_tasks(nb, M * C * 4, int64_t(1) << 16, [&](int64_t blk) {
    float* pa = part.data() + blk * 3 * C;
    for (int64_t m = blk * kRows; m < std::min(M, (blk + 1) * kRows); ++m)
      prelu_backward_row(g + m * C, t + m * C, a, C, gx + m * C, pa, pa + C, pa + 2 * C);
  });
  std::fill_n(ga, C, 0.0f), std::fill_n(sum_gx, C, 0.0f), std::fill_n(sum_g, C, 0.0f);
  for (int64_t blk = 0; blk < nb; ++blk) {
    const float* pa = part.data() + blk * 3 * C;
    for (int64_t c = 0; c < C; ++c) {
      ga[c] = ga[c] + pa[c];
      sum_gx[c] = sum_gx[c] + pa[C + c];
      sum_g[c] = sum_g[c] + pa[2 * C + c];
    }
  }
}

template <class T>
using Arr = py::array_t<T, py::array::c_style>;

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument(msg); }

void check(const Arr<float>& x, std::initializer_list<int64_t> shape, const char* what) {
  if (x.ndim() != static_cast<py::ssize_t>(shape.size())) bad(std::string(what) + ": wrong number of dims");
  int i = 0;
  for (int64_t s : shape) {
    if (s >= 0 && x.shape(i) != s) bad(std::string(what) + ": dim " + std::to_string(i) + " does not match");
    ++i;
  }
}

py::tuple rprelu_backward(const Arr<float>& g, const Arr<float>& t, const Arr<float>& a, std::optional<Arr<float>> out,
                          int threads) {
  check(g, {-1, -1}, "g (M, C)");
  const int64_t M = g.shape(0), C = g.shape(1);
  check(t, {M, C}, "t (M, C)");
  check(a, {C}, "a (C,)");
  if (threads < 1) bad("threads must be >= 1");
  Arr<float> gx = out ? *out : Arr<float>({M, C});
  if (out) {
    check(gx, {M, C}, "out (M, C)");
    if (!gx.writeable()) bad("out: the array is read-only");
  }
  Arr<float> ga({C}), sx({C}), sg({C});
  float* o = gx.mutable_data();
  float *pa = ga.mutable_data(), *px = sx.mutable_data(), *pg = sg.mutable_data();
  {
    py::gil_scoped_release nogil;
    bhv::set_num_threads(threads);  // this module's pool, not the runtime's
    rprelu_backward_maps(g.data(), t.data(), a.data(), M, C, o, pa, px, pg);
  }
  return py::make_tuple(gx, ga, sx, sg);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "bhvit's training-time kernels (bhvit.layers); the packed model runs in libbhvit_runtime";
  m.def("rprelu_backward", &rprelu_backward, py::arg("g"), py::arg("t"), py::arg("a"),
        py::arg("out").noconvert() = py::none(), py::arg("threads") = 1);
}
