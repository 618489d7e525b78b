#include "request_check.hpp"

#include <cmath>
#include <deque>
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
// percent-decoded. Views into the text, or into `owned` where decoding changed them.
struct Pairs {
  struct Pair {
    std::string_view key, value;
  };
  std::vector<Pair> items;
  std::deque<std::string> owned;
  std::string spaced;  // the text with '+' made ' ', when it had any

  explicit Pairs(std::string_view text) {
    if (!text.empty() && text.front() == '?') text.remove_prefix(1);
    if (text.find('+') != std::string_view::npos) {
      spaced.assign(text);
      for (char &c : spaced)
        if (c == '+') c = ' ';
      text = spaced;
    }
    while (!text.empty()) {
      size_t amp = text.find('&');
      std::string_view part = text.substr(0, amp);
      text = amp == std::string_view::npos ? std::string_view() : text.substr(amp + 1);
      std::string_view pieces[2];
      size_t n = 0;
      while (!part.empty()) {
        size_t eq = part.find('=');
        std::string_view piece = part.substr(0, eq);
        part = eq == std::string_view::npos ? std::string_view() : part.substr(eq + 1);
        if (piece.empty()) continue;
        if (n < 2) pieces[n] = piece;
        ++n;
      }
      if (n != 2) continue;
      items.push_back({decoded(pieces[0]), decoded(pieces[1])});
    }
  }
  std::string_view decoded(std::string_view s) {
    if (s.find('%') == std::string_view::npos) return s;
    owned.push_back(percent_decode(s));
    return owned.back();
  }
};

enum class BodyKind { none, json, form, unknown };

// Which of plumber's default parsers (json, form, text, octet, multi) takes the body, as its
// parser_picker chooses: by the media type in lower case, else by the first byte.
BodyKind body_kind(std::string_view content_type, std::string_view body) {
  std::string type(content_type.substr(0, content_type.find(';')));
  for (char &c : type)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  if (type.empty()) {
    if (body.empty()) return BodyKind::none;
    return body.front() == '{' || body.front() == '[' ? BodyKind::json : BodyKind::form;
  }
  if (type == "application/json" || type == "text/json") return BodyKind::json;
  if (type == "application/x-www-form-urlencoded") return BodyKind::form;
  if (type.starts_with("text/") || type == "application/octet-stream") return BodyKind::none;
  if (type.starts_with("multipart/")) return BodyKind::unknown;
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
      bool digits = !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos;
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
  void text(const char *where, const ApiParam &p, std::string_view value, int *index) {
    if (!checked_type(p.type)) return;
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
    if (checked_type(p.type) && !valid_path_text(p.type, seg))
      check.fail("path", p, -1, text_failure(p.type, seg), Json(std::string(seg)));
  }
  if (!has_args) return out;

  Pairs query_pairs(query);
  // The body's arguments, when plumber would parse some and valve has the body whole.
  BodyKind kind = body ? body_kind(content_type, *body) : BodyKind::unknown;
  nlohmann::json json_body;
  std::optional<Pairs> form;
  if (kind == BodyKind::json && body && !body->empty()) {
    json_body = nlohmann::json::parse(*body, nullptr, false);
    if (json_body.is_discarded()) return out;  // plumber answers a body it cannot parse itself
    if (!json_body.is_object()) json_body = nlohmann::json();  // no named arguments
  } else if (kind == BodyKind::form && body) {
    form.emplace(*body);
  }
  bool body_known = kind != BodyKind::unknown;

  for (const ApiParam &p : op.params) {
    if (p.in == ParamIn::path) continue;
    bool found = false;
    int index = 0;
    if (p.in == ParamIn::query) {
      for (auto &pair : query_pairs.items) {
        if (pair.key != p.name) continue;
        found = true;
        check.text("query", p, pair.value, &index);
      }
    }
    if (form) {
      for (auto &pair : form->items) {
        if (pair.key != p.name) continue;
        found = true;
        check.text("body", p, pair.value, &index);
      }
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

Json check_proxied(const ApiSpec *spec, const Head &request, std::string_view target,
                   const std::string_view *body) {
  if (!spec) return Json();
  size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  const ApiOperation *op = spec->match(request.method, path);
  if (!op || !op->checked) return Json();
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
