// The one parallel loop of the kernels and the runtime's ops: n independent tasks on the process's thread
// pool (parallel.cpp), serial below min_work, where waking a second thread costs more than it saves.
//
// Schedule: task t belongs to participant p = t * parts / n (contiguous ranges, as a static schedule), so
// on an idle machine each thread takes the same rows from op to op and mostly reads what its own core
// wrote in the op before (measured on bhvit_small at 224, AVX2 Xeon, 2 threads against 1: static 1.70x at
// batch 1 where a shared counter gave 1.62x). A participant that has finished its range takes the rest of
// another's, so a thread that the OS has descheduled (another process busy on its core) no longer holds
// the others up: they do its work.
//
// Any thread may call parallel_tasks at any time, also several at once (one model run from many threads):
// the pool's workers help whichever calls are open. A call made from inside a task runs serially.
//
// A build for a target without threads (WebAssembly without emscripten's pthreads: a browser page's one
// thread) has no pool: BHVIT_THREADS is 0, the thread count is always 1 and every call runs its tasks in
// order on the calling thread.
#pragma once
#include <cstdint>
#include <type_traits>

#if defined(__EMSCRIPTEN__) && !defined(__EMSCRIPTEN_PTHREADS__)
#define BHVIT_THREADS 0
#else
#define BHVIT_THREADS 1
#endif

namespace bhv {

// Threads a parallel call may use (the caller counts as one). The default is the number of CPUs this
// process may run on (its affinity mask, capped by a cgroup CPU quota), or BHVIT_NUM_THREADS when set;
// always 1 without BHVIT_THREADS.
int get_num_threads();
void set_num_threads(int n);  // n >= 1 (kept at 1 without BHVIT_THREADS); throws std::invalid_argument otherwise
int default_num_threads();

namespace detail {
using TaskFn = void (*)(void* ctx, int64_t task);
bool in_task();  // whether this thread is running a task (then a nested call runs serially)
// Runs fn(ctx, t) for t in [0, n) on up to `threads` participants, the caller included; returns when all
// tasks are done.
void run_parallel(int64_t n, int threads, TaskFn fn, void* ctx);
// CPUs of this process's cgroup CPU quota, rounded up (0: none), read below the given roots
// ("/sys/fs/cgroup", "/proc/self"; others in the self-test).
int cgroup_cpus(const char* cgroup_root, const char* proc_self);
}  // namespace detail

template <class F>
void parallel_tasks(int64_t n, int64_t work, int64_t min_work, F&& f) {
  const int threads = get_num_threads();
  if (n <= 1 || threads <= 1 || work < min_work || detail::in_task()) {
    for (int64_t t = 0; t < n; ++t) f(t);
    return;
  }
  using Fn = std::remove_reference_t<F>;
  detail::run_parallel(n, threads, [](void* ctx, int64_t t) { (*static_cast<Fn*>(ctx))(t); },
                       const_cast<void*>(static_cast<const void*>(&f)));
}

}  // namespace bhv
