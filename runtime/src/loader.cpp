// Program reading and validation (loader.h) and the top level of a load: metadata (§2), the program (§4),
// preprocessing and labels, then the buffer plan.
#include "loader.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>

#include "ops.h"

namespace bhr {

// ---- Fields -------------------------------------------------------------------------------------
Fields::Fields(const Json& obj, std::string path) : obj_(obj), path_(std::move(path)) {
  if (!obj.is(Json::Kind::Object)) bad_file(path_ + ": expected a JSON object, got " + json_kind_name(obj.kind));
}

void Fields::error(const std::string& key, const std::string& msg) const {
  bad_file(path_ + " field '" + key + "': " + msg);
}

const Json* Fields::opt(const std::string& key) {
  used_.insert(key);
  const Json* v = obj_.find(key);
  return v && !v->is(Json::Kind::Null) ? v : nullptr;
}

const Json& Fields::req(const std::string& key) {
  const Json* v = opt(key);
  if (!v) error(key, "missing");
  return *v;
}

int64_t Fields::integer(const std::string& key, int64_t lo, int64_t hi) {
  const Json& v = req(key);
  const std::string range = std::to_string(lo) + ".." + (hi == INT64_MAX ? std::string("") : std::to_string(hi));
  if (!v.is(Json::Kind::Number) || std::floor(v.number) != v.number)
    error(key, "expected an integer in " + range + ", got " + json_kind_name(v.kind));
  if (v.number < static_cast<double>(lo) || v.number > static_cast<double>(std::min<int64_t>(hi, int64_t(1) << 53)))
    error(key, "expected an integer in " + range + ", got " + std::to_string(v.number));
  return static_cast<int64_t>(v.number);
}

double Fields::number(const std::string& key) {
  const Json& v = req(key);
  if (!v.is(Json::Kind::Number)) error(key, std::string("expected a number, got ") + json_kind_name(v.kind));
  return v.number;
}

bool Fields::boolean(const std::string& key, bool absent) {
  const Json* v = opt(key);
  if (!v) return absent;
  if (!v->is(Json::Kind::Bool)) error(key, std::string("expected true or false, got ") + json_kind_name(v->kind));
  return v->boolean;
}

std::string Fields::str(const std::string& key) {
  const Json& v = req(key);
  if (!v.is(Json::Kind::String)) error(key, std::string("expected a string, got ") + json_kind_name(v.kind));
  return v.text;
}

std::vector<int64_t> Fields::int_list(const std::string& key, size_t min_len, size_t max_len, int64_t lo,
                                      int64_t hi) {
  const Json& v = req(key);
  if (!v.is(Json::Kind::Array) || v.items.size() < min_len || v.items.size() > max_len)
    error(key, "expected a list of " + std::to_string(min_len) +
                   (min_len == max_len ? "" : ".." + std::to_string(max_len)) + " integers");
  std::vector<int64_t> out;
  for (const Json& e : v.items) {
    if (!e.is(Json::Kind::Number) || std::floor(e.number) != e.number || e.number < static_cast<double>(lo) ||
        e.number > static_cast<double>(hi))
      error(key, "expected integers in " + std::to_string(lo) + ".." + std::to_string(hi));
    out.push_back(static_cast<int64_t>(e.number));
  }
  return out;
}

Fields Fields::object(const std::string& key) { return Fields(req(key), path_ + "." + key); }

void Fields::finish() const {
  for (const auto& m : obj_.members)
    if (!used_.count(m.first)) bad_file(path_ + ": unknown field '" + m.first + "'");
}

// ---- Loader: tensors ----------------------------------------------------------------------------
Loader::Loader(const SafeTensors& st, Model& model) : st_(st), model_(model) {}

const TensorView& Loader::tensor(Fields& f, const std::string& key, DType dtype) {
  const Json& v = f.req(key);
  if (!v.is(Json::Kind::String)) f.error(key, "expected a tensor name (a string)");
  const TensorView* t = st_.find(v.text);
  if (!t) f.error(key, "tensor '" + v.text + "' is not in the file");
  if (t->dtype != dtype)
    f.error(key, "tensor '" + v.text + "' must be " + (dtype == DType::F32 ? "F32" : "U64"));
  return *t;
}

const float* Loader::f32_any(Fields& f, const std::string& key, size_t rank, std::vector<int64_t>* shape,
                             bool optional) {
  if (optional && !f.has(key)) return nullptr;
  const TensorView& t = tensor(f, key, DType::F32);
  if (t.shape.size() != rank)
    f.error(key, "tensor '" + f.req(key).text + "' has shape " + shape_str(t.shape) + ", expected " +
                     std::to_string(rank) + " dims");
  if (shape) *shape = t.shape;
  const std::string& name = f.req(key).text;
  auto it = model_.floats.find(name);
  if (it == model_.floats.end()) {
    // at least one element, so that a present tensor is never a null pointer (null means absent)
    std::vector<float> data(static_cast<size_t>(std::max<int64_t>(t.numel(), 1)));
    if (t.bytes) std::memcpy(data.data(), t.data, t.bytes);  // aligned copy of the (unaligned) file bytes
    it = model_.floats.emplace(name, std::move(data)).first;
  }
  return it->second.data();
}

const float* Loader::f32(Fields& f, const std::string& key, const std::vector<int64_t>& shape, bool optional) {
  std::vector<int64_t> got;
  const float* p = f32_any(f, key, shape.size(), &got, optional);
  const bool present = !optional || f.has(key);  // p is null for a present tensor with no elements
  if (present && got != shape)
    f.error(key, "tensor '" + f.req(key).text + "' has shape " + shape_str(got) + ", expected " + shape_str(shape));
  return p;
}

std::vector<uint64_t> Loader::bits(Fields& f, const std::string& key, int64_t rows, int64_t k) {
  const TensorView& t = tensor(f, key, DType::U64);
  const int64_t kw = (k + 63) / 64;
  const std::vector<int64_t> want{rows, kw};
  if (t.shape != want)
    f.error(key, "tensor '" + f.req(key).text + "' has shape " + shape_str(t.shape) + ", expected " + shape_str(want));
  std::vector<uint64_t> out(static_cast<size_t>(rows * kw));
  if (t.bytes) std::memcpy(out.data(), t.data, t.bytes);
  const uint64_t pad = k % 64 ? ~((uint64_t(1) << (k % 64)) - 1) : 0;
  for (int64_t r = 0; r < rows && pad; ++r)
    if (out[static_cast<size_t>(r * kw + kw - 1)] & pad)
      f.error(key, "row " + std::to_string(r) + " has padding bits set (bits " + std::to_string(k) + ".." +
                       std::to_string(64 * kw - 1) + " must be 0, §3)");
  return out;
}

// ---- Loader: registers --------------------------------------------------------------------------
namespace {
bool valid_name(const std::string& s) {
  if (s.empty() || s.size() > 32 || !(s[0] >= 'a' && s[0] <= 'z')) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; });
}

std::string reg_name(Fields& f, const std::string& key) {
  const Json& v = f.req(key);
  if (!v.is(Json::Kind::String)) f.error(key, "expected a register name (a string)");
  if (!valid_name(v.text)) f.error(key, "register name '" + v.text + "' does not match [a-z][a-z0-9_]{0,31}");
  return v.text;
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
  names_["input"] = 0;
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
    names_[name] = in_place;
    return in_place;
  }
  if (writes_.count(name)) f.error(key, "register '" + name + "' is written twice by this op");
  writes_.insert(name);
  model_.values.push_back(Value{shape, op_, op_, -1});
  const int id = static_cast<int>(model_.values.size()) - 1;
  names_[name] = id;
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
  int64_t live = 0;
  for (const auto& kv : names_) live += model_.values[static_cast<size_t>(kv.second)].shape.bytes();  // each < 2^33
  if (live > kMaxLiveBytes)
    bad_file(f.path() + ": the registers defined so far need " + std::to_string(live) +
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
// largest free one, grown), then the values whose last use is this op free theirs. Inputs of an op are
// live during it, so no output or temporary shares a buffer with an input.
void Loader::plan_slots() {
  std::vector<int64_t>& cap = model_.slot_bytes;
  std::vector<bool> busy;
  const int n_ops = static_cast<int>(model_.ops.size());
  std::vector<std::vector<int>> born(static_cast<size_t>(n_ops)), dies(static_cast<size_t>(n_ops));
  for (size_t v = 1; v < model_.values.size(); ++v) {
    born[static_cast<size_t>(model_.values[v].def)].push_back(static_cast<int>(v));
    if (model_.values[v].last < n_ops) dies[static_cast<size_t>(model_.values[v].last)].push_back(static_cast<int>(v));
  }
  for (int i = 0; i < n_ops; ++i) {
    for (int v : born[static_cast<size_t>(i)]) {
      const int64_t need = (model_.values[static_cast<size_t>(v)].shape.bytes() + 63) / 64 * 64;
      int best = -1;
      for (size_t s = 0; s < cap.size(); ++s) {
        if (busy[s]) continue;
        const bool fits = cap[s] >= need, best_fits = best >= 0 && cap[static_cast<size_t>(best)] >= need;
        if (best < 0 || (fits && (!best_fits || cap[s] < cap[static_cast<size_t>(best)])) ||
            (!fits && !best_fits && cap[s] > cap[static_cast<size_t>(best)]))
          best = static_cast<int>(s);
      }
      if (best < 0) {
        cap.push_back(0);
        busy.push_back(false);
        best = static_cast<int>(cap.size()) - 1;
      }
      cap[static_cast<size_t>(best)] = std::max(cap[static_cast<size_t>(best)], need);
      busy[static_cast<size_t>(best)] = true;
      model_.values[static_cast<size_t>(v)].slot = best;
    }
    for (int v : dies[static_cast<size_t>(i)])
      busy[static_cast<size_t>(model_.values[static_cast<size_t>(v)].slot)] = false;
  }
  model_.bytes_per_image = 0;
  for (int64_t c : cap) model_.bytes_per_image = add_checked(model_.bytes_per_image, c, "register buffers");
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
  const Json j = parse_json(text.data(), text.size(), "metadata 'preprocess'");
  Fields f(j, "metadata 'preprocess'");
  for (const char* key : {"mean", "std"}) {
    const Json& v = f.req(key);
    if (!v.is(Json::Kind::Array) || static_cast<int64_t>(v.items.size()) != m.in_c)
      f.error(key, "expected " + std::to_string(m.in_c) + " numbers (one per input channel)");
    std::vector<float>& out = std::string(key) == "mean" ? m.mean : m.std;
    for (const Json& e : v.items) {
      if (!e.is(Json::Kind::Number)) f.error(key, "expected numbers");
      const float x = static_cast<float>(e.number);
      if (!std::isfinite(x) || (std::string(key) == "std" && !(x > 0.0f)))
        f.error(key, "values must be finite (std > 0)");
      out.push_back(x);
    }
  }
  m.resize = f.integer("resize", 1, 16384);
  f.finish();
}

void read_labels(Model& m, const std::string& text) {
  const Json j = parse_json(text.data(), text.size(), "metadata 'labels'");
  if (!j.is(Json::Kind::Array) || static_cast<int64_t>(j.items.size()) != m.num_classes)
    bad_file("metadata 'labels': expected an array of " + std::to_string(m.num_classes) + " strings (num_classes)");
  for (const Json& e : j.items) {
    if (!e.is(Json::Kind::String)) bad_file("metadata 'labels': every label must be a string");
    m.labels.push_back(e.text);
  }
}

void read_program(Model& m, Loader& L, const std::string& text) {
  const Json j = parse_json(text.data(), text.size(), "metadata 'program'");
  Fields f(j, "program");
  const std::vector<int64_t> in = f.int_list("input", 3, 3, 1, 8192);
  if (in[0] > 64) f.error("input", "channels must be in 1..64 (§7)");
  m.in_c = in[0], m.in_h = in[1], m.in_w = in[2];
  m.num_classes = f.integer("num_classes", 1, kMaxRegElems);
  const std::string out_name = f.str("output");
  L.set_input(RegShape{RegKind::Nchw, m.in_h, m.in_w, m.in_c});
  const Json& ops = f.req("ops");
  if (!ops.is(Json::Kind::Array)) f.error("ops", "expected an array of ops");
  if (ops.items.empty() || static_cast<int64_t>(ops.items.size()) > kMaxOps)
    f.error("ops", "expected 1.." + std::to_string(kMaxOps) + " ops, got " + std::to_string(ops.items.size()));
  f.finish();
  for (size_t i = 0; i < ops.items.size(); ++i) m.ops.push_back(parse_op(ops.items[i], static_cast<int>(i), L));
  m.output_value = L.output(out_name, m.num_classes);
}

}  // namespace

std::unique_ptr<Model> load_model(const SafeTensors& st) {
  auto m = std::make_unique<Model>();
  m->metadata = st.metadata();
  const std::string& format = meta_str(m->metadata, "format");
  if (format != "bhvit-packed")
    bad_file("metadata 'format' is '" + format + "', not 'bhvit-packed': not a packed BHViT file");
  const std::string& version = meta_str(m->metadata, "format_version");
  if (version == "1")
    fail("the file is a version-1 packed file, which this bhvit no longer reads; re-pack it from its checkpoint "
         "with `bhvit pack CHECKPOINT -o NEW.bhvp`");
  if (version != "2") bad_file("metadata 'format_version' is '" + version + "'; this runtime reads version 2");
  Loader L(st, *m);
  read_program(*m, L, meta_str(m->metadata, "program"));
  read_preprocess(*m, meta_str(m->metadata, "preprocess"));
  const auto labels = m->metadata.find("labels");
  if (labels != m->metadata.end()) read_labels(*m, labels->second);
  fuse_ops(m->ops, m->values);
  L.plan_slots();
  return m;
}

}  // namespace bhr
