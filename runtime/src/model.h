// The loaded model: a validated program of typed ops over activation registers (docs/packed-format.md §4),
// the tensors they use (read in place from the file's bytes, or converted once per tensor and layout), what
// the program costs per image, and the register buffers of the runs.
//
// Registers are planned at load: every definition of a register is a *value* with a per-image shape; values
// whose lifetimes do not overlap share a buffer *slot*, so a run allocates only the slots (batch x the
// largest value each slot holds) and reuses them across runs.
//
// Concurrency: after loading, the model is read-only; each run takes a *workspace* (the slots and the run's
// profile) that no other run uses at the same time, from a free list it returns it to. So any number of
// threads may run one model at once, holding a lock only to take and return a workspace.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace bhr {

class FileBytes;

// What a load accepts (bhvit_limits): the JSON header's size and, per image, the activation buffers and the
// multiply-accumulates of the program. Checked while the program is read, so an expensive file is refused
// at the first op that goes over a limit.
struct Limits {
  uint64_t header_bytes = 0, activation_bytes = 0, binary_macs = 0, float_macs = 0;
};
Limits default_limits();

// What a loaded program costs (bhvit_cost): activation buffers per image (the planned slots), bytes held
// for weights (the file's data buffer, read in place, plus the converted layouts), and multiply-accumulates
// per image: binary (1-bit products of bconv, blinear and attention) and float (everything else, one per
// element for element-wise work); docs/packed-format.md §7.
struct Cost {
  uint64_t activation_bytes = 0, weight_bytes = 0, binary_macs = 0, float_macs = 0;
};

// a + b and a * b, saturating at 2^64 - 1 (costs of a hostile file can exceed 64 bits before a limit stops them)
inline uint64_t sat_add(uint64_t a, uint64_t b) {
  uint64_t r = 0;
  return __builtin_add_overflow(a, b, &r) ? UINT64_MAX : r;
}
inline uint64_t sat_mul(uint64_t a, uint64_t b) {
  uint64_t r = 0;
  return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

enum class RegKind { Nchw, Float, Bits };  // the input images (B, C, H, W); channels-last float; packed signs

struct RegShape {
  RegKind kind = RegKind::Float;
  int64_t h = 0, w = 0, c = 0;
  int64_t words() const { return (c + 63) / 64; }
  int64_t pixels() const { return h * w; }
  // elements per image: floats, or words for bits (c channels packed in words() per pixel)
  int64_t elems() const { return kind == RegKind::Bits ? h * w * words() : h * w * c; }
  int64_t bytes() const { return elems() * (kind == RegKind::Bits ? 8 : 4); }
  bool operator==(const RegShape& o) const { return kind == o.kind && h == o.h && w == o.w && c == o.c; }
};

std::string describe(const RegShape& s);  // "float (56, 56, 64)"

// Profiled kinds of work (bhvit_profile_kinds); window_attention splits into its phases.
enum ProfKind {
  kProfPatchConv, kProfAffine, kProfSignPack, kProfAvgPool, kProfBConv, kProfBLinear, kProfShiftAdd,
  kProfAttnPool, kProfAttnQkv, kProfAttnCore, kProfAttnMerge, kProfMeanTokens, kProfLinear, kNumProf
};
extern const char* const kProfNames[kNumProf];

struct Profile {
  bool on = false;
  double seconds[kNumProf] = {};
};

double now_seconds();

// Adds the time between construction and destruction to prof.seconds[kind] when profiling is on.
class ProfScope {
 public:
  ProfScope(Profile* prof, int kind)
      : prof_(prof && prof->on ? prof : nullptr), kind_(kind), t0_(prof_ ? now_seconds() : 0) {}
  ~ProfScope() {
    if (prof_) prof_->seconds[kind_] += now_seconds() - t0_;
  }
  ProfScope(const ProfScope&) = delete;
  ProfScope& operator=(const ProfScope&) = delete;

 private:
  Profile* prof_;
  int kind_;
  double t0_;
};

// What an op sees at run time: the batch and each value's buffer, (batch, h, w, c) contiguous.
struct Exec {
  int64_t batch = 0;
  std::vector<void*> ptr;
  Profile* prof = nullptr;
  float* f(int v) const { return static_cast<float*>(ptr[static_cast<size_t>(v)]); }
  uint64_t* u(int v) const { return static_cast<uint64_t*>(ptr[static_cast<size_t>(v)]); }
};

class Op {
 public:
  virtual ~Op() = default;
  virtual void run(const Exec& x) const = 0;
  // The kind the interpreter times this op under; -1 when the op times its phases itself.
  virtual int prof_kind() const = 0;
};

struct Value {
  RegShape shape;
  int def = -1;   // op index that defines it (-1: the input)
  int last = -1;  // last op index that uses it
  int slot = -1;  // buffer slot (-1: the caller's images)
};

struct AlignedBuffer {
  void* p = nullptr;
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept : p(o.p) { o.p = nullptr; }
  ~AlignedBuffer();
  void allocate(size_t bytes);  // throws Error when memory runs out
};

// The layouts a tensor is converted to at load (loader.cpp): each made once per tensor and parameters and
// shared by every op that names it.
enum class Layout {
  Aligned,     // an F32 or U64 tensor whose bytes in the file are not aligned for its type: a copy
  Panels,      // binary rows -> 8-row panels, per group count (bitpack.h convention 7)
  Nibbles,     // panels -> the nibble layout of small-K weights (convention 8)
  TapPopcounts,  // per row and tap of a convolution, the popcount of its weight bits
  Transposed,  // a patch_conv weight (Cout, K) -> (K, Cout)
  OneMinus,    // 1 - x of an F32 vector (attention's pool and mix weights)
};

class WeightStore {
 public:
  // The buffer of (tensor, layout, a, b), or null when not made yet.
  const void* find(const std::string& tensor, Layout layout, int64_t a, int64_t b) const;
  // A new buffer of `bytes` (64-byte aligned) for (tensor, layout, a, b).
  void* add(const std::string& tensor, Layout layout, int64_t a, int64_t b, size_t bytes);
  uint64_t bytes() const { return bytes_; }

 private:
  struct Key {
    std::string tensor;
    Layout layout;
    int64_t a, b;
    bool operator<(const Key& o) const;
  };
  std::map<Key, AlignedBuffer> blobs_;
  uint64_t bytes_ = 0;
};

// The buffers of one run at a time: the slots for up to `batch` images.
struct Workspace {
  int64_t batch = 0;
  std::vector<AlignedBuffer> slots;
};

struct Model {
  std::map<std::string, std::string> metadata;
  int64_t in_c = 0, in_h = 0, in_w = 0, num_classes = 0;
  std::vector<float> mean, std;
  int64_t resize = 0;
  std::vector<std::string> labels;

  std::vector<std::unique_ptr<Op>> ops;
  std::vector<Value> values;
  int input_value = 0, output_value = -1;
  std::vector<int64_t> slot_bytes;  // per image, multiples of 64
  int64_t bytes_per_image = 0;      // sum of slot_bytes
  bool kinds_used[kNumProf] = {};
  Cost cost;

  std::shared_ptr<const FileBytes> file;  // the tensors the ops read in place
  WeightStore weights;                     // the converted layouts the ops point into

  // Runs a batch; safe from any number of threads at once (each run on its own workspace). With prof, the
  // seconds of this run per kind of work are written to prof->seconds. Refuses non-finite pixels (naming the
  // first: image, channel, y, x) before any work and non-finite logits after it (naming image and class).
  void run(const float* images, int64_t batch, float* logits, Profile* prof = nullptr);

 private:
  std::mutex mu_;  // guards idle_
  std::vector<std::unique_ptr<Workspace>> idle_;

  std::unique_ptr<Workspace> take_workspace(int64_t batch);
  void give_back(std::unique_ptr<Workspace> ws);
};

// Loads and validates a whole file (safetensors bytes) into a model within the limits; throws Error /
// FileError. The model keeps the file's bytes and takes its metadata.
class SafeTensors;
std::unique_ptr<Model> load_model(SafeTensors& st, const Limits& limits);

}  // namespace bhr
