// The interpreter: buffers for a batch size, then each op in order.
#include "model.h"

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "error.h"
#include "safetensors.h"

namespace bhr {

const char* const kProfNames[kNumProf] = {
    "patch_conv", "affine", "sign_pack", "avg_pool", "bconv", "blinear", "shift_add",
    "attention.pool_norm", "attention.qkv", "attention.core", "attention.merge", "mean_tokens", "linear"};

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Defaults of bhvit_limits (docs/packed-format.md §7), from the largest real models (bhvit_tiny and
// bhvit_small, binary and some_fp, LSQ and GSB, at 448 px): headers of at most 192 KB, and per image at most
// 14.8 MB of activation buffers, 1.7e10 binary and 6.7e8 float multiply-accumulates. The defaults leave
// 87x, 72x, 11x and 15x of room; a bhvit_small image at the binary limit takes about 1 s on one core.
Limits default_limits() {
  Limits l;
  l.header_bytes = uint64_t(16) << 20;
  l.activation_bytes = uint64_t(1) << 30;
  l.binary_macs = 200000000000ull;
  l.float_macs = 10000000000ull;
  return l;
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

bool WeightStore::Key::operator<(const Key& o) const {
  if (layout != o.layout) return layout < o.layout;
  if (a != o.a) return a < o.a;
  if (b != o.b) return b < o.b;
  return tensor < o.tensor;
}

const void* WeightStore::find(const std::string& tensor, Layout layout, int64_t a, int64_t b) const {
  const auto it = blobs_.find(Key{tensor, layout, a, b});
  return it == blobs_.end() ? nullptr : it->second.p;
}

void* WeightStore::add(const std::string& tensor, Layout layout, int64_t a, int64_t b, size_t bytes) {
  AlignedBuffer& buf = blobs_[Key{tensor, layout, a, b}];
  buf.allocate(bytes);
  bytes_ += bytes;
  return buf.p;
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

namespace {

// Whether x[0, n) holds a NaN or an infinity (all exponent bits set). Branch-free, so that the compiler
// vectorises it (SSE2: and, compare, or per 4 values); measured beside a forward in docs/packed-format.md §7.
bool any_nonfinite(const float* x, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t v;
    std::memcpy(&v, x + i, sizeof v);
    bad |= static_cast<uint32_t>((v & 0x7F800000u) == 0x7F800000u);
  }
  return bad != 0;
}

int64_t first_nonfinite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return i;
  return -1;
}

std::string value_name(float v) { return std::isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf"; }

// Refuses images holding NaN or Inf, naming the first: image b, channel c, row y, column x.
void check_images(const float* images, int64_t batch, int64_t c, int64_t h, int64_t w) {
  const int64_t n = batch * c * h * w;  // < 2^31 * 2^6 * 2^26: no overflow
  if (!any_nonfinite(images, n)) return;
  const int64_t i = first_nonfinite(images, n);
  fail("image " + std::to_string(i / (c * h * w)) + " holds " + value_name(images[i]) + " at channel " +
       std::to_string(i / (h * w) % c) + ", y " + std::to_string(i / w % h) + ", x " + std::to_string(i % w) +
       " (batch index, channel, row, column); every pixel must be a finite number: check the image and its "
       "normalisation");
}

// Refuses logits holding NaN or Inf (with finite images, the model's float32 arithmetic overflowed).
void check_logits(const float* logits, int64_t batch, int64_t classes) {
  const int64_t i = first_nonfinite(logits, batch * classes);
  if (i < 0) return;
  fail("the logits of image " + std::to_string(i / classes) + " are not finite (class " + std::to_string(i % classes) +
       " is " + value_name(logits[i]) + "): the model overflows float32 on this input; the file's weights are "
       "out of range (re-create it with `bhvit pack`)");
}

}  // namespace

void Model::run(const float* images, int64_t batch, float* logits, Profile* prof) {
  int64_t need = 0;
  if (__builtin_mul_overflow(bytes_per_image, batch, &need))
    fail("batch " + std::to_string(batch) + " needs more than 2^63 bytes of activations; run a smaller batch");
  const int64_t memory = physical_memory_bytes();
  if (need > memory)
    fail("batch " + std::to_string(batch) + " needs " + std::to_string(need >> 20) + " MiB of activations, more than "
         "this machine's " + std::to_string(memory >> 20) + " MiB of memory; run a smaller batch");
  check_images(images, batch, in_c, in_h, in_w);  // after the size checks: a batch beyond memory is never read
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
  check_logits(logits, batch, num_classes);
}

}  // namespace bhr
