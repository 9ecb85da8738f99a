// Program reading and validation (loader.h) and the top level of a load: metadata (§2), the program (§4),
// preprocessing and labels, then the buffer plan.
#include "loader.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>

#include "kernels.h"
#include "ops.h"

namespace bhr {

// ---- Fields -------------------------------------------------------------------------------------
Fields::Fields(Json obj, std::string path) : obj_(obj), path_(std::move(path)) {
  if (!obj.is(Json::Kind::Object)) bad_file(path_ + ": expected a JSON object, got " + json_kind_name(obj.kind()));
}

void Fields::error(const std::string& key, const std::string& msg) const {
  bad_file(path_ + " field '" + key + "': " + msg);
}

std::optional<Json> Fields::opt(const std::string& key) {
  used_.insert(key);
  const std::optional<Json> v = obj_.find(key);
  return v && !v->is(Json::Kind::Null) ? v : std::nullopt;
}

Json Fields::req(const std::string& key) {
  const std::optional<Json> v = opt(key);
  if (!v) error(key, "missing");
  return *v;
}

int64_t Fields::integer(const std::string& key, int64_t lo, int64_t hi) {
  const Json v = req(key);
  const std::string range = std::to_string(lo) + ".." + (hi == INT64_MAX ? std::string("") : std::to_string(hi));
  if (!v.is(Json::Kind::Number) || std::floor(v.number()) != v.number())
    error(key, "expected an integer in " + range + ", got " + json_kind_name(v.kind()));
  const double x = v.number();
  if (x < static_cast<double>(lo) || x > static_cast<double>(std::min<int64_t>(hi, int64_t(1) << 53)))
    error(key, "expected an integer in " + range + ", got " + std::to_string(x));
  return static_cast<int64_t>(x);
}

double Fields::number(const std::string& key) {
  const Json v = req(key);
  if (!v.is(Json::Kind::Number)) error(key, std::string("expected a number, got ") + json_kind_name(v.kind()));
  return v.number();
}

bool Fields::boolean(const std::string& key, bool absent) {
  const std::optional<Json> v = opt(key);
  if (!v) return absent;
  if (!v->is(Json::Kind::Bool)) error(key, std::string("expected true or false, got ") + json_kind_name(v->kind()));
  return v->boolean();
}

std::string Fields::str(const std::string& key) {
  const Json v = req(key);
  if (!v.is(Json::Kind::String)) error(key, std::string("expected a string, got ") + json_kind_name(v.kind()));
  return std::string(v.text());
}

std::vector<int64_t> Fields::int_list(const std::string& key, size_t min_len, size_t max_len, int64_t lo,
                                      int64_t hi) {
  const Json v = req(key);
  if (!v.is(Json::Kind::Array) || v.size() < min_len || v.size() > max_len)
    error(key, "expected a list of " + std::to_string(min_len) +
                   (min_len == max_len ? "" : ".." + std::to_string(max_len)) + " integers");
  std::vector<int64_t> out;
  for (Json e : v.items()) {
    const double x = e.is(Json::Kind::Number) ? e.number() : 0.5;
    if (std::floor(x) != x || x < static_cast<double>(lo) || x > static_cast<double>(hi))
      error(key, "expected integers in " + std::to_string(lo) + ".." + std::to_string(hi));
    out.push_back(static_cast<int64_t>(x));
  }
  return out;
}

Fields Fields::object(const std::string& key) { return Fields(req(key), path_ + "." + key); }

void Fields::finish() const {
  for (auto [key, value] : obj_.members())
    if (!used_.count(std::string(key))) bad_file(path_ + ": unknown field '" + std::string(key) + "'");
}

// ---- Loader: tensors ----------------------------------------------------------------------------
Loader::Loader(const SafeTensors& st, Model& model, const Limits& limits)
    : st_(st), model_(model), limits_(limits) {}

std::string Loader::tensor_name(Fields& f, const std::string& key) {
  const Json v = f.req(key);
  if (!v.is(Json::Kind::String)) f.error(key, "expected a tensor name (a string)");
  return std::string(v.text());
}

const TensorView& Loader::tensor(Fields& f, const std::string& key, DType dtype) {
  const std::string name = tensor_name(f, key);
  const TensorView* t = st_.find(name);
  if (!t) f.error(key, "tensor '" + name + "' is not in the file");
  if (t->dtype != dtype) f.error(key, "tensor '" + name + "' must be " + (dtype == DType::F32 ? "F32" : "U64"));
  return *t;
}

void* Loader::reserve_weights(const std::string& tensor, Layout layout, int64_t a, int64_t b, int64_t count,
                              size_t size) {
  const uint64_t bytes = sat_mul(static_cast<uint64_t>(std::max<int64_t>(count, 1)), size);
  const uint64_t cap = sat_add(sat_mul(kWeightFactor, st_.data_bytes()), kWeightSlack);
  if (sat_add(model_.weights.bytes(), bytes) > cap)
    bad_file("op " + std::to_string(op_) + ": tensor '" + tensor + "' in one more layout would bring the weights to " +
             std::to_string(sat_add(model_.weights.bytes(), bytes)) + " bytes in memory, over " +
             std::to_string(kWeightFactor) + " x the file's " + std::to_string(st_.data_bytes()) +
             " bytes of tensor data + 1 MiB (§7: tensors used in too many different shapes)");
  return model_.weights.add(tensor, layout, a, b, static_cast<size_t>(bytes));
}

// Tensors are used in place when their bytes are aligned for their type (safetensors writers align them;
// the buffer is 64-byte aligned); otherwise copied once.
const float* Loader::f32_any(Fields& f, const std::string& key, size_t rank, std::vector<int64_t>* shape,
                             bool optional) {
  if (optional && !f.has(key)) return nullptr;
  const TensorView& t = tensor(f, key, DType::F32);
  const std::string name = tensor_name(f, key);
  if (t.shape.size() != rank)
    f.error(key, "tensor '" + name + "' has shape " + shape_str(t.shape) + ", expected " + std::to_string(rank) +
                     " dims");
  if (shape) *shape = t.shape;
  static const float kEmpty = 0.0f;  // a present tensor is never a null pointer (null means absent)
  if (t.bytes == 0) return &kEmpty;
  if (reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0) return reinterpret_cast<const float*>(t.data);
  return converted<float>(name, Layout::Aligned, 0, 0, t.numel(), [&](float* out) { std::memcpy(out, t.data, t.bytes); });
}

const float* Loader::f32(Fields& f, const std::string& key, const std::vector<int64_t>& shape, bool optional) {
  std::vector<int64_t> got;
  const float* p = f32_any(f, key, shape.size(), &got, optional);
  if (p && got != shape)
    f.error(key, "tensor '" + tensor_name(f, key) + "' has shape " + shape_str(got) + ", expected " + shape_str(shape));
  return p;
}

BinaryWeight Loader::bits(Fields& f, const std::string& key, int64_t rows, int64_t k) {
  const TensorView& t = tensor(f, key, DType::U64);
  BinaryWeight w;
  w.tensor = tensor_name(f, key);
  w.n = rows, w.kw = (k + 63) / 64;
  const std::vector<int64_t> want{rows, w.kw};
  if (t.shape != want)
    f.error(key, "tensor '" + w.tensor + "' has shape " + shape_str(t.shape) + ", expected " + shape_str(want));
  if (reinterpret_cast<uintptr_t>(t.data) % alignof(uint64_t) == 0)
    w.rows = reinterpret_cast<const uint64_t*>(t.data);
  else
    w.rows = converted<uint64_t>(w.tensor, Layout::Aligned, 0, 0, rows * w.kw,
                                 [&](uint64_t* out) { std::memcpy(out, t.data, t.bytes); });
  // the padding bits k ... 64 KW - 1 of every row are 0: checked on the OR of all last words, made once
  auto it = tail_bits_.find(w.tensor);
  if (it == tail_bits_.end()) {
    uint64_t tail = 0;
    for (int64_t r = 0; r < rows; ++r) tail |= w.rows[r * w.kw + w.kw - 1];
    it = tail_bits_.emplace(w.tensor, tail).first;
  }
  const uint64_t pad = k % 64 ? ~((uint64_t(1) << (k % 64)) - 1) : 0;
  if (it->second & pad) {
    int64_t r = 0;
    while (!(w.rows[r * w.kw + w.kw - 1] & pad)) ++r;
    f.error(key, "row " + std::to_string(r) + " has padding bits set (bits " + std::to_string(k) + ".." +
                     std::to_string(64 * w.kw - 1) + " must be 0, §3)");
  }
  return w;
}

const uint64_t* Loader::panels(const BinaryWeight& w, int64_t groups) {
  const int64_t ng = w.n / groups;
  return converted<uint64_t>(w.tensor, Layout::Panels, groups, 0, groups * bhv::panels_for(ng) * w.kw * bhv::kPanel,
                             [&](uint64_t* out) { bhv::to_panels(w.rows, groups, ng, w.kw, out); });
}

const uint8_t* Loader::nibbles(const BinaryWeight& w) {
  if (!bhv::nibbles_pay(w.n, w.kw)) return nullptr;
  const uint64_t* p = panels(w, 1);
  const int64_t np = bhv::panels_for(w.n);
  return converted<uint8_t>(w.tensor, Layout::Nibbles, 0, 0, bhv::quads_for(np * bhv::kPanel) * w.kw * 16 * bhv::kQuad,
                            [&](uint8_t* out) { bhv::to_nibbles(p, np, w.kw, out); });
}

namespace {
int64_t popcount_range(const uint64_t* row, int64_t b0, int64_t b1) {
  int64_t n = 0;
  for (int64_t b = b0; b < b1; ++b) n += (row[b >> 6] >> (b & 63)) & 1;
  return n;
}
}  // namespace

const int32_t* Loader::tap_popcounts(const BinaryWeight& w, int64_t taps, int64_t cg) {
  return converted<int32_t>(w.tensor, Layout::TapPopcounts, taps, cg, w.n * taps, [&](int32_t* out) {
    for (int64_t o = 0; o < w.n; ++o)
      for (int64_t t = 0; t < taps; ++t)
        out[o * taps + t] = static_cast<int32_t>(popcount_range(w.rows + o * w.kw, t * cg, (t + 1) * cg));
  });
}

// ---- Loader: cost -------------------------------------------------------------------------------
void Loader::charge(const Fields& f, uint64_t binary_macs, uint64_t float_macs) {
  Cost& c = model_.cost;
  c.binary_macs = sat_add(c.binary_macs, binary_macs);
  c.float_macs = sat_add(c.float_macs, float_macs);
  const auto over = [&](uint64_t have, uint64_t limit, const char* what, const char* field) {
    if (have > limit)
      fail(f.path() + ": the ops up to this one need " + std::to_string(have) + " " + what +
           " per image, over the limit of " + std::to_string(limit) + "; to run this model, raise the limit " +
           field + " (bhvit_load_ex in C, limits= in Python)");
  };
  over(c.binary_macs, limits_.binary_macs, "binary multiply-accumulates", "binary_macs");
  over(c.float_macs, limits_.float_macs, "float multiply-accumulates", "float_macs");
}

// ---- Loader: registers --------------------------------------------------------------------------
namespace {
bool valid_name(const std::string& s) {
  if (s.empty() || s.size() > 32 || !(s[0] >= 'a' && s[0] <= 'z')) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; });
}

std::string reg_name(Fields& f, const std::string& key) {
  const Json v = f.req(key);
  if (!v.is(Json::Kind::String)) f.error(key, "expected a register name (a string)");
  const std::string name(v.text());
  if (!valid_name(name)) f.error(key, "register name '" + name + "' does not match [a-z][a-z0-9_]{0,31}");
  return name;
}
}  // namespace

std::string describe(const RegShape& s) {
  const char* k = s.kind == RegKind::Bits ? "bits" : s.kind == RegKind::Float ? "float" : "NCHW input";
  if (s.kind == RegKind::Nchw)
    return std::string(k) + " (" + std::to_string(s.c) + ", " + std::to_string(s.h) + ", " + std::to_string(s.w) + ")";
  return std::string(k) + " (" + std::to_string(s.h) + ", " + std::to_string(s.w) + ", " + std::to_string(s.c) + ")";
}

void Loader::set_input(const RegShape& s) {
  model_.values.push_back(Value{s, -1, -1, -1});
  model_.input_value = 0;
  name_value("input", 0);
}

// names_[name] = v, keeping named_bytes_ the sum over names_ (the §7 limit on all registers together).
void Loader::name_value(const std::string& name, int v) {
  auto it = names_.find(name);
  if (it != names_.end()) named_bytes_ -= model_.values[static_cast<size_t>(it->second)].shape.bytes();
  names_[name] = v;
  named_bytes_ += model_.values[static_cast<size_t>(v)].shape.bytes();
}

int Loader::read(Fields& f, const std::string& key, RegKind kind, const RegShape* want) {
  const std::string name = reg_name(f, key);
  const auto it = names_.find(name);
  if (it == names_.end()) f.error(key, "register '" + name + "' is not defined by an earlier op");
  Value& v = model_.values[static_cast<size_t>(it->second)];
  if (v.shape.kind != kind || (want && !(v.shape == *want))) {
    RegShape w = want ? *want : v.shape;
    w.kind = kind;
    f.error(key, "register '" + name + "' holds " + describe(v.shape) + ", expected " +
                     (want ? describe(w) : std::string(kind == RegKind::Bits ? "bits" : "a float map")));
  }
  v.last = std::max(v.last, op_);
  reads_.insert(name);
  return it->second;
}

int Loader::define(Fields& f, const std::string& key, const RegShape& shape, int in_place) {
  const std::string name = reg_name(f, key);
  if (shape.h < 1 || shape.w < 1 || shape.c < 1)
    f.error(key, "the op would produce an empty register " + describe(shape));
  if (shape.h > kMaxRegElems || shape.w > kMaxRegElems || shape.c > kMaxRegElems ||
      shape.h * shape.w > kMaxRegElems || shape.elems() > kMaxRegElems)
    f.error(key, "register '" + name + "' " + describe(shape) + " exceeds 2^30 elements per image (§7)");
  if (in_place >= 0) {  // affine with out == in: the same value, overwritten (the one op allowed to)
    name_value(name, in_place);
    return in_place;
  }
  if (writes_.count(name)) f.error(key, "register '" + name + "' is written twice by this op");
  writes_.insert(name);
  model_.values.push_back(Value{shape, op_, op_, -1});
  const int id = static_cast<int>(model_.values.size()) - 1;
  name_value(name, id);
  return id;
}

int Loader::accumulate(Fields& f, const std::string& key, const RegShape& shape) {
  const std::string name = reg_name(f, key);
  const auto it = names_.find(name);
  if (it == names_.end()) f.error(key, "accumulate: register '" + name + "' is not defined by an earlier op");
  Value& v = model_.values[static_cast<size_t>(it->second)];
  if (!(v.shape == shape))
    f.error(key, "accumulate: register '" + name + "' holds " + describe(v.shape) + ", the op produces " +
                     describe(shape));
  v.last = std::max(v.last, op_);
  if (writes_.count(name)) f.error(key, "register '" + name + "' is written twice by this op");
  writes_.insert(name);
  return it->second;
}

int Loader::temp(int64_t bytes) {
  RegShape s{RegKind::Float, 1, 1, (bytes + 3) / 4};
  model_.values.push_back(Value{s, op_, op_, -1});
  return static_cast<int>(model_.values.size()) - 1;
}

void Loader::begin_op(int index) {
  op_ = index;
  reads_.clear();
  writes_.clear();
}

void Loader::end_op(const Fields& f) {
  for (const std::string& w : writes_)
    if (reads_.count(w)) bad_file(f.path() + ": the op writes register '" + w + "', which it also reads (§4)");
  if (named_bytes_ > kMaxLiveBytes)  // each value < 2^33 bytes, at most 10^5 ops: no overflow
    bad_file(f.path() + ": the registers defined so far need " + std::to_string(named_bytes_) +
             " bytes per image, over the limit of 2^32 (§7)");
}

int Loader::output(const std::string& name, int64_t classes) {
  const auto it = names_.find(name);
  const RegShape want{RegKind::Float, 1, 1, classes};
  if (it == names_.end()) bad_file("program output: register '" + name + "' is never defined");
  Value& v = model_.values[static_cast<size_t>(it->second)];
  if (!(v.shape == want))
    bad_file("program output: register '" + name + "' holds " + describe(v.shape) + ", expected " + describe(want) +
             " (num_classes " + std::to_string(classes) + ")");
  v.last = INT_MAX;
  return it->second;
}

// Slots by first fit in op order: each op's new values take free slots (the smallest that fits, else the
// largest free one, grown; the lowest-numbered among equals), then the values whose last use is this op free
// theirs. Inputs of an op are live during it, so no output or temporary shares a buffer with an input. The
// free slots are kept ordered by (capacity, index): O(log slots) per value.
void Loader::plan_slots() {
  std::vector<int64_t>& cap = model_.slot_bytes;
  std::set<std::pair<int64_t, int>> free;
  const int n_ops = static_cast<int>(model_.ops.size());
  std::vector<std::vector<int>> born(static_cast<size_t>(n_ops)), dies(static_cast<size_t>(n_ops));
  for (size_t v = 1; v < model_.values.size(); ++v) {
    born[static_cast<size_t>(model_.values[v].def)].push_back(static_cast<int>(v));
    if (model_.values[v].last < n_ops) dies[static_cast<size_t>(model_.values[v].last)].push_back(static_cast<int>(v));
  }
  for (int i = 0; i < n_ops; ++i) {
    for (int v : born[static_cast<size_t>(i)]) {
      const int64_t need = (model_.values[static_cast<size_t>(v)].shape.bytes() + 63) / 64 * 64;
      int slot = -1;
      auto fit = free.lower_bound({need, -1});
      if (fit == free.end() && !free.empty()) fit = free.lower_bound({std::prev(free.end())->first, -1});
      if (fit != free.end()) {
        slot = fit->second;
        free.erase(fit);
      } else {
        cap.push_back(0);
        slot = static_cast<int>(cap.size()) - 1;
      }
      cap[static_cast<size_t>(slot)] = std::max(cap[static_cast<size_t>(slot)], need);
      model_.values[static_cast<size_t>(v)].slot = slot;
    }
    for (int v : dies[static_cast<size_t>(i)]) {
      const int slot = model_.values[static_cast<size_t>(v)].slot;
      free.emplace(cap[static_cast<size_t>(slot)], slot);
    }
  }
  uint64_t total = 0;
  for (int64_t c : cap) total = sat_add(total, static_cast<uint64_t>(c));
  if (total > limits_.activation_bytes)
    fail("the program needs " + std::to_string(total) + " bytes of activation buffers per image, over the limit of " +
         std::to_string(limits_.activation_bytes) +
         "; to run this model, raise the limit activation_bytes (bhvit_load_ex in C, limits= in Python)");
  model_.bytes_per_image = static_cast<int64_t>(total);  // < the limit, which is < 2^63 (checked by the C API)
  model_.cost.activation_bytes = total;
}

// ---- shared field groups -------------------------------------------------------------------------
RPReLUParams parse_rprelu(Loader& L, Fields& f, const std::string& key, int64_t c, bool optional) {
  RPReLUParams p;
  if (optional && !f.has(key)) return p;
  Fields r = f.object(key);
  p.slope = L.f32(r, "slope", {c});
  p.b1 = L.f32(r, "b1", {c});
  p.b2 = L.f32(r, "b2", {c});
  r.finish();
  return p;
}

PostParams parse_post(Loader& L, Fields& f, const std::string& key, int64_t c) {
  PostParams p;
  if (!f.has(key)) return p;
  Fields r = f.object(key);
  p.scale = L.f32(r, "scale", {c});
  p.bias = L.f32(r, "bias", {c});
  r.finish();
  return p;
}

// ---- the whole file -------------------------------------------------------------------------------
namespace {

const std::string& meta_str(const std::map<std::string, std::string>& meta, const std::string& key) {
  const auto it = meta.find(key);
  if (it == meta.end()) bad_file("metadata: '" + key + "' is missing (§2)");
  return it->second;
}

void read_preprocess(Model& m, const std::string& text) {
  const JsonDoc doc = parse_json(text.data(), text.size(), "metadata 'preprocess'");
  Fields f(doc.root(), "metadata 'preprocess'");
  for (const char* key : {"mean", "std"}) {
    const Json v = f.req(key);
    if (!v.is(Json::Kind::Array) || static_cast<int64_t>(v.size()) != m.in_c)
      f.error(key, "expected " + std::to_string(m.in_c) + " numbers (one per input channel)");
    std::vector<float>& out = std::string(key) == "mean" ? m.mean : m.std;
    for (Json e : v.items()) {
      if (!e.is(Json::Kind::Number)) f.error(key, "expected numbers");
      const float x = static_cast<float>(e.number());
      if (!std::isfinite(x) || (std::string(key) == "std" && !(x > 0.0f)))
        f.error(key, "values must be finite (std > 0)");
      out.push_back(x);
    }
  }
  m.resize = f.integer("resize", 1, 16384);
  f.finish();
}

void read_labels(Model& m, const std::string& text) {
  const JsonDoc doc = parse_json(text.data(), text.size(), "metadata 'labels'");
  const Json j = doc.root();
  if (!j.is(Json::Kind::Array) || static_cast<int64_t>(j.size()) != m.num_classes)
    bad_file("metadata 'labels': expected an array of " + std::to_string(m.num_classes) + " strings (num_classes)");
  for (Json e : j.items()) {
    if (!e.is(Json::Kind::String)) bad_file("metadata 'labels': every label must be a string");
    m.labels.emplace_back(e.text());
  }
}

void read_program(Model& m, Loader& L, const std::string& text) {
  const JsonDoc doc = parse_json(text.data(), text.size(), "metadata 'program'");
  Fields f(doc.root(), "program");
  const std::vector<int64_t> in = f.int_list("input", 3, 3, 1, 8192);
  if (in[0] > 64) f.error("input", "channels must be in 1..64 (§7)");
  m.in_c = in[0], m.in_h = in[1], m.in_w = in[2];
  m.num_classes = f.integer("num_classes", 1, kMaxRegElems);
  const std::string out_name = f.str("output");
  L.set_input(RegShape{RegKind::Nchw, m.in_h, m.in_w, m.in_c});
  const Json ops = f.req("ops");
  if (!ops.is(Json::Kind::Array)) f.error("ops", "expected an array of ops");
  if (ops.size() == 0 || static_cast<int64_t>(ops.size()) > kMaxOps)
    f.error("ops", "expected 1.." + std::to_string(kMaxOps) + " ops, got " + std::to_string(ops.size()));
  f.finish();
  int i = 0;
  for (Json op : ops.items()) m.ops.push_back(parse_op(op, i++, L));
  m.output_value = L.output(out_name, m.num_classes);
}

}  // namespace

std::unique_ptr<Model> load_model(SafeTensors& st, const Limits& limits) {
  auto m = std::make_unique<Model>();
  m->metadata = std::move(st.metadata());
  m->file = st.bytes();
  const std::string& format = meta_str(m->metadata, "format");
  if (format != "bhvit-packed")
    bad_file("metadata 'format' is '" + format + "', not 'bhvit-packed': not a packed BHViT file");
  const std::string& version = meta_str(m->metadata, "format_version");
  if (version == "1")
    fail("the file is a version-1 packed file, which this bhvit no longer reads; re-pack it from its checkpoint "
         "with `bhvit pack CHECKPOINT -o NEW.bhvp`");
  if (version != "2") bad_file("metadata 'format_version' is '" + version + "'; this runtime reads version 2");
  Loader L(st, *m, limits);
  read_program(*m, L, meta_str(m->metadata, "program"));
  read_preprocess(*m, meta_str(m->metadata, "preprocess"));
  const auto labels = m->metadata.find("labels");
  if (labels != m->metadata.end()) read_labels(*m, labels->second);
  fuse_ops(m->ops, m->values);
  L.plan_slots();
  m->cost.weight_bytes = sat_add(st.data_bytes(), m->weights.bytes());
  return m;
}

}  // namespace bhr
