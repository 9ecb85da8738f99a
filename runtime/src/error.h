// Errors of the runtime: one exception type whose message is the one line the C API hands back.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace bhr {

// A problem the caller can act on; what() names it and, where there is one, the fix.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
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
