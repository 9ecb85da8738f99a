// A strict JSON reader (RFC 8259): objects, arrays, strings with every escape (\uXXXX with surrogate
// pairs), numbers, true/false/null. Input must be valid UTF-8; nesting is limited; duplicate object keys,
// trailing commas, comments, NaN/Infinity, leading zeros and trailing garbage are refused with the byte
// position of the problem.
//
// Memory: the document is a flat array of 8-byte nodes in document order (a container is followed by its
// subtree and records the subtree's size, so siblings are found by skipping it) plus the decoded strings.
// A value takes at least 2 bytes of text with its separator, so a document of n bytes needs at most
// 4 n bytes of nodes and n bytes of strings; numbers are kept as their text and converted when read.
// Duplicate keys are found by sorting each object's keys: O(m log m) for m members.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bhr {

constexpr int kJsonMaxDepth = 64;  // docs/packed-format.md §7

namespace detail {
struct JsonNode {
  uint32_t head;  // kind (low 3 bits) | n << 3: items, members, string bytes or number characters
  uint32_t pos;   // Array/Object: nodes in the subtree (itself included); String: offset in the strings;
                  // Number: offset in the text; Bool: the value
};
struct JsonData {
  std::vector<JsonNode> nodes;
  std::string strings;  // every decoded string, back to back
  std::string numbers;  // the text of every number, back to back (Number nodes point here)
};
}  // namespace detail

// A value inside a parsed document: a small handle, valid while its JsonDoc lives.
class Json {
 public:
  enum class Kind : uint8_t { Null, Bool, Number, String, Array, Object };

  Json() = default;
  Kind kind() const { return static_cast<Kind>(node().head & 7u); }
  bool is(Kind k) const { return kind() == k; }
  bool boolean() const { return node().pos != 0; }
  double number() const;          // a Number (checked finite when parsed)
  std::string_view text() const;  // a String's decoded bytes (may hold NUL)
  size_t size() const { return node().head >> 3; }  // items of an array, members of an object

  // Items of an array, in order: for (Json e : v.items()).
  class Items;
  Items items() const;
  // Members of an object, in file order: for (auto [key, value] : v.members()).
  class Members;
  Members members() const;
  // The member named key (objects only; linear in the members), or nothing.
  std::optional<Json> find(std::string_view key) const;
  // Item i of an array (linear in i).
  Json at(size_t i) const;

 private:
  friend class JsonDoc;
  const detail::JsonData* d_ = nullptr;
  uint32_t i_ = 0;
  Json(const detail::JsonData* d, uint32_t i) : d_(d), i_(i) {}
  const detail::JsonNode& node() const { return d_->nodes[i_]; }
  Json next() const {  // the following sibling
    const detail::JsonNode& n = node();
    const Kind k = static_cast<Kind>(n.head & 7u);
    return Json(d_, i_ + (k == Kind::Array || k == Kind::Object ? n.pos : 1));
  }
};

class Json::Items {
 public:
  class iterator {
   public:
    Json operator*() const { return v_; }
    iterator& operator++() {
      v_ = v_.next();
      --left_;
      return *this;
    }
    bool operator!=(const iterator& o) const { return left_ != o.left_; }

   private:
    friend class Items;
    iterator(Json v, size_t left) : v_(v), left_(left) {}
    Json v_;
    size_t left_;
  };
  iterator begin() const { return iterator(first_, n_); }
  iterator end() const { return iterator(first_, 0); }

 private:
  friend class Json;
  Items(Json first, size_t n) : first_(first), n_(n) {}
  Json first_;
  size_t n_;
};

class Json::Members {
 public:
  class iterator {
   public:
    std::pair<std::string_view, Json> operator*() const { return {key_.text(), Json(key_.d_, key_.i_ + 1)}; }
    iterator& operator++() {
      key_ = Json(key_.d_, key_.i_ + 1).next();
      --left_;
      return *this;
    }
    bool operator!=(const iterator& o) const { return left_ != o.left_; }

   private:
    friend class Members;
    iterator(Json key, size_t left) : key_(key), left_(left) {}
    Json key_;
    size_t left_;
  };
  iterator begin() const { return iterator(first_, n_); }
  iterator end() const { return iterator(first_, 0); }

 private:
  friend class Json;
  Members(Json first, size_t n) : first_(first), n_(n) {}
  Json first_;
  size_t n_;
};

inline Json::Items Json::items() const { return Items(Json(d_, i_ + 1), is(Kind::Array) ? size() : 0); }
inline Json::Members Json::members() const { return Members(Json(d_, i_ + 1), is(Kind::Object) ? size() : 0); }

// A parsed document; its values are Json handles into it (movable, not copyable).
class JsonDoc {
 public:
  Json root() const { return Json(data_.get(), 0); }

 private:
  friend JsonDoc parse_json(const char* data, size_t size, const std::string& what);
  std::unique_ptr<detail::JsonData> data_ = std::make_unique<detail::JsonData>();
};

const char* json_kind_name(Json::Kind k);

// Parses data[0, size) as one JSON value (surrounding whitespace allowed); throws FileError
// "<what>: invalid JSON at byte N: ..." on any problem.
JsonDoc parse_json(const char* data, size_t size, const std::string& what);

}  // namespace bhr
