#include "request_check.hpp"

#include "util.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <optional>

namespace valve {

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// httpuv's decodeURIComponent: %XX decoded, a malformed escape kept as it is.
std::string percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

// A query string or form as plumber's parseQS reads it: '+' is a space, pairs split on '&', each
// on '=' with empty pieces left out, kept only when exactly a key and a value remain; both
// percent-decoded (decoded() does it, for the few that need it). The first pairs in place, so that
// a usual query allocates nothing.
// The bytes a query's scan stops at: separators and escapes.
constexpr auto kSpecial = [] {
  std::array<bool, 256> table{};
  for (unsigned char c : {'&', '=', '%', '+'}) table[c] = true;
  return table;
}();

class Pairs {
 public:
  // Raw views; the encoded ones ('%' or '+') are decoded where they are used.
  struct Pair {
    std::string_view key, value;
    bool key_encoded = false, value_encoded = false;
  };

  explicit Pairs(std::string_view text) {
    if (!text.empty() && text.front() == '?') text.remove_prefix(1);
    // One pass: a piece ends at '=' or '&', a pair at '&' (or the end).
    std::string_view pieces[2];
    size_t n = 0, start = 0;
    bool encoded[2] = {false, false}, escapes = false;
    for (size_t i = 0; i <= text.size(); ++i) {
      while (i < text.size() && !kSpecial[static_cast<unsigned char>(text[i])]) ++i;
      char c = i < text.size() ? text[i] : '&';
      if (c == '%' || c == '+') {
        escapes = true;
        continue;
      }
      if (i > start) {
        if (n < 2) {
          pieces[n] = text.substr(start, i - start);
          encoded[n] = escapes;
        }
        ++n;
      }
      escapes = false;
      start = i + 1;
      if (c == '&') {
        if (n == 2) add({pieces[0], pieces[1], encoded[0], encoded[1]});
        n = 0;
      }
    }
  }

  template <typename F>
  void each(F &&f) const {
    for (size_t i = 0; i < count_; ++i) f(i < kInPlace ? in_place_[i] : more_[i - kInPlace]);
  }

 private:
  static constexpr size_t kInPlace = 16;

  void add(Pair pair) {
    if (count_ < kInPlace)
      in_place_[count_] = pair;
    else
      more_.push_back(pair);
    ++count_;
  }

  Pair in_place_[kInPlace];
  size_t count_ = 0;
  std::vector<Pair> more_;
};

// plumber's decoding of a query piece: '+' a space, then %XX.
std::string decoded(std::string_view s) {
  std::string spaced(s);
  for (char &c : spaced)
    if (c == '+') c = ' ';
  return percent_decode(spaced);
}

bool key_is(const Pairs::Pair &pair, std::string_view name) {
  if (!pair.key_encoded) return pair.key == name;
  return decoded(pair.key) == name;
}

enum class BodyKind { none, json, form, unknown };

bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

// Which of plumber's default parsers (json, form, text, octet, multi) takes the body, as its
// parser_picker chooses: by the media type in any case, else by the first byte.
BodyKind body_kind(std::string_view content_type, std::string_view body) {
  std::string_view type = content_type.substr(0, content_type.find(';'));
  if (type.empty()) {
    if (body.empty()) return BodyKind::none;
    return body.front() == '{' || body.front() == '[' ? BodyKind::json : BodyKind::form;
  }
  if (iequals(type, "application/json") || iequals(type, "text/json")) return BodyKind::json;
  if (iequals(type, "application/x-www-form-urlencoded")) return BodyKind::form;
  if (istarts_with(type, "text/") || iequals(type, "application/octet-stream"))
    return BodyKind::none;
  if (istarts_with(type, "multipart/")) return BodyKind::unknown;
  return BodyKind::form;  // plumber's fallback for a type it has no parser for
}

struct Failure {
  const char *type;
  const char *msg;
};

Failure text_failure(ParamType t, std::string_view text) {
  switch (t) {
    case ParamType::integer: {
      // Digits beyond R's integer range read as NA, a different mistake from letters.
      std::string_view s = text;
      while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
      while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
      if (!s.empty() && (s.front() == '-' || s.front() == '+')) s.remove_prefix(1);
      bool digits = s.size() >= 10 && s.find_first_not_of("0123456789") == std::string_view::npos;
      if (digits)
        return {"int_parsing_size",
                "Input should be a valid integer, R's integers go from -2147483647 to 2147483647"};
      return {"int_parsing",
              "Input should be a valid integer, unable to parse string as an integer"};
    }
    case ParamType::number:
      return {"float_parsing",
              "Input should be a valid number, unable to parse string as a number"};
    case ParamType::boolean:
      return {"bool_parsing", "Input should be a valid boolean, unable to interpret input"};
    default:
      return {"", ""};
  }
}

Failure type_failure(ParamType t) {
  switch (t) {
    case ParamType::integer:
      return {"int_type", "Input should be a valid integer"};
    case ParamType::number:
      return {"float_type", "Input should be a valid number"};
    case ParamType::boolean:
      return {"bool_type", "Input should be a valid boolean"};
    default:
      return {"", ""};
  }
}

bool checked_type(ParamType t) { return t != ParamType::string && t != ParamType::other; }

// A path parameter's value: one plumber's router takes, and R converts (an int in R's range);
// for an array, each comma-separated item, as plumber's converter splits it.
bool valid_path(const ApiParam &p, std::string_view seg) {
  if (!route_text(p.type, p.array, seg)) return false;
  if (!p.array) return valid_path_text(p.type, seg);
  if (!seg.empty() && seg.back() == ',') seg.remove_suffix(1);
  while (true) {
    size_t comma = seg.find(',');
    if (!valid_path_text(p.type, seg.substr(0, comma))) return false;
    if (comma == std::string_view::npos) return true;
    seg.remove_prefix(comma + 1);
  }
}

// One JSON value (not an array) of type t; else *why says what is wrong.
bool json_scalar_ok(ParamType t, const nlohmann::json &v, Failure *why) {
  if (v.is_string()) {
    const std::string &s = v.get_ref<const std::string &>();
    if (valid_text(t, s)) return true;
    *why = text_failure(t, s);
    return false;
  }
  switch (t) {
    case ParamType::integer:
      if (v.is_number_integer() || v.is_number_unsigned() || v.is_number_float()) {
        double d = v.get<double>();
        if (v.is_number_float() && std::trunc(d) != d) {
          *why = {"int_from_float",
                  "Input should be a valid integer, got a number with a fractional part"};
          return false;
        }
        if (std::fabs(d) > 2147483647.0) {
          *why = {"int_parsing_size",
                  "Input should be a valid integer, R's integers go from -2147483647 to "
                  "2147483647"};
          return false;
        }
        return true;
      }
      break;
    case ParamType::number:
      if (v.is_number()) return true;
      break;
    case ParamType::boolean:
      if (v.is_boolean()) return true;
      if ((v.is_number_integer() || v.is_number_unsigned()) &&
          (v.get<int64_t>() == 0 || v.get<int64_t>() == 1))
        return true;
      break;
    default:
      return true;
  }
  *why = type_failure(t);
  return false;
}

Json to_input(const nlohmann::json &v) { return Json::parse(v.dump(), nullptr, false); }

// The fastest path for a JSON body: a plain object of ASCII keys and values without escapes,
// nested at most 32 deep, scanned in one pass with no allocation. It says which parameters the
// object names and whether each value has its type; anything else (escapes, non-ASCII bytes, a
// malformed body) is `unsure` and goes to nlohmann's parser below, which decides.
class QuickJson {
 public:
  enum Result { ok, wrong, unsure };
  QuickJson(std::string_view text, const ApiOperation &op) : s_(text), op_(op) {}
  uint64_t found = 0;
  bool object = false;

  Result run() {
    ws();
    if (i_ < s_.size() && s_[i_] == '{') {
      object = true;
      ++i_;
      ws();
      if (peek('}')) {
        ++i_;
      } else {
        for (;;) {
          std::string_view key;
          if (!string(&key)) return unsure;
          const ApiParam *param = nullptr;
          for (size_t k = 0; k < op_.params.size() && k < 64; ++k) {
            const ApiParam &p = op_.params[k];
            if (p.in != ParamIn::path && p.name == key) {
              param = &p;
              found |= uint64_t{1} << k;
            }
          }
          ws();
          if (!peek(':')) return unsure;
          ++i_;
          ws();
          bool typed = param && param->type != ParamType::string && param->type != ParamType::other;
          if (typed && peek('[')) {
            ++i_;
            ws();
            if (peek(']')) {
              ++i_;
            } else {
              for (;;) {
                if (!scalar(param->type)) return failed_ ? wrong : unsure;
                ws();
                if (peek(']')) {
                  ++i_;
                  break;
                }
                if (!peek(',')) return unsure;
                ++i_;
                ws();
              }
            }
          } else if (typed) {
            if (!scalar(param->type)) return failed_ ? wrong : unsure;
          } else if (!skip(0)) {
            return unsure;
          }
          ws();
          if (peek('}')) {
            ++i_;
            break;
          }
          if (!peek(',')) return unsure;
          ++i_;
          ws();
        }
      }
    } else if (!skip(0)) {
      return unsure;
    }
    ws();
    return i_ == s_.size() ? ok : unsure;
  }

 private:
  bool peek(char c) const { return i_ < s_.size() && s_[i_] == c; }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r'))
      ++i_;
  }
  bool word(std::string_view w) {
    if (s_.substr(i_, w.size()) != w) return false;
    i_ += w.size();
    return true;
  }
  // A string without escapes, control characters or non-ASCII bytes.
  bool string(std::string_view *out) {
    if (!peek('"')) return false;
    size_t start = ++i_;
    for (; i_ < s_.size(); ++i_) {
      auto c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') {
        *out = s_.substr(start, i_ - start);
        ++i_;
        return true;
      }
      if (c == '\\' || c < 0x20 || c >= 0x80) return false;
    }
    return false;
  }
  // RFC 8259's number; *integral when it has no fraction or exponent.
  bool number(std::string_view *out, bool *integral) {
    size_t start = i_;
    if (peek('-')) ++i_;
    if (peek('0')) {
      ++i_;
    } else if (i_ < s_.size() && s_[i_] >= '1' && s_[i_] <= '9') {
      while (i_ < s_.size() && is_digit(s_[i_])) ++i_;
    } else {
      return false;
    }
    *integral = true;
    if (peek('.')) {
      *integral = false;
      ++i_;
      if (!(i_ < s_.size() && is_digit(s_[i_]))) return false;
      while (i_ < s_.size() && is_digit(s_[i_])) ++i_;
    }
    if (peek('e') || peek('E')) {
      *integral = false;
      ++i_;
      if (peek('+') || peek('-')) ++i_;
      if (!(i_ < s_.size() && is_digit(s_[i_]))) return false;
      while (i_ < s_.size() && is_digit(s_[i_])) ++i_;
    }
    *out = s_.substr(start, i_ - start);
    return true;
  }
  static bool is_digit(char c) { return c >= '0' && c <= '9'; }
  // One value for a typed parameter: false when it is not of type t (failed_) or not plain JSON.
  bool scalar(ParamType t) {
    if (peek('"')) {
      std::string_view text;
      if (!string(&text)) return false;
      return valid_text(t, text) || (failed_ = true, false);
    }
    if (peek('t') || peek('f')) {
      if (!word("true") && !word("false")) return false;
      return t == ParamType::boolean || (failed_ = true, false);
    }
    if (peek('n')) {
      if (!word("null")) return false;
      failed_ = true;
      return false;
    }
    if (peek('[') || peek('{')) {
      failed_ = true;  // an array in an array, or an object
      return false;
    }
    std::string_view text;
    bool integral = false;
    if (!number(&text, &integral)) return false;
    if (t == ParamType::number) return true;
    double v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || end != text.data() + text.size()) return false;
    bool good = t == ParamType::integer ? std::trunc(v) == v && std::fabs(v) <= 2147483647.0
                                        : integral && (v == 0 || v == 1);
    return good || (failed_ = true, false);
  }
  // Any plain value, its containers matched.
  bool skip(int depth) {
    if (depth > 32) return false;
    if (peek('{') || peek('[')) {
      char close = s_[i_] == '{' ? '}' : ']';
      bool obj = close == '}';
      ++i_;
      ws();
      if (peek(close)) {
        ++i_;
        return true;
      }
      for (;;) {
        if (obj) {
          std::string_view key;
          if (!string(&key)) return false;
          ws();
          if (!peek(':')) return false;
          ++i_;
          ws();
        }
        if (!skip(depth + 1)) return false;
        ws();
        if (peek(close)) {
          ++i_;
          return true;
        }
        if (!peek(',')) return false;
        ++i_;
        ws();
      }
    }
    if (peek('"')) {
      std::string_view text;
      return string(&text);
    }
    if (peek('t')) return word("true");
    if (peek('f')) return word("false");
    if (peek('n')) return word("null");
    std::string_view text;
    bool integral;
    return number(&text, &integral);
  }

  std::string_view s_;
  const ApiOperation &op_;
  size_t i_ = 0;
  bool failed_ = false;
};

// The fast path for a JSON body: one pass with nlohmann's SAX parser (no document built) that
// notes which parameters the top-level object names and whether each value has its type. Only a
// body with a mistake is parsed again whole, to name each one (Checker::json).
class JsonScan final : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit JsonScan(const ApiOperation &op) : op_(op) {}
  uint64_t found = 0;   // bit i: op.params[i] was named
  bool wrong = false;   // some value is not of its type
  bool object = false;  // the body is an object (else plumber takes no named arguments from it)

  bool null() override { return value(kNull); }
  bool boolean(bool) override { return value(kBool); }
  bool number_integer(number_integer_t v) override { return integer(static_cast<double>(v)); }
  bool number_unsigned(number_unsigned_t v) override { return integer(static_cast<double>(v)); }
  bool number_float(number_float_t v, const string_t &) override {
    if (!checking()) return true;
    ParamType t = current_->type;
    if (t == ParamType::integer) wrong |= std::trunc(v) != v || std::fabs(v) > 2147483647.0;
    wrong |= t == ParamType::boolean;
    return true;
  }
  bool string(string_t &v) override {
    if (checking() && !valid_text(current_->type, v)) wrong = true;
    return true;
  }
  bool binary(binary_t &) override { return true; }
  bool start_object(std::size_t) override {
    if (depth_ == 0) object = true;
    if (checking()) wrong = true;
    ++depth_;
    return true;
  }
  bool key(string_t &k) override {
    if (depth_ != 1 || !object) return true;
    current_ = nullptr;
    for (size_t i = 0; i < op_.params.size(); ++i) {
      const ApiParam &p = op_.params[i];
      if (p.in != ParamIn::path && p.name == k) {
        current_ = &p;
        found |= uint64_t{1} << i;
      }
    }
    return true;
  }
  bool end_object() override { return end(); }
  bool start_array(std::size_t) override {
    if (depth_ == 2 && checking()) wrong = true;  // an array in an array
    ++depth_;
    return true;
  }
  bool end_array() override { return end(); }
  bool parse_error(std::size_t, const std::string &, const nlohmann::detail::exception &) override {
    return false;
  }

 private:
  enum Kind { kNull, kBool };
  // A scalar at the top of a parameter's value, or an item of its array.
  bool checking() const {
    return object && current_ && (depth_ == 1 || depth_ == 2) &&
           current_->type != ParamType::string && current_->type != ParamType::other;
  }
  bool value(Kind kind) {
    if (checking()) wrong |= kind == kNull || current_->type != ParamType::boolean;
    return true;
  }
  bool integer(double v) {
    if (!checking()) return true;
    if (current_->type == ParamType::integer) wrong |= std::fabs(v) > 2147483647.0;
    if (current_->type == ParamType::boolean) wrong |= v != 0 && v != 1;
    return true;
  }
  bool end() {
    --depth_;
    return true;
  }

  const ApiOperation &op_;
  const ApiParam *current_ = nullptr;
  int depth_ = 0;
};

class Checker {
 public:
  explicit Checker(std::vector<Violation> &out) : out_(out) {}

  void fail(const char *where, const ApiParam &p, int index, Failure f, Json input) {
    Violation v;
    v.where = where;
    v.name = p.name;
    v.index = index;
    v.type = f.type;
    v.msg = f.msg;
    v.input = std::move(input);
    out_.push_back(std::move(v));
  }

  // A text value (query, path, form): an array's may be several, comma-separated.
  void text(const char *where, const ApiParam &p, const Pairs::Pair &pair, int *index) {
    if (!checked_type(p.type)) return;
    std::string storage;
    std::string_view value = pair.value;
    if (pair.value_encoded) value = storage = decoded(pair.value);
    if (valid_text(p.type, value)) {
      ++*index;
      return;
    }
    if (p.array && value.find(',') != std::string_view::npos) {
      // plumber's array pattern for a path, (item,?)+: each comma-separated item of the type.
      bool all = true;
      for (std::string_view rest = value; all;) {
        size_t comma = rest.find(',');
        std::string_view item = rest.substr(0, comma);
        all = !item.empty() && valid_text(p.type, item);
        if (comma == std::string_view::npos) break;
        rest.remove_prefix(comma + 1);
        if (rest.empty()) break;  // a trailing comma, as the pattern allows
      }
      if (all) {
        ++*index;
        return;
      }
    }
    fail(where, p, p.array ? *index : -1, text_failure(p.type, value), Json(std::string(value)));
    ++*index;
  }

  void json(const ApiParam &p, const nlohmann::json &v) {
    if (!checked_type(p.type)) return;
    Failure why{};
    if (v.is_array()) {
      int i = 0;
      for (auto &item : v) {
        if (item.is_array() || item.is_object() || !json_scalar_ok(p.type, item, &why))
          fail("body", p, i, item.is_array() || item.is_object() ? type_failure(p.type) : why,
               to_input(item));
        ++i;
      }
      return;
    }
    if (v.is_object() || v.is_null() || !json_scalar_ok(p.type, v, &why))
      fail("body", p, -1, v.is_object() || v.is_null() ? type_failure(p.type) : why, to_input(v));
  }

 private:
  std::vector<Violation> &out_;
};

}  // namespace

std::vector<Violation> check_request(const ApiOperation &op, std::string_view path,
                                     std::string_view query, const std::string_view *body,
                                     std::string_view content_type) {
  std::vector<Violation> out;
  Checker check(out);
  bool has_args = false;
  for (const ApiParam &p : op.params) has_args |= p.in != ParamIn::path;

  // Path parameters, from the segments the template names.
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  for (const ApiOperation::Segment &s : op.segments) {
    size_t slash = path.find('/');
    std::string_view seg = path.substr(0, slash);
    path = slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1);
    if (s.param < 0) continue;
    const ApiParam &p = op.params[static_cast<size_t>(s.param)];
    if (checked_type(p.type) && !valid_path(p, seg))
      check.fail("path", p, -1, text_failure(p.type, seg), Json(std::string(seg)));
  }
  if (!has_args) return out;

  Pairs query_pairs(query);
  // The body's arguments, when plumber would parse some with its default parsers and valve has
  // the body whole.
  BodyKind kind = body && !op.own_parsers ? body_kind(content_type, *body) : BodyKind::unknown;
  nlohmann::json json_body;
  std::optional<Pairs> form;
  uint64_t json_found = 0;
  bool json_scanned = false;
  QuickJson quick(body ? *body : std::string_view(), op);
  QuickJson::Result quick_result = QuickJson::unsure;
  if (kind == BodyKind::json && body && !body->empty() && op.params.size() <= 64)
    quick_result = quick.run();
  // A JSON body that is not an object (an array of objects is a data frame to plumber, whose
  // columns it passes as arguments) is not looked into.
  bool json_object = true;
  if (quick_result == QuickJson::ok) {
    json_scanned = quick.object;
    json_found = quick.found;
    json_object = quick.object;
  } else if (kind == BodyKind::json && body && !body->empty()) {
    JsonScan scan(op);
    if (!nlohmann::json::sax_parse(*body, &scan))
      return out;  // plumber answers a body it cannot parse itself
    json_object = scan.object;
    if (scan.wrong || op.params.size() > 64) {
      json_body = nlohmann::json::parse(*body, nullptr, false);
      if (!json_body.is_object()) json_body = nlohmann::json();  // no named arguments
    } else {
      json_scanned = scan.object;
      json_found = scan.found;
    }
  } else if (kind == BodyKind::form && body) {
    form.emplace(*body);
  }
  bool body_known = kind != BodyKind::unknown && json_object;

  for (size_t i = 0; i < op.params.size(); ++i) {
    const ApiParam &p = op.params[i];
    if (p.in == ParamIn::path) continue;
    bool found = json_scanned && (json_found >> i & 1);
    int index = 0;
    // plumber gives a function the first of its query, path and body arguments of a name: a
    // body value behind a query or path one never reaches R.
    bool shadowed = false;
    query_pairs.each([&](const Pairs::Pair &pair) {
      if (!key_is(pair, p.name)) return;
      shadowed = true;
      if (p.in != ParamIn::query) return;
      found = true;
      check.text("query", p, pair, &index);
    });
    for (const ApiParam &q : op.params) shadowed |= q.in == ParamIn::path && q.name == p.name;
    if (shadowed) {
      // checked where it was found first
    } else if (form) {
      form->each([&](const Pairs::Pair &pair) {
        if (!key_is(pair, p.name)) return;
        found = true;
        check.text("body", p, pair, &index);
      });
    } else if (json_body.is_object()) {
      auto it = json_body.find(p.name);
      if (it != json_body.end()) {
        found = true;
        check.json(p, *it);
      }
    }
    if (!found && p.required && body_known) {
      Violation v;
      v.where = p.in == ParamIn::body ? "body" : "query";
      v.name = p.name;
      v.type = "missing";
      v.msg = "Field required";
      out.push_back(std::move(v));
    }
  }
  return out;
}

Json check_proxied(const ApiOperation *op, const Head &request, std::string_view target,
                   const std::string_view *body) {
  if (!op || !op->checked) return Json();
  size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  std::string_view query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
  const std::string *type = request.find("content-type");
  auto violations = check_request(*op, path, query, body, type ? *type : std::string_view());
  if (violations.empty()) return Json();
  return check_detail(violations);
}

Json check_detail(const std::vector<Violation> &violations) {
  Json detail = Json::array();
  for (const Violation &v : violations) {
    Json loc = Json::array({v.where, v.name});
    if (v.index >= 0) loc.push_back(v.index);
    detail.push_back(
        Json{{"loc", std::move(loc)}, {"msg", v.msg}, {"type", v.type}, {"input", v.input}});
  }
  return detail;
}

}  // namespace valve
