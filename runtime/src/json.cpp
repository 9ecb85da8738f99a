// Strict JSON reader (json.h): recursive descent over the bytes, one pass, errors with positions, the values
// written as flat nodes in document order.
#include "json.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "error.h"

namespace bhr {

using detail::JsonNode;

namespace {

// The double that the number text [b, e) spells (the grammar's characters only), or false when it is out of
// range: overflow (1e999) and underflow to zero (1e-999); subnormals are read. std::from_chars where the C++
// library has its floating-point overloads (libstdc++ 11+); else (libc++ before 17, e.g. emscripten's) strtod
// on a copy, whose musl reads '.' in every locale, with std::from_chars's range rule.
bool parse_number(const char* b, const char* e, double& v) {
#if defined(__cpp_lib_to_chars) && __cpp_lib_to_chars >= 201611L
  const auto r = std::from_chars(b, e, v);
  return r.ec == std::errc() && r.ptr == e && std::isfinite(v);
#else
  const std::string text(b, e);
  char* end = nullptr;
  errno = 0;
  v = std::strtod(text.c_str(), &end);
  const bool underflow = errno == ERANGE && v == 0.0;
  return end == text.c_str() + text.size() && std::isfinite(v) && !underflow;
#endif
}

}  // namespace

double Json::number() const {
  const JsonNode& n = node();
  double v = 0.0;
  const char* p = d_->numbers.data() + n.pos;
  parse_number(p, p + (n.head >> 3), v);  // checked when parsed
  return v;
}

std::string_view Json::text() const {
  const JsonNode& n = node();
  return std::string_view(d_->strings.data() + n.pos, n.head >> 3);
}

std::optional<Json> Json::find(std::string_view key) const {
  for (auto [k, v] : members())
    if (k == key) return v;
  return std::nullopt;
}

Json Json::at(size_t i) const {
  Json v(d_, i_ + 1);
  for (size_t k = 0; k < i; ++k) v = v.next();
  return v;
}

const char* json_kind_name(Json::Kind k) {
  switch (k) {
    case Json::Kind::Null: return "null";
    case Json::Kind::Bool: return "a boolean";
    case Json::Kind::Number: return "a number";
    case Json::Kind::String: return "a string";
    case Json::Kind::Array: return "an array";
    case Json::Kind::Object: return "an object";
  }
  return "?";
}

namespace {

class Parser {
 public:
  Parser(const char* data, size_t size, const std::string& what, detail::JsonData& out)
      : p_(data), n_(size), what_(what), out_(out) {}

  void document() {
    // offsets and counts are 32-bit (a header is at most 100,000,000 bytes, §7)
    if (n_ > (size_t(1) << 31)) error("the text is larger than 2 GiB");
    // reserved once (untouched pages cost no memory), so that growing never copies: a value and its
    // separator take at least 2 bytes; strings and numbers are never longer than their text
    out_.nodes.reserve(n_ / 2 + 2);
    out_.strings.reserve(n_);
    out_.numbers.reserve(n_);
    skip_ws();
    value(0);
    skip_ws();
    if (i_ != n_) error("unexpected data after the value");
  }

 private:
  struct Key {
    uint32_t str, len, at;  // the key's decoded bytes in out_.strings; its byte position in the text
  };
  const char* p_;
  size_t n_;
  size_t i_ = 0;
  const std::string& what_;
  detail::JsonData& out_;
  std::vector<Key> keys_;  // the keys of the objects being read, innermost last

  [[noreturn]] void error(const std::string& msg) const {
    bad_file(what_ + ": invalid JSON at byte " + std::to_string(i_) + ": " + msg);
  }

  int peek() const { return i_ < n_ ? static_cast<unsigned char>(p_[i_]) : -1; }

  void skip_ws() {
    while (i_ < n_ && (p_[i_] == ' ' || p_[i_] == '\t' || p_[i_] == '\n' || p_[i_] == '\r')) ++i_;
  }

  void expect_word(const char* w) {
    const size_t len = std::strlen(w);
    if (n_ - i_ < len || std::memcmp(p_ + i_, w, len) != 0) error(std::string("expected '") + w + "'");
    i_ += len;
  }

  size_t push(Json::Kind k, size_t n, size_t pos) {
    if (n >= (size_t(1) << 29)) error("a string, number or container is too large");
    out_.nodes.push_back(JsonNode{static_cast<uint32_t>(k) | static_cast<uint32_t>(n << 3), static_cast<uint32_t>(pos)});
    return out_.nodes.size() - 1;
  }

  void value(int depth) {
    switch (peek()) {
      case '{': object(depth + 1); return;
      case '[': array(depth + 1); return;
      case '"': string(); return;
      case 't': expect_word("true"); push(Json::Kind::Bool, 0, 1); return;
      case 'f': expect_word("false"); push(Json::Kind::Bool, 0, 0); return;
      case 'n': expect_word("null"); push(Json::Kind::Null, 0, 0); return;
      case -1: error("unexpected end of input");
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return number();
        error("unexpected character");
    }
  }

  void check_depth(int depth) const {
    if (depth > kJsonMaxDepth) error("nesting deeper than " + std::to_string(kJsonMaxDepth) + " levels");
  }

  // The container node at `self` now holds n children and ends here.
  void close(size_t self, Json::Kind k, size_t n) {
    if (n >= (size_t(1) << 29)) error("a container is too large");
    out_.nodes[self].head = static_cast<uint32_t>(k) | static_cast<uint32_t>(n << 3);
    out_.nodes[self].pos = static_cast<uint32_t>(out_.nodes.size() - self);
  }

  std::string_view key_text(const Key& k) const { return std::string_view(out_.strings.data() + k.str, k.len); }

  // Refuses a key that occurs twice among keys_[from, end): sorted by (text, position), equal keys are
  // neighbours; the error points at the earliest second occurrence.
  void check_unique(size_t from) {
    if (keys_.size() - from < 2) return;
    const auto first = keys_.begin() + static_cast<std::ptrdiff_t>(from);
    std::sort(first, keys_.end(), [this](const Key& a, const Key& b) {
      const int c = key_text(a).compare(key_text(b));
      return c < 0 || (c == 0 && a.at < b.at);
    });
    const Key* dup = nullptr;
    for (auto k = first + 1; k != keys_.end(); ++k)
      if (key_text(*k) == key_text(*(k - 1)) && (!dup || k->at < dup->at)) dup = &*k;
    if (dup) {
      i_ = dup->at;
      error("duplicate key \"" + std::string(key_text(*dup)) + "\"");
    }
  }

  void object(int depth) {
    check_depth(depth);
    const size_t self = push(Json::Kind::Object, 0, 0), keys0 = keys_.size();
    size_t n = 0;
    ++i_;  // '{'
    skip_ws();
    if (peek() == '}') {
      ++i_;
      return close(self, Json::Kind::Object, 0);
    }
    for (;;) {
      skip_ws();
      if (peek() != '"') error("expected a string key");
      const size_t at = i_;
      const size_t key = string();
      keys_.push_back(Key{out_.nodes[key].pos, out_.nodes[key].head >> 3, static_cast<uint32_t>(at)});
      skip_ws();
      if (peek() != ':') error("expected ':'");
      ++i_;
      skip_ws();
      value(depth);
      ++n;
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() == '}') {
        ++i_;
        break;
      }
      error("expected ',' or '}'");
    }
    check_unique(keys0);
    keys_.resize(keys0);
    close(self, Json::Kind::Object, n);
  }

  void array(int depth) {
    check_depth(depth);
    const size_t self = push(Json::Kind::Array, 0, 0);
    size_t n = 0;
    ++i_;  // '['
    skip_ws();
    if (peek() == ']') {
      ++i_;
      return close(self, Json::Kind::Array, 0);
    }
    for (;;) {
      skip_ws();
      value(depth);
      ++n;
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() == ']') {
        ++i_;
        return close(self, Json::Kind::Array, n);
      }
      error("expected ',' or ']'");
    }
  }

  void number() {
    const size_t start = i_;
    if (peek() == '-') ++i_;
    if (peek() == '0') {
      ++i_;
    } else if (peek() >= '1' && peek() <= '9') {
      while (peek() >= '0' && peek() <= '9') ++i_;
    } else {
      error("expected a digit");
    }
    if (peek() == '.') {
      ++i_;
      if (!(peek() >= '0' && peek() <= '9')) error("expected a digit after '.'");
      while (peek() >= '0' && peek() <= '9') ++i_;
    }
    if (peek() == 'e' || peek() == 'E') {
      ++i_;
      if (peek() == '+' || peek() == '-') ++i_;
      if (!(peek() >= '0' && peek() <= '9')) error("expected a digit in the exponent");
      while (peek() >= '0' && peek() <= '9') ++i_;
    }
    // out of range (1e999) is refused rather than read as infinity
    double v = 0.0;
    if (!parse_number(p_ + start, p_ + i_, v)) {
      i_ = start;
      error("number out of range");
    }
    push(Json::Kind::Number, i_ - start, out_.numbers.size());
    out_.numbers.append(p_ + start, i_ - start);
  }

  unsigned hex4() {
    if (n_ - i_ < 4) error("truncated \\u escape");
    unsigned u = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = p_[i_++];
      u <<= 4;
      if (c >= '0' && c <= '9') u |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') u |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') u |= static_cast<unsigned>(c - 'A' + 10);
      else error("bad hex digit in \\u escape");
    }
    return u;
  }

  static void put_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  void escape(std::string& out) {
    ++i_;  // backslash
    const int c = peek();
    if (c < 0) error("truncated escape");
    ++i_;
    switch (c) {
      case '"': out += '"'; return;
      case '\\': out += '\\'; return;
      case '/': out += '/'; return;
      case 'b': out += '\b'; return;
      case 'f': out += '\f'; return;
      case 'n': out += '\n'; return;
      case 'r': out += '\r'; return;
      case 't': out += '\t'; return;
      case 'u': break;
      default: --i_; error("unknown escape");
    }
    unsigned cp = hex4();
    if (cp >= 0xDC00 && cp <= 0xDFFF) error("lone low surrogate in \\u escape");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      if (n_ - i_ < 2 || p_[i_] != '\\' || p_[i_ + 1] != 'u') error("high surrogate without its low half");
      i_ += 2;
      const unsigned lo = hex4();
      if (lo < 0xDC00 || lo > 0xDFFF) error("high surrogate without its low half");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    put_utf8(out, cp);
  }

  // One UTF-8 encoded character starting at a byte >= 0x80: validated (no overlong forms, no
  // surrogates, at most U+10FFFF) and copied.
  void utf8_char(std::string& out) {
    const unsigned char b0 = static_cast<unsigned char>(p_[i_]);
    int len = 0;
    unsigned cp = 0, min = 0;
    if (b0 >= 0xC2 && b0 <= 0xDF) len = 2, cp = b0 & 0x1F, min = 0x80;
    else if (b0 >= 0xE0 && b0 <= 0xEF) len = 3, cp = b0 & 0x0F, min = 0x800;
    else if (b0 >= 0xF0 && b0 <= 0xF4) len = 4, cp = b0 & 0x07, min = 0x10000;
    else error("invalid UTF-8");
    if (n_ - i_ < static_cast<size_t>(len)) error("truncated UTF-8 sequence");
    for (int k = 1; k < len; ++k) {
      const unsigned char b = static_cast<unsigned char>(p_[i_ + k]);
      if ((b & 0xC0) != 0x80) error("invalid UTF-8");
      cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) error("invalid UTF-8");
    out.append(p_ + i_, static_cast<size_t>(len));
    i_ += static_cast<size_t>(len);
  }

  // A string (at the opening quote) decoded into out_.strings; returns its node.
  size_t string() {
    ++i_;  // opening quote
    std::string& out = out_.strings;
    const size_t from = out.size();
    for (;;) {
      const int c = peek();
      if (c < 0) error("unterminated string");
      if (c == '"') {
        ++i_;
        return push(Json::Kind::String, out.size() - from, from);
      }
      if (c == '\\') {
        escape(out);
      } else if (c < 0x20) {
        error("control character in a string (escape it)");
      } else if (c < 0x80) {
        const size_t run = i_;  // a run of plain ASCII, copied at once
        while (i_ < n_ && static_cast<unsigned char>(p_[i_]) >= 0x20 && static_cast<unsigned char>(p_[i_]) < 0x80 &&
               p_[i_] != '"' && p_[i_] != '\\')
          ++i_;
        out.append(p_ + run, i_ - run);
      } else {
        utf8_char(out);
      }
    }
  }
};

}  // namespace

JsonDoc parse_json(const char* data, size_t size, const std::string& what) {
  JsonDoc doc;
  Parser(data, size, what, *doc.data_).document();
  return doc;
}

}  // namespace bhr
