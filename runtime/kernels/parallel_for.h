// The one parallel loop of the engine's drivers (drivers.cpp) and the runtime's ops (runtime/src/parallel.h):
// OpenMP over n independent tasks on the engine's thread count, serial below min_work (where waking a
// second thread costs more than it saves).
//
// Static schedule: each thread takes one contiguous range of tasks, and since the ops of a forward split
// their rows alike, a thread mostly reads rows its own core wrote in the op before (dynamic scheduling
// scattered them: measured on bhvit_small at 224, AVX2 Xeon, 2 threads against 1: batch 1 1.62x -> 1.70x,
// batch 32 1.89x -> 2.03x).
#pragma once
#include <algorithm>
#include <cstdint>

namespace bhv {

int get_num_threads();  // kernels.h

template <class F>
void parallel_tasks(int64_t n, int64_t work, int64_t min_work, F&& f) {
  const int nt = static_cast<int>(std::min<int64_t>(get_num_threads(), n));
#ifdef _OPENMP
  if (nt > 1 && work >= min_work) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t t = 0; t < n; ++t) f(t);
    return;
  }
#endif
  (void)work, (void)min_work;
  for (int64_t t = 0; t < n; ++t) f(t);
}

}  // namespace bhv
