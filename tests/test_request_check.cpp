// request_check.hpp: the check of one request against its operation, as plumber 1.2.1 reads
// arguments (query pairs, path, JSON or form bodies by Content-Type), and the same answer from the
// one-pass JSON scan and from nlohmann's parser (a body with an escape takes the second).
#include "request_check.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

using valve::ApiSpec;
using valve::Violation;

namespace {

std::shared_ptr<const ApiSpec> spec() {
  std::string error;
  auto s = ApiSpec::parse(R"({"paths": {
    "/q": {"get": {"parameters": [
      {"name": "n", "in": "query", "required": true, "schema": {"type": "integer"}},
      {"name": "x", "in": "query", "schema": {"type": "number"}},
      {"name": "b", "in": "query", "schema": {"type": "boolean"}},
      {"name": "s", "in": "query", "schema": {"type": "string"}},
      {"name": "v", "in": "query", "schema": {"type": "array", "items": {"type": "integer"}}}]},
     "post": {"parameters": [
      {"name": "n", "in": "query", "required": true, "schema": {"type": "integer"}},
      {"name": "v", "in": "query", "schema": {"type": "array", "items": {"type": "boolean"}}}]}},
    "/p/{id}": {"get": {"parameters": [
      {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}]}}}})",
                          &error);
  REQUIRE_MESSAGE(s, error);
  return s;
}

// "where.name[.index]:type" for each violation.
std::vector<std::string> run(std::string_view method, std::string_view target,
                             const std::string_view *body = nullptr,
                             std::string_view content_type = {}) {
  static auto s = spec();
  size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  const valve::ApiOperation *op = s->match(method, path);
  REQUIRE(op != nullptr);
  std::string_view query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
  std::string_view none;
  std::vector<std::string> out;
  for (const Violation &v :
       valve::check_request(*op, path, query, body ? body : &none, content_type)) {
    std::string loc = std::string(v.where) + "." + v.name;
    if (v.index >= 0) loc += "." + std::to_string(v.index);
    out.push_back(loc + ":" + v.type);
  }
  return out;
}

using V = std::vector<std::string>;

}  // namespace

TEST_CASE("request check: query values as plumber's parseQS reads them") {
  CHECK(run("GET", "/q?n=5") == V{});
  CHECK(run("GET", "/q") == V{"query.n:missing"});
  CHECK(run("GET", "/q?n=") == V{"query.n:missing"});     // an empty value is dropped
  CHECK(run("GET", "/q?n=a=b") == V{"query.n:missing"});  // so is a=b=c
  CHECK(run("GET", "/q?n==5") == V{});                    // empty pieces are left out
  CHECK(run("GET", "/q?n=%35") == V{});
  CHECK(run("GET", "/q?%6E=x") == V{"query.n:int_parsing"});  // an encoded key
  CHECK(run("GET", "/q?n=+5") == V{});                        // " 5": R trims it
  CHECK(run("GET", "/q?n=%2B5") == V{});
  CHECK(run("GET", "/q?n=5.5&x=1e-3&b=T") == V{"query.n:int_parsing"});
  CHECK(run("GET", "/q?n=3000000000") == V{"query.n:int_parsing_size"});
  CHECK(run("GET", "/q?n=1&x=abc&b=yes&s=anything") ==
        V{"query.x:float_parsing", "query.b:bool_parsing"});
  CHECK(run("GET", "/q?n=1&v=1&v=x&v=3,4&v=5,y") ==
        V{"query.v.1:int_parsing", "query.v.3:int_parsing"});
  CHECK(run("GET", "/q?n=1&n=2") == V{});
  CHECK(run("GET", "/q?n=1&n=b") == V{"query.n:int_parsing"});
}

TEST_CASE("request check: a typed path parameter") {
  CHECK(run("GET", "/p/12") == V{});
  CHECK(run("GET", "/p/x1") == V{"path.id:int_parsing"});
  CHECK(run("GET", "/p/+1") == V{"path.id:int_parsing"});  // plumber's pattern is -?\d+
}

TEST_CASE("request check: JSON and form bodies, by Content-Type as plumber picks its parser") {
  auto post = [](std::string_view body, std::string_view type, std::string_view target = "/q") {
    return run("POST", target, &body, type);
  };
  CHECK(post(R"({"n": 5})", "application/json") == V{});
  CHECK(post(R"({"n": 5})", "Application/JSON; charset=utf-8") == V{});
  CHECK(post(R"({"n": 5})", "") == V{});                    // sniffed: starts with {
  CHECK(post(R"( {"n": 5})", "") == V{"query.n:missing"});  // not sniffed: a form, no n
  CHECK(post(R"({"n": "5"})", "text/json") == V{});
  CHECK(post(R"({"n": 5.0, "v": [true, 0, 1]})", "application/json") == V{});
  CHECK(post(R"({"n": 5.5})", "application/json") == V{"body.n:int_from_float"});
  CHECK(post(R"({"n": null})", "application/json") == V{"body.n:int_type"});
  CHECK(post(R"({"n": {"a": 1}})", "application/json") == V{"body.n:int_type"});
  CHECK(post(R"({"n": [1, "x", [2]]})", "application/json") ==
        V{"body.n.1:int_parsing", "body.n.2:int_type"});
  CHECK(post(R"({"n": 1, "v": [true, 2]})", "application/json") == V{"body.v.1:bool_type"});
  // Not an object: not looked into (plumber makes [{"n": 5}] a data frame, its columns arguments).
  CHECK(post(R"([{"n": 5}])", "application/json") == V{});
  CHECK(post(R"([{"n": "x"}])", "application/json") == V{});
  CHECK(post(R"(5)", "application/json") == V{});
  CHECK(post(R"({"n": 5)", "application/json") == V{});  // plumber answers bad JSON itself
  CHECK(post(R"({"n": 5})", "text/plain") == V{"query.n:missing"});
  CHECK(post("n=5&v=T", "application/x-www-form-urlencoded") == V{});
  CHECK(post("n=x", "application/x-www-form-urlencoded") == V{"body.n:int_parsing"});
  CHECK(post("n=x", "application/xml") == V{"body.n:int_parsing"});  // plumber's fallback: form
  CHECK(post("--x", "multipart/form-data; boundary=x") == V{});      // not looked into
  CHECK(post("", "application/json", "/q?n=1") == V{});
  // The query and the body both count; of a name in both, R gets the query's (plumber passes the
  // first of its query, path and body arguments), the one checked.
  CHECK(post(R"({"x": 1})", "application/json", "/q?n=2") == V{});
  CHECK(post(R"({"n": "y"})", "application/json", "/q?n=x") == V{"query.n:int_parsing"});
  CHECK(post(R"({"n": "y"})", "application/json", "/q?n=1") == V{});
  CHECK(post("n=y", "application/x-www-form-urlencoded", "/q?n=1") == V{});
  CHECK(post(R"({"n": 1, "v": [true, "y"]})", "application/json", "/q?v=") ==
        V{"body.v.1:bool_parsing"});  // an empty query value is dropped: the body's counts
  // A body not read whole: its parameters are never missing.
  std::string_view path = "/q";
  static auto s = spec();
  auto unread = valve::check_request(*s->match("POST", path), path, "", nullptr, "");
  CHECK(unread.empty());
}

TEST_CASE("request check: an endpoint with its own @parser: its body is plumber's to read") {
  std::string error;
  auto s = ApiSpec::parse(R"({"paths": {"/t": {"post": {"parameters": [
      {"name": "n", "in": "query", "required": true, "schema": {"type": "integer"}}]}}},
    "x-valve-routes": [{"path": "/t", "methods": ["POST"], "params": [], "parsers": true}]})",
                          &error);
  REQUIRE_MESSAGE(s, error);
  const valve::ApiOperation *op = s->match("POST", "/t");
  REQUIRE(op != nullptr);
  std::string_view json = R"({"n": "x"})", empty;
  CHECK(valve::check_request(*op, "/t", "", &json, "application/json").empty());
  CHECK(valve::check_request(*op, "/t", "", &empty, "").empty());  // n may come from the body
  CHECK(valve::check_request(*op, "/t", "n=x", &json, "application/json").size() == 1);
}

TEST_CASE("request check: the one-pass JSON scan agrees with nlohmann's parser") {
  // An escape in a key sends a body to nlohmann's parser; the same body without it stays on the
  // scan. Both must give the same violations.
  const char *bodies[] = {
      R"({"n": 5, "v": [true, false], "z": {"deep": [1, {"a": null}]}})",
      R"({"n": "5", "v": []})",
      R"({"n": -0, "v": [1, 0]})",
      R"({"n": 1e2})",
      R"({"n": 2147483648})",
      R"({"n": true})",
      R"({"n": [1, 2.5]})",
      R"({"v": [[true]], "n": 1})",
      R"({"n": 1, "v": "T"})",
  };
  for (const char *b : bodies) {
    std::string plain = b;
    std::string escaped = plain;
    escaped.replace(1, 0, "\"\\u0071\": 0, ");  // a key "q" written with an escape
    std::string_view p = plain, e = escaped;
    CHECK_MESSAGE(
        run("POST", "/q", &p, "application/json") == run("POST", "/q", &e, "application/json"), b);
  }
}

TEST_CASE("request check: the detail is FastAPI's list") {
  static auto s = spec();
  std::string_view path = "/q";
  auto violations = valve::check_request(*s->match("GET", path), path, "n=x&v=1&v=y", nullptr, "");
  valve::Json detail = valve::check_detail(violations);
  CHECK(
      valve::json_text(detail) ==
      R"([{"loc":["query","n"],"msg":"Input should be a valid integer, unable to parse string as an integer","type":"int_parsing","input":"x"},)"
      R"({"loc":["query","v",1],"msg":"Input should be a valid integer, unable to parse string as an integer","type":"int_parsing","input":"y"}])");
}
