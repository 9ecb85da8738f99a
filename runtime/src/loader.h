// Reading and validating the program (docs/packed-format.md §4–§7): field access with messages that name
// the op and the field, tensors by name with dtype and shape checks, registers with kind/shape inference
// and the lifetimes the buffer plan needs. Every op's parse function (ops_*.cpp) goes through these.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
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

// One JSON object being read: keys are looked up by name and recorded, so that finish() can refuse keys
// the format does not define (a typo in a packer must not silently drop a field).
class Fields {
 public:
  Fields(const Json& obj, std::string path);
  const std::string& path() const { return path_; }
  [[noreturn]] void error(const std::string& key, const std::string& msg) const;

  const Json* opt(const std::string& key);  // null when absent or JSON null
  const Json& req(const std::string& key);
  bool has(const std::string& key) { return opt(key) != nullptr; }
  int64_t integer(const std::string& key, int64_t lo, int64_t hi);
  double number(const std::string& key);  // any finite number
  bool boolean(const std::string& key, bool absent);
  std::string str(const std::string& key);
  std::vector<int64_t> int_list(const std::string& key, size_t min_len, size_t max_len, int64_t lo, int64_t hi);
  Fields object(const std::string& key);
  void finish() const;

 private:
  const Json& obj_;
  std::string path_;
  std::set<std::string> used_;
};

class Loader {
 public:
  Loader(const SafeTensors& st, Model& model);

  // ---- tensors --------------------------------------------------------------------------------
  // An F32 tensor field of exactly `shape`; null when optional and absent.
  const float* f32(Fields& f, const std::string& key, const std::vector<int64_t>& shape, bool optional = false);
  // An F32 tensor of rank `rank` and any dims (written to *shape).
  const float* f32_any(Fields& f, const std::string& key, size_t rank, std::vector<int64_t>* shape,
                       bool optional = false);
  // Binary weight rows: U64 [rows, ceil(k/64)] with padding bits (k ... 64*KW-1) zero.
  std::vector<uint64_t> bits(Fields& f, const std::string& key, int64_t rows, int64_t k);

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
  std::map<std::string, int> names_;  // register name -> current value
  int op_ = -1;
  std::set<std::string> reads_, writes_;
  const TensorView& tensor(Fields& f, const std::string& key, DType dtype);
};

// Parses op `index` (its "op" kind decides the fields) into an executable op; ops_*.cpp.
std::unique_ptr<Op> parse_op(const Json& j, int index, Loader& L);

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
