#include "openapi.hpp"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "util.hpp"

namespace valve {

namespace {

// Ordered: plumber routes in the order it declares, which the document keeps.
using Json = nlohmann::ordered_json;

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// R trims blanks around a number before as.integer / as.numeric read it.
std::string_view trim_blanks(std::string_view s) {
  auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!s.empty() && blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && blank(s.back())) s.remove_suffix(1);
  return s;
}

// An optional sign and decimal digits, within R's integer range (as.integer gives NA beyond it,
// and for -2147483648, which is NA_integer_).
bool valid_integer(std::string_view s, bool allow_plus) {
  if (s.empty()) return false;
  if (s.front() == '-' || (allow_plus && s.front() == '+')) s.remove_prefix(1);
  if (s.empty()) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (!is_digit(c)) return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
    if (v > 2147483647u) return false;
  }
  return true;
}

// What R's as.numeric reads as a number (not NA): decimals with an optional exponent (R takes
// "1e" as 1), hexadecimals, Inf, infinity and NaN in any case.
bool valid_number(std::string_view s) {
  if (!s.empty() && (s.front() == '-' || s.front() == '+')) s.remove_prefix(1);
  if (s.empty()) return false;
  if (iequals(s, "inf") || iequals(s, "infinity") || iequals(s, "nan")) return true;
  size_t i = 0;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    i = 2;
    size_t digits = 0;
    while (i < s.size() && is_hex(s[i])) ++i, ++digits;
    if (i < s.size() && s[i] == '.') {
      ++i;
      while (i < s.size() && is_hex(s[i])) ++i, ++digits;
    }
    if (digits == 0) return false;
    if (i < s.size() && (s[i] == 'p' || s[i] == 'P')) {
      ++i;
      if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
      size_t start = i;
      while (i < s.size() && is_digit(s[i])) ++i;
      if (i == start) return false;
    }
    return i == s.size();
  }
  size_t digits = 0;
  while (i < s.size() && is_digit(s[i])) ++i, ++digits;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && is_digit(s[i])) ++i, ++digits;
  }
  if (digits == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    while (i < s.size() && is_digit(s[i])) ++i;
  }
  return i == s.size();
}

// plumber's own pattern for a number in a path, -?\d*\.?\d+
bool path_number(std::string_view s) {
  if (!s.empty() && s.front() == '-') s.remove_prefix(1);
  size_t dot = s.find('.');
  std::string_view before = s.substr(0, dot == std::string_view::npos ? s.size() : dot);
  std::string_view after = dot == std::string_view::npos ? std::string_view() : s.substr(dot + 1);
  for (char c : before)
    if (!is_digit(c)) return false;
  for (char c : after)
    if (!is_digit(c)) return false;
  return dot == std::string_view::npos ? !before.empty() : !after.empty();
}

// as.logical's words (TRUE, true, True, T and their FALSE counterparts) and the ones plumber's
// own bool pattern takes besides ([01tfTF]).
bool valid_boolean(std::string_view s) {
  static constexpr std::string_view kWords[] = {"TRUE",  "true",  "True",  "T", "t", "1",
                                                "FALSE", "false", "False", "F", "f", "0"};
  for (auto w : kWords)
    if (s == w) return true;
  return false;
}

// plumber's boolean pattern for a path, [01tfTF]|true|false|TRUE|FALSE.
bool path_boolean(std::string_view s) {
  return (s.size() == 1 && std::string_view("01tfTF").find(s[0]) != std::string_view::npos) ||
         s == "true" || s == "false" || s == "TRUE" || s == "FALSE";
}

// A run of plumber's pattern for type t, repeated without separators, as its array pattern
// (?:(?:item),?)+ takes between two commas: -?\d+ runs are "1-2"; -?\d*\.?\d+ runs "1.5.5".
bool path_run(ParamType t, std::string_view s) {
  if (s.empty()) return false;
  switch (t) {
    case ParamType::integer:
    case ParamType::number:
      // Each '-' followed by a digit (or a '.' for numbers), each '.' by a digit, a digit last.
      for (size_t i = 0; i < s.size(); ++i) {
        char c = s[i], next = i + 1 < s.size() ? s[i + 1] : '\0';
        if (is_digit(c)) continue;
        if (c == '-' && (is_digit(next) || (t == ParamType::number && next == '.'))) continue;
        if (c == '.' && t == ParamType::number && is_digit(next)) continue;
        return false;
      }
      return true;
    case ParamType::boolean: {
      // Which prefixes are runs of words: linear, the words being at most 5 long.
      std::vector<bool> ok(s.size() + 1);
      ok[0] = true;
      for (size_t i = 0; i < s.size(); ++i) {
        if (!ok[i]) continue;
        for (size_t n = 1; n <= 5 && i + n <= s.size(); ++n)
          if (path_boolean(s.substr(i, n))) ok[i + n] = true;
      }
      return ok[s.size()];
    }
    case ParamType::string:
    case ParamType::other:
      return true;
  }
  return true;
}

// An object's string or boolean member; empty or false when it is missing or of another type.
std::string text_field(const Json &object, const char *key) {
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}
bool flag_field(const Json &object, const char *key) {
  auto it = object.find(key);
  return it != object.end() && it->is_boolean() && it->get<bool>();
}

// A schema's type: a string, or the first of OpenAPI 3.1's list of them besides "null"; "string"
// when it names none, "" when it is of another kind (not checked).
std::string schema_type(const Json &schema) {
  auto it = schema.find("type");
  if (it == schema.end()) return "string";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array())
    for (auto &t : *it)
      if (t.is_string() && t.get<std::string>() != "null") return t.get<std::string>();
  return "";
}

ParamType type_of(const Json &schema, bool *array) {
  *array = false;
  if (!schema.is_object()) return ParamType::string;
  std::string type = schema_type(schema);
  if (type == "array") {
    *array = true;
    auto items = schema.find("items");
    if (items == schema.end() || !items->is_object()) return ParamType::string;
    type = schema_type(*items);
    if (type == "array") return ParamType::other;
  }
  if (type == "integer") return ParamType::integer;
  if (type == "number") return ParamType::number;
  if (type == "boolean") return ParamType::boolean;
  if (type == "string") {
    std::string format = text_field(schema, "format");
    return format == "binary" ? ParamType::other : ParamType::string;
  }
  return ParamType::other;
}

std::string upper(std::string s) {
  for (char &c : s)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return s;
}

// Splits "/a/b" into "a", "b" ("/" is one empty segment); calls f(segment) for each, stopping when
// f returns false. False when stopped.
template <typename F>
bool for_each_segment(std::string_view path, F &&f) {
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  while (true) {
    size_t slash = path.find('/');
    if (!f(path.substr(0, slash))) return false;
    if (slash == std::string_view::npos) return true;
    path.remove_prefix(slash + 1);
  }
}

void add_param(ApiOperation &op, const Json &p) {
  if (!p.is_object()) return;
  std::string where = p.contains("in") ? text_field(p, "in") : std::string("query");
  ApiParam param;
  if (where == "query") {
    param.in = ParamIn::query;
  } else if (where == "path") {
    param.in = ParamIn::path;
  } else {
    return;  // header, cookie: plumber does not fill arguments from them
  }
  auto name = p.find("name");
  if (name == p.end() || !name->is_string()) return;
  param.name = name->get<std::string>();
  auto schema = p.find("schema");
  param.type = type_of(schema != p.end() ? *schema : Json(), &param.array);
  auto required = p.find("required");
  param.required = param.in == ParamIn::path ||
                   (required != p.end() && required->is_boolean() && required->get<bool>());
  op.params.push_back(std::move(param));
}

// A requestBody's object schema: each property a body parameter.
void add_body(ApiOperation &op, const Json &body) {
  if (!body.is_object()) return;
  auto content = body.find("content");
  if (content == body.end() || !content->is_object()) return;
  for (auto &[media, entry] : content->items()) {
    if (media != "application/json" && media != "application/x-www-form-urlencoded") continue;
    if (!entry.is_object()) continue;
    auto schema = entry.find("schema");
    if (schema == entry.end() || !schema->is_object()) continue;
    auto props = schema->find("properties");
    if (props == schema->end() || !props->is_object()) continue;
    std::vector<std::string> required;
    if (auto r = schema->find("required"); r != schema->end() && r->is_array())
      for (auto &n : *r)
        if (n.is_string()) required.push_back(n.get<std::string>());
    for (auto &[name, prop] : props->items()) {
      ApiParam param;
      param.name = name;
      param.in = ParamIn::body;
      param.type = type_of(prop, &param.array);
      param.required = std::find(required.begin(), required.end(), name) != required.end();
      op.params.push_back(std::move(param));
    }
    return;  // one media type's schema
  }
}

// An operation's parameters: its own, the path item's it does not override, its requestBody's.
void add_params(ApiOperation &op, const Json &item, const Json &op_json) {
  if (auto ps = op_json.find("parameters"); ps != op_json.end() && ps->is_array())
    for (auto &p : *ps) add_param(op, p);
  if (auto ps = item.find("parameters"); ps != item.end() && ps->is_array()) {
    for (auto &p : *ps) {
      if (!p.is_object() || !p.contains("name")) continue;
      std::string n = text_field(p, "name");
      bool known = false;
      for (auto &q : op.params) known |= q.name == n;
      if (!known) add_param(op, p);
    }
  }
  if (auto rb = op_json.find("requestBody"); rb != op_json.end()) add_body(op, *rb);
}

// The template's segments, each path parameter found in (or added to) op.params.
bool add_segments(ApiOperation &op) {
  return for_each_segment(op.path_template, [&](std::string_view seg) {
    ApiOperation::Segment s;
    if (seg.size() >= 2 && seg.front() == '{' && seg.back() == '}') {
      std::string_view name = seg.substr(1, seg.size() - 2);
      for (size_t i = 0; i < op.params.size(); ++i)
        if (op.params[i].in == ParamIn::path && op.params[i].name == name)
          s.param = static_cast<int>(i);
      if (s.param < 0) {  // a template parameter the list forgot: untyped
        ApiParam p;
        p.name = std::string(name);
        p.in = ParamIn::path;
        p.required = true;
        op.params.push_back(std::move(p));
        s.param = static_cast<int>(op.params.size() - 1);
      }
    } else {
      s.literal = std::string(seg);
    }
    op.segments.push_back(std::move(s));
    return true;
  });
}

void finish(ApiOperation &op) {
  for (auto &p : op.params)
    op.checked |= p.required || (p.type != ParamType::string && p.type != ParamType::other);
}

}  // namespace

bool valid_text(ParamType t, std::string_view text) {
  switch (t) {
    case ParamType::integer:
      return valid_integer(trim_blanks(text), true);
    case ParamType::number:
      return valid_number(trim_blanks(text));
    case ParamType::boolean:
      return valid_boolean(text);
    case ParamType::string:
    case ParamType::other:
      return true;
  }
  return true;
}

bool valid_path_text(ParamType t, std::string_view text) {
  switch (t) {
    case ParamType::integer:
      return valid_integer(text, false);
    case ParamType::number:
      return path_number(text);
    case ParamType::boolean:
      return valid_boolean(text);
    case ParamType::string:
    case ParamType::other:
      return !text.empty();
  }
  return true;
}

bool route_text(ParamType t, bool array, std::string_view text) {
  if (text.empty()) return false;
  if (!array) {
    switch (t) {
      case ParamType::integer:
        return path_run(t, text) && text.find('-', 1) == std::string_view::npos;
      case ParamType::number:
        return path_number(text);
      case ParamType::boolean:
        return path_boolean(text);
      case ParamType::string:
      case ParamType::other:
        return true;
    }
  }
  // Runs separated by single commas, a trailing comma allowed.
  if (text.front() == ',') return false;
  if (text.back() == ',') text.remove_suffix(1);
  while (true) {
    size_t comma = text.find(',');
    if (!path_run(t, text.substr(0, comma))) return false;
    if (comma == std::string_view::npos) return true;
    text.remove_prefix(comma + 1);
  }
}

const char *type_label(ParamType t) {
  switch (t) {
    case ParamType::integer:
      return "integer";
    case ParamType::number:
      return "number";
    case ParamType::boolean:
      return "boolean";
    case ParamType::string:
      return "string";
    case ParamType::other:
      return "value";
  }
  return "value";
}

const char *type_code(ParamType t) {
  switch (t) {
    case ParamType::integer:
      return "int";
    case ParamType::number:
      return "float";
    case ParamType::boolean:
      return "bool";
    case ParamType::string:
      return "string";
    case ParamType::other:
      return "value";
  }
  return "value";
}

std::shared_ptr<const ApiSpec> ApiSpec::parse(std::string_view json, std::string *error) {
  Json doc = Json::parse(json, nullptr, false);
  if (doc.is_discarded()) {
    *error = "not JSON";
    return nullptr;
  }
  if (!doc.is_object()) {
    *error = "not a JSON object";
    return nullptr;
  }
  auto paths = doc.find("paths");
  if (paths == doc.end() || !paths->is_object()) {
    *error = "no \"paths\" object (not an OpenAPI document)";
    return nullptr;
  }
  auto spec = std::make_shared<ApiSpec>();
  auto routes = doc.find("x-valve-routes");
  if (routes != doc.end() && routes->is_array() && !routes->empty()) {
    // The spec valve's worker script writes: plumber's routes in its order, each an operation
    // of the spec (two routes may share one: /o/<id:int> and /o/<id> are both /o/{id}).
    for (auto &route : *routes) {
      if (!route.is_object()) continue;
      std::string path = text_field(route, "path");
      auto methods = route.find("methods");
      if (path.empty() || path.front() != '/' || methods == route.end() || !methods->is_array())
        continue;
      auto item = paths->find(path);
      for (auto &m : *methods) {
        if (!m.is_string()) continue;
        ApiOperation op;
        op.method = upper(m.get<std::string>());
        op.path_template = path;
        if (item != paths->end() && item->is_object()) {
          std::string lower = op.method;
          for (char &c : lower)
            if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
          if (auto op_json = item->find(lower); op_json != item->end() && op_json->is_object())
            add_params(op, *item, *op_json);
        }
        if (!add_segments(op)) continue;
        // The route's own pattern types its path parameters, whatever the spec merged.
        if (auto ps = route.find("params"); ps != route.end() && ps->is_array()) {
          for (auto &p : *ps) {
            if (!p.is_object()) continue;
            std::string name = text_field(p, "name");
            for (auto &param : op.params) {
              if (param.in != ParamIn::path || param.name != name) continue;
              bool array = false;
              param.type = type_of(Json{{"type", text_field(p, "type")}}, &array);
              param.array = flag_field(p, "array");
            }
          }
        }
        op.own_parsers = flag_field(route, "parsers");
        finish(op);
        spec->operations_.push_back(std::move(op));
      }
    }
    return spec;
  }
  for (auto &[path, item] : paths->items()) {
    if (!item.is_object() || path.empty() || path.front() != '/') continue;
    for (auto &[method, op_json] : item.items()) {
      static constexpr std::string_view kMethods[] = {"get",     "put",  "post",  "delete",
                                                      "options", "head", "patch", "trace"};
      if (std::find(std::begin(kMethods), std::end(kMethods), method) == std::end(kMethods))
        continue;
      if (!op_json.is_object()) continue;
      ApiOperation op;
      op.method = upper(method);
      op.path_template = path;
      add_params(op, item, op_json);
      if (!add_segments(op)) continue;
      finish(op);
      spec->operations_.push_back(std::move(op));
    }
  }
  return spec;
}

size_t ApiSpec::checked_operations() const {
  size_t n = 0;
  for (auto &op : operations_) n += op.checked;
  return n;
}

const ApiOperation *ApiSpec::match(std::string_view method, std::string_view path) const {
  const ApiOperation *shape_only = nullptr;
  for (const ApiOperation &op : operations_) {
    if (op.method != method) continue;
    size_t i = 0;
    bool typed_ok = true;
    bool shape_ok = for_each_segment(path, [&](std::string_view seg) {
      if (i >= op.segments.size()) return false;
      const ApiOperation::Segment &s = op.segments[i++];
      if (s.param < 0) return seg == s.literal;
      if (seg.empty()) return false;
      const ApiParam &p = op.params[static_cast<size_t>(s.param)];
      typed_ok = typed_ok && route_text(p.type, p.array, seg);
      return true;
    });
    if (!shape_ok || i != op.segments.size()) continue;
    if (typed_ok) return &op;
    if (!shape_only) shape_only = &op;
  }
  return shape_only;
}

}  // namespace valve
