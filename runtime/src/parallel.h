// Threading of the runtime's own loops: OpenMP over independent tasks (rows, pixels, windows x heads) with
// the engine's thread count (bhvit_set_num_threads), serial below a little work, where waking a second
// thread costs more than it saves.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace bhr {

constexpr int64_t kMinParallelWork = 1 << 15;  // ~ element operations; a parallel region costs ~2-5 us

// f(task) for task in [0, n), statically scheduled like the engine's drivers (csrc/engine.cpp): a thread
// keeps the same share of rows from op to op, so their data stays in its core's cache.
template <class F>
void parallel_for(int64_t n, int64_t work, F&& f) {
  const int nt = static_cast<int>(std::min<int64_t>(bhv::get_num_threads(), n));
#ifdef _OPENMP
  if (nt > 1 && work >= kMinParallelWork) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t t = 0; t < n; ++t) f(t);
    return;
  }
#endif
  (void)work;
  for (int64_t t = 0; t < n; ++t) f(t);
}

// A per-thread scratch vector of at least n elements (grown, never shrunk).
template <class T, int Tag>
T* scratch(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

}  // namespace bhr
