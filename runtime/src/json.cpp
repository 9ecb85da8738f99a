// Strict JSON reader (json.h): recursive descent over the bytes, one pass, errors with positions.
#include "json.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "error.h"

namespace bhr {

const Json* Json::find(const std::string& key) const {
  for (const auto& m : members)
    if (m.first == key) return &m.second;
  return nullptr;
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
  Parser(const char* data, size_t size, const std::string& what) : p_(data), n_(size), what_(what) {}

  Json document() {
    skip_ws();
    Json v = value(0);
    skip_ws();
    if (i_ != n_) error("unexpected data after the value");
    return v;
  }

 private:
  const char* p_;
  size_t n_;
  size_t i_ = 0;
  const std::string& what_;

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

  Json value(int depth) {
    Json v;
    switch (peek()) {
      case '{': return object(depth + 1);
      case '[': return array(depth + 1);
      case '"': v.kind = Json::Kind::String; v.text = string(); return v;
      case 't': expect_word("true"); v.kind = Json::Kind::Bool; v.boolean = true; return v;
      case 'f': expect_word("false"); v.kind = Json::Kind::Bool; return v;
      case 'n': expect_word("null"); return v;
      case -1: error("unexpected end of input");
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return number();
        error("unexpected character");
    }
  }

  void check_depth(int depth) const {
    if (depth > kJsonMaxDepth) error("nesting deeper than " + std::to_string(kJsonMaxDepth) + " levels");
  }

  Json object(int depth) {
    check_depth(depth);
    Json v;
    v.kind = Json::Kind::Object;
    ++i_;  // '{'
    skip_ws();
    if (peek() == '}') {
      ++i_;
      return v;
    }
    for (;;) {
      skip_ws();
      if (peek() != '"') error("expected a string key");
      const size_t at = i_;
      std::string key = string();
      if (v.find(key)) {
        i_ = at;
        error("duplicate key \"" + key + "\"");
      }
      skip_ws();
      if (peek() != ':') error("expected ':'");
      ++i_;
      skip_ws();
      v.members.emplace_back(std::move(key), value(depth));
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() == '}') {
        ++i_;
        return v;
      }
      error("expected ',' or '}'");
    }
  }

  Json array(int depth) {
    check_depth(depth);
    Json v;
    v.kind = Json::Kind::Array;
    ++i_;  // '['
    skip_ws();
    if (peek() == ']') {
      ++i_;
      return v;
    }
    for (;;) {
      skip_ws();
      v.items.push_back(value(depth));
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() == ']') {
        ++i_;
        return v;
      }
      error("expected ',' or ']'");
    }
  }

  Json number() {
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
    Json v;
    v.kind = Json::Kind::Number;
    // from_chars: locale-independent; out of range (1e999) is refused rather than read as infinity
    const auto r = std::from_chars(p_ + start, p_ + i_, v.number);
    if (r.ec != std::errc() || r.ptr != p_ + i_ || !std::isfinite(v.number)) {
      i_ = start;
      error("number out of range");
    }
    return v;
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

  std::string string() {
    ++i_;  // opening quote
    std::string out;
    for (;;) {
      const int c = peek();
      if (c < 0) error("unterminated string");
      if (c == '"') {
        ++i_;
        return out;
      }
      if (c == '\\') {
        escape(out);
      } else if (c < 0x20) {
        error("control character in a string (escape it)");
      } else if (c < 0x80) {
        out += static_cast<char>(c);
        ++i_;
      } else {
        utf8_char(out);
      }
    }
  }
};

}  // namespace

Json parse_json(const char* data, size_t size, const std::string& what) {
  return Parser(data, size, what).document();
}

}  // namespace bhr
