// A strict JSON reader (RFC 8259): objects, arrays, strings with every escape (\uXXXX with surrogate
// pairs), numbers, true/false/null. Input must be valid UTF-8; nesting is limited; duplicate object keys,
// trailing commas, comments, NaN/Infinity, leading zeros and trailing garbage are refused with the byte
// position of the problem.
#pragma once
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace bhr {

constexpr int kJsonMaxDepth = 64;  // docs/packed-format.md §7

struct Json {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  bool boolean = false;
  double number = 0.0;
  std::string text;                                   // String
  std::vector<Json> items;                            // Array
  std::vector<std::pair<std::string, Json>> members;  // Object, in file order (keys unique)

  bool is(Kind k) const { return kind == k; }
  // The member named key, or null (objects only).
  const Json* find(const std::string& key) const;
};

const char* json_kind_name(Json::Kind k);

// Parses data[0, size) as one JSON value (surrounding whitespace allowed); throws FileError
// "<what>: invalid JSON at byte N: ..." on any problem.
Json parse_json(const char* data, size_t size, const std::string& what);

}  // namespace bhr
