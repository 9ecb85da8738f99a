// Errors of the runtime: one exception type whose message is the one line the C API hands back.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace bhr {

// text as one line: control bytes (a NUL or a newline inside a name from a file) written as \xNN, so that
// what() (a C string) keeps what follows them.
inline std::string one_line(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c != 0x7F) {
      out += ch;
      continue;
    }
    const char* hex = "0123456789abcdef";
    out += "\\x";
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

// A problem the caller can act on; what() names it and, where there is one, the fix (one line).
struct Error : std::runtime_error {
  explicit Error(const std::string& msg) : std::runtime_error(one_line(msg)) {}
};

// A problem in a file's content (header, program, tensors): the C API adds how to get a good file.
struct FileError : Error {
  using Error::Error;
};

[[noreturn]] inline void fail(const std::string& msg) { throw Error(msg); }
[[noreturn]] inline void bad_file(const std::string& msg) { throw FileError(msg); }

// a * b, or a FileError naming `what` when the product overflows int64 (sizes computed from a file).
inline int64_t mul_checked(int64_t a, int64_t b, const std::string& what) {
  int64_t r = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r)) bad_file(what + ": size overflows 64 bits");
  return r;
}

inline int64_t add_checked(int64_t a, int64_t b, const std::string& what) {
  int64_t r = 0;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r)) bad_file(what + ": size overflows 64 bits");
  return r;
}

}  // namespace bhr
