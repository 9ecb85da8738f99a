// safetensors reader (safetensors.h). The file is read into memory once (packed models are a few MB);
// tensor views point into that copy.
#include "safetensors.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

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

FileBytes::FileBytes(size_t size) : n_(size) {
  void* p = nullptr;
  if (posix_memalign(&p, 64, std::max<size_t>(size, 1)) != 0) throw std::bad_alloc();
  p_ = static_cast<unsigned char*>(p);
}

FileBytes::~FileBytes() { std::free(p_); }

namespace {

// The header length the first 8 bytes of a file give, checked against the file's size and the limit before
// the rest is read.
void check_header_length(const unsigned char* first8, size_t size, uint64_t max_header) {
  if (size < 8) bad_file("the file has " + std::to_string(size) + " bytes: too short for a safetensors header");
  uint64_t n = 0;
  std::memcpy(&n, first8, 8);
  if (n > size - 8)
    bad_file("the header length " + std::to_string(n) + " exceeds the file (" + std::to_string(size) +
             " bytes): the file is truncated or not a safetensors file");
  const uint64_t limit = std::min(max_header, kMaxHeaderBytes);
  if (n > limit)
    fail("the JSON header has " + std::to_string(n) + " bytes, over the limit of " + std::to_string(limit) +
         (limit < kMaxHeaderBytes ? " (raise the limit header_bytes, up to 100000000, to read it)"
                                  : " of the format (§7)"));
}

}  // namespace

SafeTensors SafeTensors::from_file(const std::string& path, uint64_t max_header) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) fail("cannot open '" + path + "': " + std::strerror(errno) + "; check the path");
  // never opened otherwise: opening a FIFO or a terminal blocks
  if (!S_ISREG(st.st_mode)) fail("'" + path + "' is not a regular file; pass the path of a .bhvp file");
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!f) fail("cannot open '" + path + "': " + std::strerror(errno) + "; check the path and its permissions");
  const size_t size = static_cast<size_t>(st.st_size);
  unsigned char first8[8] = {};
  if (std::fread(first8, 1, std::min<size_t>(size, 8), f.get()) != std::min<size_t>(size, 8))
    fail("cannot read '" + path + "': the file changed or the read failed");
  check_header_length(first8, size, max_header);
  auto bytes = std::make_shared<FileBytes>(size);
  std::memcpy(bytes->data(), first8, 8);
  if (std::fread(bytes->data() + 8, 1, size - 8, f.get()) != size - 8)
    fail("cannot read '" + path + "' (" + std::to_string(st.st_size) + " bytes): the file changed or the read failed");
  SafeTensors out;
  out.bytes_ = std::move(bytes);
  out.parse(max_header);
  return out;
}

SafeTensors SafeTensors::from_memory(const void* data, size_t size, uint64_t max_header) {
  if (!data && size) fail("the buffer is NULL but its size is " + std::to_string(size));
  check_header_length(static_cast<const unsigned char*>(data), size, max_header);
  auto bytes = std::make_shared<FileBytes>(size);
  if (size) std::memcpy(bytes->data(), data, size);
  SafeTensors out;
  out.bytes_ = std::move(bytes);
  out.parse(max_header);
  return out;
}

const TensorView* SafeTensors::find(const std::string& name) const {
  const auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                                   [](const auto& entry, const std::string& key) { return entry.first < key; });
  return it == tensors_.end() || it->first != name ? nullptr : &it->second;
}

namespace {

// An integer JSON number in [lo, hi], or a FileError naming `what`.
int64_t json_int(Json v, int64_t lo, int64_t hi, const std::string& what) {
  const double x = v.is(Json::Kind::Number) ? v.number() : 0.5;
  if (std::floor(x) != x || x < static_cast<double>(lo) || x > static_cast<double>(hi))
    bad_file(what + ": expected an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
  return static_cast<int64_t>(x);
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
TensorView tensor_entry(Json e, const std::string& name, size_t data_size, int64_t* begin_out) {
  const std::string what = "tensor '" + name + "'";
  if (!e.is(Json::Kind::Object)) bad_file(what + ": expected an object {dtype, shape, data_offsets}");
  for (auto [key, value] : e.members())
    if (key != "dtype" && key != "shape" && key != "data_offsets") bad_file(what + ": unknown key '" + std::string(key) + "'");
  const std::optional<Json> dt = e.find("dtype"), sh = e.find("shape"), off = e.find("data_offsets");
  if (!dt || !sh || !off) bad_file(what + ": needs dtype, shape and data_offsets");
  TensorView t;
  if (dt->is(Json::Kind::String) && dt->text() == "F32") t.dtype = DType::F32;
  else if (dt->is(Json::Kind::String) && dt->text() == "U64") t.dtype = DType::U64;
  else bad_file(what + ": dtype must be \"F32\" or \"U64\"");
  if (!sh->is(Json::Kind::Array) || sh->size() > 4) bad_file(what + ": shape must be an array of at most 4 dims");
  int64_t bytes = t.dtype == DType::F32 ? 4 : 8;
  for (Json d : sh->items()) {
    t.shape.push_back(json_int(d, 0, int64_t(1) << 53, what + " shape"));
    bytes = mul_checked(bytes, t.shape.back(), what);
  }
  if (!off->is(Json::Kind::Array) || off->size() != 2) bad_file(what + ": data_offsets must be [begin, end]");
  const int64_t begin = json_int(off->at(0), 0, int64_t(1) << 53, what + " data_offsets");
  const int64_t end = json_int(off->at(1), 0, int64_t(1) << 53, what + " data_offsets");
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

// Refuses two tensors whose byte ranges share a byte (empty tensors share none): one byte read as two
// tensors would let a file change one weight through another.
void check_disjoint(const std::vector<std::pair<std::string, TensorView>>& tensors, const unsigned char* base) {
  std::vector<std::pair<const unsigned char*, size_t>> spans;  // (start, index) of the tensors with bytes
  for (size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i].second.bytes) spans.emplace_back(tensors[i].second.data, i);
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i) {
    const auto& [prev_name, prev] = tensors[spans[i - 1].second];
    if (spans[i].first < prev.data + prev.bytes)
      bad_file("tensors '" + prev_name + "' and '" + tensors[spans[i].second].first + "' overlap (bytes " +
               std::to_string(spans[i].first - base) + ".." + std::to_string(prev.data + prev.bytes - base) +
               " of the data buffer belong to both); every tensor needs bytes of its own");
  }
}

}  // namespace

void SafeTensors::parse(uint64_t max_header) {
  const unsigned char* file = bytes_->data();
  const size_t size = bytes_->size();
  check_header_length(file, size, max_header);
  uint64_t n = 0;
  std::memcpy(&n, file, 8);
  data_size_ = size - 8 - static_cast<size_t>(n);
  const unsigned char* base = file + 8 + n;
  {
    const JsonDoc doc = parse_json(reinterpret_cast<const char*>(file + 8), static_cast<size_t>(n), "header");
    const Json header = doc.root();
    if (!header.is(Json::Kind::Object)) bad_file("header: expected a JSON object");
    tensors_.reserve(header.size());
    for (auto [name, entry] : header.members()) {
      if (name == "__metadata__") {
        if (!entry.is(Json::Kind::Object)) bad_file("header: __metadata__ must be an object of strings");
        for (auto [key, value] : entry.members()) {
          if (!value.is(Json::Kind::String))
            bad_file("header: __metadata__ '" + std::string(key) + "' is not a string");
          meta_.emplace(std::string(key), std::string(value.text()));
        }
        continue;
      }
      int64_t begin = 0;
      std::string key(name);
      TensorView t = tensor_entry(entry, key, data_size_, &begin);
      t.data = base + begin;
      if (t.dtype == DType::F32) check_finite(t, key);
      tensors_.emplace_back(std::move(key), std::move(t));
    }
  }  // the parsed header is freed here
  std::sort(tensors_.begin(), tensors_.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  check_disjoint(tensors_, base);
}

}  // namespace bhr
