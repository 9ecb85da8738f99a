// The thread pool behind parallel_tasks (parallel.h).
//
// A call publishes a job of n tasks split into `parts` contiguous ranges, one per participant: the caller is
// participant 0, worker w is participant w + 1. Every participant first takes tasks from the front of its own
// range, then from the fronts of the others' (one atomic increment per task), so when the OS deschedules a
// worker the others finish its range. The caller then waits only for tasks already started.
//
// Waiting: an idle worker spins for a short while (the next op of a forward usually follows within
// microseconds), then sleeps on a condition variable; a caller whose last tasks run elsewhere spins briefly,
// then sleeps too. So a busy neighbour process gets the cores back instead of our threads spinning on them.
#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace bhv {
namespace {

thread_local bool t_in_task = false;  // whether this thread is running a task of the pool

#if BHVIT_THREADS
// How long an idle worker (and a caller waiting for the last tasks) polls before it sleeps. A forward's ops
// follow each other within a few microseconds, so a worker that polls catches the next one without the
// 10-50 us of a wake-up; past this it would only burn a core another process may want.
constexpr auto kSpin = std::chrono::microseconds(100);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Spins until done() or kSpin has passed; true if done() came true.
template <class Done>
bool spin_until(Done&& done) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (done()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() >= until) return false;
  }
}

struct alignas(64) Range {  // one participant's tasks [next, end); others take from its front too
  std::atomic<int64_t> next{0};
  int64_t end = 0;
};

struct Job {
  int64_t n = 0;
  int parts = 0;
  detail::TaskFn fn = nullptr;
  void* ctx = nullptr;
  std::unique_ptr<Range[]> ranges;
  std::atomic<int64_t> done{0};
  std::atomic<bool> open{true};  // some task may still be unclaimed
  bool caller_sleeps = false;    // (under the mutex)
  std::atomic<bool> failed{false};
  std::exception_ptr error;      // the first exception a task threw, rethrown in the caller
};

void run_one(Job& job, int64_t t) {
  t_in_task = true;
  try {
    job.fn(job.ctx, t);
  } catch (...) {
    if (!job.failed.exchange(true)) job.error = std::current_exception();
  }
  t_in_task = false;
}

// Never destroyed (see pool()): its workers live until the process ends.
class Pool {
 public:
  // The job is shared with the workers that joined it: the caller returns once every task is done, without
  // waiting for them to leave it (a worker descheduled by another process between its last task and its
  // exit cost the caller a scheduler slice per op: busy-machine latency 1.41x that of one thread, measured).
  // No task can start after the last one is done, so a late worker touches only the job, never fn or ctx.
  void run(int64_t n, int threads, detail::TaskFn fn, void* ctx) {
    const auto job = std::make_shared<Job>();
    job->n = n;
    job->parts = static_cast<int>(std::min<int64_t>(threads, n));
    job->fn = fn, job->ctx = ctx;
    job->ranges.reset(new Range[static_cast<size_t>(job->parts)]);
    for (int p = 0; p < job->parts; ++p) {
      job->ranges[p].next.store(n * p / job->parts, std::memory_order_relaxed);
      job->ranges[p].end = n * (p + 1) / job->parts;
    }
    publish(job);
    work(*job, 0);
    wait_done(*job);
    retire(*job);
    if (job->error) std::rethrow_exception(job->error);
  }

  // After fork() only the calling thread exists in the child: forget the parent's workers (their stacks are
  // gone) and start with fresh locks, so the child can run (and start its own workers) again.
  void reset_after_fork() {
    workers_.clear();  // detached: the child has no such threads
    new (&mu_) std::mutex();
    new (&work_cv_) std::condition_variable();
    new (&done_cv_) std::condition_variable();
    jobs_.clear();
    open_jobs_.store(0);
    sleepers_ = 0;
  }

 private:
  std::mutex mu_;
  std::condition_variable work_cv_;  // workers wait for jobs
  std::condition_variable done_cv_;  // callers wait for their last tasks and for workers to leave
  std::vector<std::shared_ptr<Job>> jobs_;  // published, not yet retired
  std::atomic<int> open_jobs_{0};    // published jobs whose `open` is still set
  int sleepers_ = 0;
  std::vector<std::thread> workers_;

  void ensure_workers(int n) {  // under mu_
    while (static_cast<int>(workers_.size()) < n) {
      const int id = static_cast<int>(workers_.size());
      workers_.emplace_back([this, id] { worker(id); });
      workers_.back().detach();  // idle workers sleep; they end with the process
    }
  }

  void publish(const std::shared_ptr<Job>& job) {
    std::lock_guard<std::mutex> lock(mu_);
    ensure_workers(job->parts - 1);
    jobs_.push_back(job);
    open_jobs_.fetch_add(1, std::memory_order_release);
    if (sleepers_) work_cv_.notify_all();
  }

  static bool claim(Range& r, int64_t& t) {
    if (r.next.load(std::memory_order_relaxed) >= r.end) return false;
    t = r.next.fetch_add(1, std::memory_order_relaxed);
    return t < r.end;
  }

  // Participant p: its own range, then the others' in turn, until no task is left to claim.
  void work(Job& job, int p) {
    int64_t t = 0;
    for (int i = 0; i < job.parts; ++i) {
      Range& r = job.ranges[(p + i) % job.parts];
      while (claim(r, t)) {
        run_one(job, t);
        if (job.done.fetch_add(1, std::memory_order_acq_rel) + 1 == job.n) wake_caller(job);
      }
    }
    close(job);
  }

  void close(Job& job) {
    if (job.open.exchange(false, std::memory_order_acq_rel)) open_jobs_.fetch_sub(1, std::memory_order_release);
  }

  void wake_caller(Job& job) {
    std::lock_guard<std::mutex> lock(mu_);
    if (job.caller_sleeps) done_cv_.notify_all();
  }

  void wait_done(Job& job) {
    const auto finished = [&] { return job.done.load(std::memory_order_acquire) == job.n; };
    if (spin_until(finished)) return;
    std::unique_lock<std::mutex> lock(mu_);
    job.caller_sleeps = true;
    done_cv_.wait(lock, finished);
    job.caller_sleeps = false;
  }

  // Unpublishes the job; a worker still inside it holds its own reference.
  void retire(Job& job) {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.erase(std::find_if(jobs_.begin(), jobs_.end(), [&](const std::shared_ptr<Job>& j) { return j.get() == &job; }));
  }

  // A published job that worker `id` may help with (under mu_): open, and with a range for it or for
  // stealing only when every range has an owner thread.
  std::shared_ptr<Job> find_job(int id) {
    for (const std::shared_ptr<Job>& j : jobs_)
      if (j->open.load(std::memory_order_acquire) && id + 1 < j->parts) return j;
    return nullptr;
  }

  void worker(int id) {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      std::shared_ptr<Job> job = find_job(id);
      if (!job) {
        lock.unlock();
        spin_until([&] { return open_jobs_.load(std::memory_order_acquire) > 0; });
        lock.lock();
        job = find_job(id);
        if (!job) {
          ++sleepers_;
          work_cv_.wait(lock, [&] { return find_job(id) != nullptr; });
          --sleepers_;
          continue;
        }
      }
      lock.unlock();
      work(*job, id + 1);
      job.reset();  // the last reference may be this one: freed outside the lock
      lock.lock();
    }
  }
};

// Allocated once and never freed: worker threads must not outlive their pool, and joining them at exit could
// wait on a run still going in another thread.
Pool& pool() {
  static Pool* p = [] {
    auto* made = new Pool();
#if defined(__linux__)
    pthread_atfork(nullptr, nullptr, [] { pool().reset_after_fork(); });
#endif
    return made;
  }();
  return *p;
}
#endif  // BHVIT_THREADS

#if defined(__linux__)
// The first two whitespace-separated numbers of a file ("max" or an unreadable file: false).
bool read_pair(const std::string& path, double& a, double& b) {
  std::ifstream f(path);
  std::string first;
  if (!(f >> first >> b) || first == "max") return false;
  char* end = nullptr;
  a = std::strtod(first.c_str(), &end);
  return end != first.c_str();
}

bool read_v1(const std::string& dir, double& quota, double& period) {
  std::ifstream q(dir + "/cpu.cfs_quota_us"), p(dir + "/cpu.cfs_period_us");
  return static_cast<bool>(q >> quota && p >> period);
}
#endif

}  // namespace

namespace detail {

// The smallest CPU quota (quota / period) along this process's cgroup path and its parents: a quota set
// higher up limits the cgroup too. /proc/self/cgroup names the path: "0::/path" (v2: cpu.max "quota period"
// or "max period") or "N:cpu,cpuacct:/path" (v1: cpu.cfs_quota_us, -1 for none, and cpu.cfs_period_us under
// the cpu controller's mount). Rounded up to whole CPUs (1.5 CPUs: 2 threads, as Go and the JVM count); 0
// when there is none. bhvit/train/threads.py reads the same files for torch's threads.
int cgroup_cpus(const char* cgroup_root, const char* proc_self) {
#if defined(__linux__)
  std::ifstream cgroup(std::string(proc_self) + "/cgroup");
  const std::string root(cgroup_root);
  double best = -1;
  auto consider = [&](double quota, double period) {
    if (quota > 0 && period > 0 && (best < 0 || quota / period < best)) best = quota / period;
  };
  std::string line;
  while (std::getline(cgroup, line)) {
    const size_t c1 = line.find(':'), c2 = c1 == std::string::npos ? c1 : line.find(':', c1 + 1);
    if (c2 == std::string::npos) continue;
    const std::string hierarchy = line.substr(0, c1), controllers = line.substr(c1 + 1, c2 - c1 - 1);
    const bool v2 = hierarchy == "0" && controllers.empty();
    const bool v1 = ("," + controllers + ",").find(",cpu,") != std::string::npos;
    if (!v2 && !v1) continue;
    // "/a/b" without "." and ".." parts (a cgroup outside this namespace shows as "/../.."): never leave the mount
    std::string path, part;
    std::istringstream parts(line.substr(c2 + 1));
    while (std::getline(parts, part, '/'))
      if (!part.empty() && part != "." && part != "..") path += "/" + part;
    while (true) {  // path, then each parent, up to the mount itself
      double quota = 0, period = 0;
      if (v2) {
        if (read_pair(root + path + "/cpu.max", quota, period)) consider(quota, period);
      } else {
        for (const std::string mount : {controllers, std::string("cpu"), std::string("cpu,cpuacct")})
          if (read_v1(root + "/" + mount + path, quota, period)) consider(quota, period);
      }
      const size_t slash = path.find_last_of('/');
      if (path.empty() || slash == std::string::npos) break;
      path.erase(slash);
    }
  }
  if (best > 0) return std::max(1, static_cast<int>(std::ceil(best)));
#else
  (void)cgroup_root;
  (void)proc_self;
#endif
  return 0;
}

}  // namespace detail

namespace {

int affinity_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

std::atomic<int>& threads() {
  static std::atomic<int> n{default_num_threads()};
  return n;
}

}  // namespace

int default_num_threads() {
  if (!BHVIT_THREADS) return 1;
  if (const char* env = std::getenv("BHVIT_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return std::min(n, 1024);
  }
  const int cpus = affinity_cpus(), quota = detail::cgroup_cpus("/sys/fs/cgroup", "/proc/self");
  return quota > 0 ? std::min(cpus, quota) : cpus;
}

int get_num_threads() { return threads().load(std::memory_order_relaxed); }

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("num_threads must be >= 1");
  threads().store(BHVIT_THREADS ? std::min(n, 1024) : 1, std::memory_order_relaxed);
}

namespace detail {
bool in_task() { return t_in_task; }
void run_parallel(int64_t n, int threads, TaskFn fn, void* ctx) {
#if BHVIT_THREADS
  pool().run(n, threads, fn, ctx);
#else
  (void)threads;  // get_num_threads() is 1, so parallel_tasks never gets here; serial all the same
  for (int64_t t = 0; t < n; ++t) fn(ctx, t);
#endif
}
}  // namespace detail

}  // namespace bhv
