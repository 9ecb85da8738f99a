// safetensors reader (safetensors.h). The file is read into memory once (packed models are a few MB);
// tensor views point into that copy.
#include "safetensors.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

#include "error.h"
#include "json.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "bhvit_runtime reads little-endian files in place: a big-endian target needs byte swapping"
#endif

namespace bhr {

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // checked at parse time
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafeTensors SafeTensors::from_file(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) fail("cannot open '" + path + "': " + std::strerror(errno) + "; check the path");
  if (!S_ISREG(st.st_mode)) fail("'" + path + "' is not a regular file; pass the path of a .bhvp file");
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!f) fail("cannot open '" + path + "': " + std::strerror(errno) + "; check the path and its permissions");
  SafeTensors out;
  out.bytes_.resize(static_cast<size_t>(st.st_size));
  if (!out.bytes_.empty() && std::fread(out.bytes_.data(), 1, out.bytes_.size(), f.get()) != out.bytes_.size())
    fail("cannot read '" + path + "' (" + std::to_string(st.st_size) + " bytes): the file changed or the read failed");
  out.parse();
  return out;
}

SafeTensors SafeTensors::from_memory(const void* data, size_t size) {
  if (!data && size) fail("the buffer is NULL but its size is " + std::to_string(size));
  SafeTensors out;
  out.bytes_.assign(static_cast<const unsigned char*>(data), static_cast<const unsigned char*>(data) + size);
  out.parse();
  return out;
}

const TensorView* SafeTensors::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

namespace {

// An integer JSON number in [lo, hi], or a FileError naming `what`.
int64_t json_int(const Json& v, int64_t lo, int64_t hi, const std::string& what) {
  if (!v.is(Json::Kind::Number) || std::floor(v.number) != v.number || v.number < static_cast<double>(lo) ||
      v.number > static_cast<double>(hi))
    bad_file(what + ": expected an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
  return static_cast<int64_t>(v.number);
}

void check_finite(const TensorView& t, const std::string& name) {
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, t.data + 4 * i, 4);
    if ((u & 0x7F800000u) == 0x7F800000u)
      bad_file("tensor '" + name + "' holds a non-finite value (NaN or Inf) at element " + std::to_string(i));
  }
}

// The entry of one tensor; its data starts `*begin` bytes into the data buffer.
TensorView tensor_entry(const Json& e, const std::string& name, size_t data_size, int64_t* begin_out) {
  const std::string what = "tensor '" + name + "'";
  if (!e.is(Json::Kind::Object)) bad_file(what + ": expected an object {dtype, shape, data_offsets}");
  for (const auto& m : e.members)
    if (m.first != "dtype" && m.first != "shape" && m.first != "data_offsets")
      bad_file(what + ": unknown key '" + m.first + "'");
  const Json* dt = e.find("dtype");
  const Json* sh = e.find("shape");
  const Json* off = e.find("data_offsets");
  if (!dt || !sh || !off) bad_file(what + ": needs dtype, shape and data_offsets");
  TensorView t;
  if (dt->is(Json::Kind::String) && dt->text == "F32") t.dtype = DType::F32;
  else if (dt->is(Json::Kind::String) && dt->text == "U64") t.dtype = DType::U64;
  else bad_file(what + ": dtype must be \"F32\" or \"U64\"");
  if (!sh->is(Json::Kind::Array) || sh->items.size() > 4) bad_file(what + ": shape must be an array of at most 4 dims");
  int64_t bytes = t.dtype == DType::F32 ? 4 : 8;
  for (const Json& d : sh->items) {
    t.shape.push_back(json_int(d, 0, int64_t(1) << 53, what + " shape"));
    bytes = mul_checked(bytes, t.shape.back(), what);
  }
  if (!off->is(Json::Kind::Array) || off->items.size() != 2) bad_file(what + ": data_offsets must be [begin, end]");
  const int64_t begin = json_int(off->items[0], 0, int64_t(1) << 53, what + " data_offsets");
  const int64_t end = json_int(off->items[1], 0, int64_t(1) << 53, what + " data_offsets");
  if (begin > end || static_cast<uint64_t>(end) > data_size)
    bad_file(what + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
             "] outside the data buffer of " + std::to_string(data_size) + " bytes");
  if (end - begin != bytes)
    bad_file(what + ": shape " + shape_str(t.shape) + " needs " + std::to_string(bytes) + " bytes, data_offsets give " +
             std::to_string(end - begin));
  t.bytes = static_cast<size_t>(bytes);
  *begin_out = begin;
  return t;
}

}  // namespace

void SafeTensors::parse() {
  const size_t size = bytes_.size();
  if (size < 8) bad_file("the file has " + std::to_string(size) + " bytes: too short for a safetensors header");
  uint64_t n = 0;
  std::memcpy(&n, bytes_.data(), 8);
  if (n > size - 8 || n > kMaxHeaderBytes)
    bad_file("the header length " + std::to_string(n) + " exceeds the file (" + std::to_string(size) +
             " bytes) or the limit of 100000000: the file is truncated or not a safetensors file");
  const Json header = parse_json(reinterpret_cast<const char*>(bytes_.data() + 8), static_cast<size_t>(n), "header");
  if (!header.is(Json::Kind::Object)) bad_file("header: expected a JSON object");
  const unsigned char* base = bytes_.data() + 8 + n;
  const size_t data_size = size - 8 - static_cast<size_t>(n);
  for (const auto& m : header.members) {
    if (m.first == "__metadata__") {
      if (!m.second.is(Json::Kind::Object)) bad_file("header: __metadata__ must be an object of strings");
      for (const auto& kv : m.second.members) {
        if (!kv.second.is(Json::Kind::String)) bad_file("header: __metadata__ '" + kv.first + "' is not a string");
        meta_[kv.first] = kv.second.text;
      }
      continue;
    }
    int64_t begin = 0;
    TensorView t = tensor_entry(m.second, m.first, data_size, &begin);
    t.data = base + begin;
    if (t.dtype == DType::F32) check_finite(t, m.first);
    tensors_[m.first] = std::move(t);
  }
}

}  // namespace bhr
