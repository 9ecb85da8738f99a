// Threading of the runtime's own loops: independent tasks (rows, pixels, windows x heads) on the process's
// thread pool (runtime/kernels/parallel.h), serial below a little work, where waking a second thread costs
// more than it saves.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace bhr {

constexpr int64_t kMinParallelWork = 1 << 15;  // ~ element operations; a parallel region costs ~2-5 us

// f(task) for task in [0, n), on the engine's threads and schedule (runtime/kernels/parallel.h).
template <class F>
void parallel_for(int64_t n, int64_t work, F&& f) {
  bhv::parallel_tasks(n, work, kMinParallelWork, f);
}

// A per-thread scratch vector of at least n elements (grown, never shrunk).
template <class T, int Tag>
T* scratch(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

}  // namespace bhr
