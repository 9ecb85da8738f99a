// A safetensors reader (docs/packed-format.md §1, §7): from a path or from a copy of a memory buffer.
//   | u64 little-endian N | N bytes of UTF-8 JSON header | data buffer |
// Everything is checked before use: header size, JSON, each entry's dtype (F32, U64), rank (<= 4),
// dims, byte size (overflow-checked), offsets inside the data buffer, F32 values finite.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace bhr {

constexpr uint64_t kMaxHeaderBytes = 100000000;  // §7

enum class DType { F32, U64 };

struct TensorView {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const unsigned char* data = nullptr;  // inside the container's bytes; not aligned in general
  size_t bytes = 0;
  int64_t numel() const;
};

std::string shape_str(const std::vector<int64_t>& shape);

class SafeTensors {
 public:
  static SafeTensors from_file(const std::string& path);
  static SafeTensors from_memory(const void* data, size_t size);

  const TensorView* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return meta_; }

 private:
  std::vector<unsigned char> bytes_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> meta_;
  void parse();
};

}  // namespace bhr
