// The interpreter: buffers for a batch size, then each op in order.
#include "model.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "error.h"

namespace bhr {

const char* const kProfNames[kNumProf] = {
    "patch_conv", "affine", "sign_pack", "avg_pool", "bconv", "blinear", "shift_add",
    "attention.pool_norm", "attention.qkv", "attention.core", "attention.merge", "mean_tokens", "linear"};

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

AlignedBuffer::~AlignedBuffer() { std::free(p); }

void AlignedBuffer::allocate(size_t bytes) {
  std::free(p);
  p = nullptr;
  if (bytes == 0) return;
  if (posix_memalign(&p, 64, bytes) != 0) {
    p = nullptr;
    throw std::bad_alloc();
  }
}

// Physical memory of the machine in bytes (INT64_MAX where the OS does not say): no batch may ask for more
// activation memory than this, since with overcommit an allocation can succeed and fail only when touched.
static int64_t physical_memory_bytes() {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  int64_t bytes = 0;
  if (pages > 0 && page > 0 && !__builtin_mul_overflow(static_cast<int64_t>(pages), static_cast<int64_t>(page), &bytes))
    return bytes;
#endif
  return INT64_MAX;
}

// A free workspace for `batch` images: the smallest idle one that holds them, else the largest idle one (grown
// by the caller), else a new one.
std::unique_ptr<Workspace> Model::take_workspace(int64_t batch) {
  const auto better = [batch](int64_t b, int64_t best) {  // is an idle workspace of b images the better pick?
    const bool fits = b >= batch, best_fits = best >= batch;
    if (fits != best_fits) return fits;
    return fits ? b < best : b > best;
  };
  std::lock_guard<std::mutex> lock(mu_);
  if (idle_.empty()) return std::make_unique<Workspace>();
  size_t best = 0;
  for (size_t i = 1; i < idle_.size(); ++i)
    if (better(idle_[i]->batch, idle_[best]->batch)) best = i;
  std::unique_ptr<Workspace> ws = std::move(idle_[best]);
  idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(best));
  return ws;
}

void Model::give_back(std::unique_ptr<Workspace> ws) {
  std::lock_guard<std::mutex> lock(mu_);
  idle_.push_back(std::move(ws));
}

void Model::run(const float* images, int64_t batch, float* logits, Profile* prof) {
  int64_t need = 0;
  if (__builtin_mul_overflow(bytes_per_image, batch, &need))
    fail("batch " + std::to_string(batch) + " needs more than 2^63 bytes of activations; run a smaller batch");
  const int64_t memory = physical_memory_bytes();
  if (need > memory)
    fail("batch " + std::to_string(batch) + " needs " + std::to_string(need >> 20) + " MiB of activations, more than "
         "this machine's " + std::to_string(memory >> 20) + " MiB of memory; run a smaller batch");
  std::unique_ptr<Workspace> ws = take_workspace(batch);
  if (batch > ws->batch) {  // grow once; smaller batches reuse the buffers
    ws->batch = 0;
    ws->slots.clear();
    try {
      ws->slots.resize(slot_bytes.size());
      for (size_t s = 0; s < ws->slots.size(); ++s) ws->slots[s].allocate(static_cast<size_t>(slot_bytes[s] * batch));
    } catch (const std::bad_alloc&) {
      fail("not enough memory for batch " + std::to_string(batch) + " (" + std::to_string(need >> 20) +
           " MiB of activations); run a smaller batch");
    }
    ws->batch = batch;
  }
  Exec x;
  x.batch = batch;
  x.prof = prof;
  x.ptr.resize(values.size());
  for (size_t v = 0; v < values.size(); ++v)
    x.ptr[v] = values[v].slot < 0 ? const_cast<float*>(images) : ws->slots[static_cast<size_t>(values[v].slot)].p;
  if (prof) *prof = Profile{true, {}};
  for (const auto& op : ops) {
    const int kind = op->prof_kind();
    if (kind >= 0) {
      ProfScope scope(prof, kind);
      op->run(x);
    } else {
      op->run(x);
    }
  }
  std::memcpy(logits, x.f(output_value), sizeof(float) * static_cast<size_t>(batch * num_classes));
  give_back(std::move(ws));
}

}  // namespace bhr
