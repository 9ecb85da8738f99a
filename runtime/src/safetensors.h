// A safetensors reader (docs/packed-format.md §1, §7): from a path or from a copy of a memory buffer.
//   | u64 little-endian N | N bytes of UTF-8 JSON header | data buffer |
// Everything is checked before use: header size (against the caller's limit), JSON, each entry's dtype
// (F32, U64), rank (<= 4), dims, byte size (overflow-checked), offsets inside the data buffer, no two
// tensors' bytes overlapping, F32 values finite.
//
// The file's bytes are read once into one 64-byte aligned buffer, which the loaded model keeps: tensors are
// used in place (a tensor whose bytes are not aligned for its type is copied once by the loader).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace bhr {

constexpr uint64_t kMaxHeaderBytes = 100000000;  // §7: no reader reads a larger header

enum class DType { F32, U64 };

struct TensorView {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const unsigned char* data = nullptr;  // inside the file's buffer
  size_t bytes = 0;
  int64_t numel() const;
};

std::string shape_str(const std::vector<int64_t>& shape);

// The bytes of a file, 64-byte aligned; shared by the model that reads its tensors in place.
class FileBytes {
 public:
  explicit FileBytes(size_t size);  // throws std::bad_alloc
  ~FileBytes();
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;
  unsigned char* data() { return p_; }
  const unsigned char* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  unsigned char* p_ = nullptr;
  size_t n_ = 0;
};

class SafeTensors {
 public:
  // max_header: the largest JSON header accepted (at most kMaxHeaderBytes), from the caller's limits.
  static SafeTensors from_file(const std::string& path, uint64_t max_header);
  static SafeTensors from_memory(const void* data, size_t size, uint64_t max_header);

  const TensorView* find(const std::string& name) const;
  std::map<std::string, std::string>& metadata() { return meta_; }
  const std::shared_ptr<const FileBytes>& bytes() const { return bytes_; }
  size_t data_bytes() const { return data_size_; }  // the data buffer after the header

 private:
  std::shared_ptr<const FileBytes> bytes_;
  size_t data_size_ = 0;
  std::vector<std::pair<std::string, TensorView>> tensors_;  // sorted by name (unique: the JSON has no duplicate keys)
  std::map<std::string, std::string> meta_;
  void parse(uint64_t max_header);
};

}  // namespace bhr
