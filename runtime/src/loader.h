// Reading and validating the program (docs/packed-format.md §4–§7): field access with messages that name
// the op and the field, tensors by name with dtype and shape checks (used in place, or converted once per
// tensor and layout), registers with kind/shape inference and the lifetimes the buffer plan needs, and the
// program's cost against the caller's limits. Every op's parse function (ops_*.cpp) goes through these.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "error.h"
#include "json.h"
#include "model.h"
#include "safetensors.h"

namespace bhr {

constexpr int64_t kMaxOps = 100000;
constexpr int64_t kMaxRegElems = int64_t(1) << 30;    // per register and image (floats, or words)
constexpr int64_t kMaxLiveBytes = int64_t(1) << 32;   // all registers together, per image
// The converted weights may take at most this many times the file's data buffer plus kWeightSlack bytes.
// One layout of a tensor takes at most 16 times its bytes (panels of groups of 1 row: 8x; tap popcounts of
// 16 taps over 1 word: 8x); bhvit_tiny and bhvit_small take 1.0x to 1.1x. Only a tensor used in many
// geometries goes over.
constexpr uint64_t kWeightFactor = 16;
constexpr uint64_t kWeightSlack = uint64_t(1) << 20;

// One JSON object being read: keys are looked up by name and recorded, so that finish() can refuse keys
// the format does not define (a typo in a packer must not silently drop a field).
class Fields {
 public:
  Fields(Json obj, std::string path);
  const std::string& path() const { return path_; }
  [[noreturn]] void error(const std::string& key, const std::string& msg) const;

  std::optional<Json> opt(const std::string& key);  // nothing when absent or JSON null
  Json req(const std::string& key);
  bool has(const std::string& key) { return opt(key).has_value(); }
  int64_t integer(const std::string& key, int64_t lo, int64_t hi);
  double number(const std::string& key);  // any finite number
  bool boolean(const std::string& key, bool absent);
  std::string str(const std::string& key);
  std::vector<int64_t> int_list(const std::string& key, size_t min_len, size_t max_len, int64_t lo, int64_t hi);
  Fields object(const std::string& key);
  void finish() const;

 private:
  Json obj_;
  std::string path_;
  std::set<std::string> used_;
};

// A binary weight of an op: U64 rows [n, kw] of the file, checked (loader.bits).
struct BinaryWeight {
  std::string tensor;
  const uint64_t* rows = nullptr;
  int64_t n = 0, kw = 0;
};

class Loader {
 public:
  Loader(const SafeTensors& st, Model& model, const Limits& limits);

  // ---- tensors --------------------------------------------------------------------------------
  // An F32 tensor field of exactly `shape`; null when optional and absent.
  const float* f32(Fields& f, const std::string& key, const std::vector<int64_t>& shape, bool optional = false);
  // An F32 tensor of rank `rank` and any dims (written to *shape).
  const float* f32_any(Fields& f, const std::string& key, size_t rank, std::vector<int64_t>* shape,
                       bool optional = false);
  // Binary weight rows: U64 [rows, ceil(k/64)] with padding bits (k ... 64*KW-1) zero.
  BinaryWeight bits(Fields& f, const std::string& key, int64_t rows, int64_t k);
  // The layouts the kernels read, made once per tensor and parameters (kernels.h): panels of `groups`
  // groups of n/groups rows; the nibble layout of the single-group panels (null where bhv::nibbles_pay says
  // it does not pay); per row the popcount of each of `taps` taps of cg bits.
  const uint64_t* panels(const BinaryWeight& w, int64_t groups);
  const uint8_t* nibbles(const BinaryWeight& w);
  const int32_t* tap_popcounts(const BinaryWeight& w, int64_t taps, int64_t cg);
  // A buffer of `count` T derived from tensor `tensor` (layout, a, b), filled by fill(T*) the first time.
  template <class T, class Fill>
  const T* converted(const std::string& tensor, Layout layout, int64_t a, int64_t b, int64_t count, Fill&& fill) {
    if (const void* p = model_.weights.find(tensor, layout, a, b)) return static_cast<const T*>(p);
    T* out = static_cast<T*>(reserve_weights(tensor, layout, a, b, count, sizeof(T)));
    fill(out);
    return out;
  }
  // The tensor name a field holds (a string; not checked against the file).
  std::string tensor_name(Fields& f, const std::string& key);

  // ---- cost -------------------------------------------------------------------------------------
  // Adds an op's multiply-accumulates per image; refuses the program once a total is over its limit.
  void charge(const Fields& f, uint64_t binary_macs, uint64_t float_macs);

  // ---- registers ------------------------------------------------------------------------------
  // A register read by the current op: defined before, of this kind, and of shape *want when given.
  int read(Fields& f, const std::string& key, RegKind kind, const RegShape* want = nullptr);
  // Defines (or redefines) the register named by field key with this shape; in_place: the op writes its
  // input's buffer (affine with out == in).
  int define(Fields& f, const std::string& key, const RegShape& shape, int in_place = -1);
  // The existing float register an op accumulates into, of exactly this shape.
  int accumulate(Fields& f, const std::string& key, const RegShape& shape);
  // A buffer live only during the current op (bytes per image).
  int temp(int64_t bytes);
  const Value& value(int v) const { return model_.values[static_cast<size_t>(v)]; }
  // The current value of a register name, or null.
  const Value* lookup(const std::string& name) const {
    const auto it = names_.find(name);
    return it == names_.end() ? nullptr : &model_.values[static_cast<size_t>(it->second)];
  }

  // ---- program --------------------------------------------------------------------------------
  void begin_op(int index);
  void end_op(const Fields& f);  // the rule "outputs differ from inputs" and the live-bytes limit
  Model& model() { return model_; }
  int op_index() const { return op_; }
  void set_input(const RegShape& s);
  void use(int kind) { model_.kinds_used[kind] = true; }
  int output(const std::string& name, int64_t classes);
  void plan_slots();

 private:
  const SafeTensors& st_;
  Model& model_;
  Limits limits_;
  std::map<std::string, int> names_;  // register name -> current value
  int64_t named_bytes_ = 0;           // per image, of the values names_ holds
  int op_ = -1;
  std::set<std::string> reads_, writes_;
  std::map<std::string, uint64_t> tail_bits_;  // U64 tensor -> OR of its rows' last words (padding check)
  const TensorView& tensor(Fields& f, const std::string& key, DType dtype);
  void* reserve_weights(const std::string& tensor, Layout layout, int64_t a, int64_t b, int64_t count, size_t size);
  void name_value(const std::string& name, int v);
};

// The product of non-negative factors, saturating at 2^64 - 1 (costs; loader.charge).
inline uint64_t product(std::initializer_list<int64_t> factors) {
  uint64_t r = 1;
  for (int64_t x : factors) r = sat_mul(r, static_cast<uint64_t>(x));
  return r;
}

// Parses op `index` (its "op" kind decides the fields) into an executable op; ops_*.cpp.
std::unique_ptr<Op> parse_op(Json j, int index, Loader& L);

// Field groups shared by several ops.
struct RPReLUParams {
  const float* slope = nullptr;
  const float* b1 = nullptr;
  const float* b2 = nullptr;
};
struct PostParams {
  const float* scale = nullptr;
  const float* bias = nullptr;
};
RPReLUParams parse_rprelu(Loader& L, Fields& f, const std::string& key, int64_t c, bool optional);
PostParams parse_post(Loader& L, Fields& f, const std::string& key, int64_t c);

}  // namespace bhr
