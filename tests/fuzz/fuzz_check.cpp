// libFuzzer harness over the request check (request_check.hpp) and the spec it reads
// (openapi.hpp): hostile targets, bodies and content types against the spec plumber wrote for
// tests/apps/typed.R, and hostile specs against a few requests.
//
// Input: the first byte picks the mode and the Content-Type. Bit 7 set: the rest is a spec, parsed,
// and if it parses, each of a few requests matched and checked against it. Otherwise the rest is
// "METHOD TARGET\nBODY" checked against the typed.R spec.
//
// Fails (abort) when the checker crashes or trips a sanitizer, or breaks its promises: a request
// that passes yields no detail; each violation names a parameter of the operation, at its place
// (path parameters for "path"), with one of FastAPI's types and a message; the detail serializes.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "json.hpp"
#include "openapi.hpp"
#include "request_check.hpp"

namespace {

// tests/apps/typed.openapi.json, cut to what the checker reads.
constexpr std::string_view kSpec = R"({"openapi":"3.0.3","paths":{
"/search":{"get":{"parameters":[
 {"name":"n","in":"query","required":true,"schema":{"type":"integer","format":"int64"}},
 {"name":"x","in":"query","required":false,"schema":{"type":"number","format":"double"}},
 {"name":"flag","in":"query","required":false,"schema":{"type":"boolean"}},
 {"name":"label","in":"query","required":false,"schema":{"type":"string"}},
 {"name":"ids","in":"query","required":false,"schema":{"type":"array","items":{"type":"integer"}}}]}},
"/items/{id}":{"get":{"parameters":[{"name":"id","in":"path","required":true,"schema":{"type":"integer"}}]}},
"/items/latest":{"get":{}},
"/fit":{"post":{"parameters":[
 {"name":"wt","in":"query","required":true,"schema":{"type":"number"}},
 {"name":"hp","in":"query","required":true,"schema":{"type":"integer"}},
 {"name":"am","in":"query","required":false,"schema":{"type":"boolean"}},
 {"name":"tags","in":"query","required":false,"schema":{"type":"array","items":{"type":"string"}}}],
 "requestBody":{"content":{"application/json":{"schema":{"type":"object","required":["k"],
 "properties":{"k":{"type":"number"},"v":{"type":"array","items":{"type":"boolean"}}}}}}}}},
"/r/{a}/{b}":{"put":{"parameters":[{"name":"a","in":"path","schema":{"type":"number"}},
 {"name":"b","in":"path","schema":{"type":"boolean"}}]}}}})";

constexpr const char *kContentTypes[] = {"",
                                         "application/json",
                                         "application/json; charset=utf-8",
                                         "text/json",
                                         "application/x-www-form-urlencoded",
                                         "multipart/form-data; boundary=x",
                                         "text/plain",
                                         "application/octet-stream",
                                         "APPLICATION/JSON",
                                         "application/xml"};

[[noreturn]] void fail(const char *what, std::string_view input) {
  std::fprintf(stderr, "fuzz_check: %s\ninput: %.*s\n", what, static_cast<int>(input.size()),
               input.data());
  std::abort();
}

void check_one(const valve::ApiSpec &spec, std::string_view method, std::string_view target,
               const std::string_view *body, std::string_view content_type,
               std::string_view input) {
  size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  std::string_view query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
  const valve::ApiOperation *op = spec.match(method, path);
  if (!op) return;
  if (op->method != method) fail("matched another method", input);
  auto violations = valve::check_request(*op, path, query, body, content_type);
  for (const valve::Violation &v : violations) {
    const valve::ApiParam *param = nullptr;
    for (const auto &p : op->params)
      if (p.name == v.name) param = &p;
    if (!param) fail("a violation names no parameter of the operation", input);
    std::string_view where = v.where;
    if ((where == "path") != (param->in == valve::ParamIn::path))
      fail("a violation's place is not its parameter's", input);
    if (where != "path" && where != "query" && where != "body") fail("unknown place", input);
    if (std::string_view(v.type).empty() || std::string_view(v.msg).empty())
      fail("a violation without type or message", input);
    if (std::string_view(v.type) == "missing" && !param->required)
      fail("an optional parameter reported missing", input);
    if (v.index >= 0 && !param->array && where == "query")
      fail("an index for a scalar query parameter", input);
  }
  valve::Json detail = valve::check_detail(violations);
  if (detail.size() != violations.size()) fail("detail and violations differ", input);
  std::string text = valve::json_text(detail);
  if (text.empty() || text.front() != '[') fail("detail is not a JSON array", input);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static std::string error;
  static auto typed = valve::ApiSpec::parse(kSpec, &error);
  if (!typed) fail("the built-in spec does not parse", error);
  if (size == 0) return 0;
  std::string_view input(reinterpret_cast<const char *>(data), size);
  uint8_t mode = data[0];
  std::string_view content_type = kContentTypes[(mode & 0x7f) % std::size(kContentTypes)];
  std::string_view rest = input.substr(1);

  if (mode & 0x80) {
    auto spec = valve::ApiSpec::parse(rest, &error);
    if (!spec) return 0;
    static constexpr std::string_view kTargets[] = {
        "/", "/a", "/a/1", "/search?n=1&x=y", "/items/5", "/x/y/z?a=1&a=2"};
    static constexpr std::string_view kMethods[] = {"GET", "POST", "PUT"};
    std::string_view body = R"({"a": 1, "b": [true, "x"], "n": null})";
    for (auto m : kMethods)
      for (auto t : kTargets) check_one(*spec, m, t, &body, "application/json", input);
    return 0;
  }

  size_t nl = rest.find('\n');
  std::string_view line = rest.substr(0, nl);
  std::string_view body = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
  size_t space = line.find(' ');
  std::string_view method = space == std::string_view::npos ? "GET" : line.substr(0, space);
  std::string_view target = space == std::string_view::npos ? line : line.substr(space + 1);
  check_one(*typed, method, target, &body, content_type, input);
  check_one(*typed, method, target, nullptr, content_type, input);  // a body not read whole
  return 0;
}
