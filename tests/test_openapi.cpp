// openapi.hpp: the spec plumber 1.2.1 wrote for tests/apps/typed.R (typed.openapi.json, made by
// R: pr("typed.R")$getApiSpec() through jsonlite, as valve's worker script writes it), the
// operations and parameters read from it, matching paths as plumber routes them, what text each
// type takes, and the pool's spec from --openapi, replaced on a reload and kept when the new one
// does not parse.
#include "openapi.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "pool.hpp"
#include "pool_support.hpp"

using test::PoolHarness;
using valve::ApiOperation;
using valve::ApiSpec;
using valve::ParamIn;
using valve::ParamType;

namespace {

std::string fixture_path() {
  return std::string(VALVE_SOURCE_ROOT) + "/tests/apps/typed.openapi.json";
}

std::string read_all(const std::string &path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::shared_ptr<const ApiSpec> fixture() {
  std::string error;
  auto spec = ApiSpec::parse(read_all(fixture_path()), &error);
  REQUIRE_MESSAGE(spec != nullptr, error);
  return spec;
}

const valve::ApiParam *param(const ApiOperation &op, std::string_view name) {
  for (auto &p : op.params)
    if (p.name == name) return &p;
  return nullptr;
}

}  // namespace

TEST_CASE("openapi: plumber's spec gives each operation's typed and required parameters") {
  auto spec = fixture();
  REQUIRE(spec->operations().size() == 6);
  const ApiOperation *search = spec->match("GET", "/search");
  REQUIRE(search != nullptr);
  CHECK(search->path_template == "/search");
  CHECK(search->checked);
  REQUIRE(search->params.size() == 5);
  const valve::ApiParam *n = param(*search, "n");
  REQUIRE(n);
  CHECK(n->in == ParamIn::query);
  CHECK(n->type == ParamType::integer);
  CHECK(n->required);
  CHECK_FALSE(n->array);
  CHECK(param(*search, "x")->type == ParamType::number);
  CHECK_FALSE(param(*search, "x")->required);
  CHECK(param(*search, "flag")->type == ParamType::boolean);
  CHECK(param(*search, "label")->type == ParamType::string);
  const valve::ApiParam *ids = param(*search, "ids");
  CHECK(ids->type == ParamType::integer);
  CHECK(ids->array);

  // POST parameters: plumber 1.2.1 writes them "in": "query" (no requestBody); it fills them from
  // a JSON or form body as well.
  const ApiOperation *fit = spec->match("POST", "/fit");
  REQUIRE(fit != nullptr);
  CHECK(fit->method == "POST");
  CHECK(param(*fit, "wt")->type == ParamType::number);
  CHECK(param(*fit, "wt")->required);
  CHECK(param(*fit, "hp")->type == ParamType::integer);
  CHECK(param(*fit, "am")->type == ParamType::boolean);
  CHECK(param(*fit, "tags")->type == ParamType::string);
  CHECK(param(*fit, "tags")->array);

  // Untyped and optional: nothing to check.
  const ApiOperation *plain = spec->match("GET", "/plain");
  REQUIRE(plain != nullptr);
  CHECK_FALSE(plain->checked);
  CHECK(spec->checked_operations() == 3);
}

TEST_CASE("openapi: match() routes as plumber does: method, segments, typed path parameters") {
  auto spec = fixture();
  const ApiOperation *item = spec->match("GET", "/items/42");
  REQUIRE(item != nullptr);
  CHECK(item->path_template == "/items/{id}");
  REQUIRE(item->segments.size() == 2);
  CHECK(item->segments[0].literal == "items");
  REQUIRE(item->segments[1].param >= 0);
  const valve::ApiParam &id = item->params[static_cast<size_t>(item->segments[1].param)];
  CHECK(id.name == "id");
  CHECK(id.in == ParamIn::path);
  CHECK(id.type == ParamType::integer);
  CHECK(id.required);
  CHECK(spec->match("GET", "/items/-7") == item);
  // plumber's <id:int> does not take "latest": the static route declared after it does.
  const ApiOperation *latest = spec->match("GET", "/items/latest");
  REQUIRE(latest != nullptr);
  CHECK(latest->path_template == "/items/latest");
  // No route takes "abc": the typed template's operation, for the check to name the parameter.
  CHECK(spec->match("GET", "/items/abc") == item);
  CHECK(spec->match("GET", "/items/4.5") == item);
  CHECK(spec->match("GET", "/items/") == nullptr);
  CHECK(spec->match("GET", "/items") == nullptr);
  CHECK(spec->match("GET", "/items/1/2") == nullptr);
  CHECK(spec->match("POST", "/items/1") == nullptr);
  CHECK(spec->match("get", "/search") == nullptr);  // methods are upper case, as requests send
  CHECK(spec->match("GET", "/search/") == nullptr);
  CHECK(spec->match("GET", "/") == nullptr);
  CHECK(spec->match("GET", "") == nullptr);
}

TEST_CASE("openapi: x-valve-routes: plumber's own order and path patterns, own parsers") {
  // As valve's worker script writes it: /o/<id:int> and /o/<id> share the spec's /o/{id} (the
  // first one's types), declared before /o/latest; /up has its own @parser.
  std::string error;
  auto spec = ApiSpec::parse(R"({"paths": {
    "/o/{id}": {"get": {"parameters": [
      {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
      {"name": "n", "in": "query", "schema": {"type": "integer"}}]}},
    "/o/latest": {"get": {}},
    "/a/{ids}": {"get": {"parameters": [
      {"name": "ids", "in": "path", "required": true,
       "schema": {"type": "array", "items": {"type": "integer"}}}]}},
    "/up": {"post": {"parameters": [
      {"name": "n", "in": "query", "required": true, "schema": {"type": "integer"}}]}}},
   "x-valve-routes": [
    {"path": "/o/{id}", "methods": ["GET"], "params": [{"name": "id", "type": "integer", "array": false}], "parsers": false},
    {"path": "/o/{id}", "methods": ["GET"], "params": [{"name": "id", "type": "string", "array": false}], "parsers": false},
    {"path": "/o/latest", "methods": ["GET"], "params": [], "parsers": false},
    {"path": "/a/{ids}", "methods": ["GET"], "params": [{"name": "ids", "type": "integer", "array": true}], "parsers": false},
    {"path": "/up", "methods": ["POST", "PUT"], "params": [], "parsers": true}]})",
                             &error);
  REQUIRE_MESSAGE(spec, error);
  REQUIRE(spec->operations().size() == 6);
  const ApiOperation &typed = spec->operations()[0], &any = spec->operations()[1];
  CHECK(spec->match("GET", "/o/12") == &typed);
  CHECK(spec->match("GET", "/o/99999999999") == &typed);  // -?\d+, whatever R makes of it
  CHECK(spec->match("GET", "/o/abc") == &any);            // plumber's second route, not a 422
  CHECK(spec->match("GET", "/o/latest") == &any);         // declared after <id>: never reached
  CHECK(any.params[0].type == ParamType::string);
  CHECK(any.params[1].type == ParamType::integer);  // the query parameter stays the spec's
  // An array in a path: plumber's (?:(?:-?\d+),?)+.
  const ApiOperation *ids = &spec->operations()[3];
  CHECK(spec->match("GET", "/a/1,2,3") == ids);
  CHECK(spec->match("GET", "/a/1,2,") == ids);
  CHECK(spec->match("GET", "/a/1-2") == ids);
  CHECK(valve::route_text(ParamType::integer, true, "1,-2"));
  CHECK_FALSE(valve::route_text(ParamType::integer, true, "1,,2"));
  CHECK_FALSE(valve::route_text(ParamType::integer, true, ",1"));
  CHECK_FALSE(valve::route_text(ParamType::integer, true, "1,x"));
  CHECK(valve::route_text(ParamType::number, true, "1.5.5,-.5"));
  CHECK_FALSE(valve::route_text(ParamType::number, true, "1."));
  CHECK(valve::route_text(ParamType::boolean, true, "truefalse,T,0"));
  CHECK_FALSE(valve::route_text(ParamType::boolean, true, "True"));
  CHECK_FALSE(valve::route_text(ParamType::boolean, false, "True"));  // as.logical's, not plumber's
  CHECK(valve::route_text(ParamType::string, true, "a,b"));
  CHECK_FALSE(valve::route_text(ParamType::integer, false, "1-2"));
  CHECK_FALSE(valve::route_text(ParamType::integer, false, "+1"));
  // Each method of a route; its own @parser noted.
  const ApiOperation *up = spec->match("PUT", "/up");
  REQUIRE(up != nullptr);
  CHECK(up->own_parsers);
  CHECK(up->params.empty());  // the spec has no PUT /up
  CHECK(spec->match("POST", "/up")->params.size() == 1);
  CHECK_FALSE(typed.own_parsers);
}

TEST_CASE("openapi: OpenAPI 3.1's type lists, and members of unexpected kinds, parse") {
  std::string error;
  auto spec = ApiSpec::parse(R"({"paths": {"/a": {"get": {"parameters": [
    {"name": "n", "in": "query", "schema": {"type": ["null", "integer"]}},
    {"name": "m", "in": "query", "schema": {"type": 5, "format": 1}},
    {"name": 7, "in": "query"}, {"name": "k", "in": []}]}}},
   "x-valve-routes": [{"path": 3}, {"path": "/a", "methods": ["GET"], "params": [{"name": 1}],
                       "parsers": "yes"}]})",
                             &error);
  REQUIRE_MESSAGE(spec, error);
  REQUIRE(spec->operations().size() == 1);
  const ApiOperation &op = spec->operations()[0];
  REQUIRE(op.params.size() == 2);
  CHECK(op.params[0].type == ParamType::integer);
  CHECK(op.params[1].type == ParamType::other);
  CHECK_FALSE(op.own_parsers);
}

TEST_CASE("openapi: the text each type takes is what R and plumber read as one") {
  using valve::valid_path_text;
  using valve::valid_text;
  for (auto ok : {"5", "-5", "+5", "0", "05", " 7", "7 ", "2147483647", "-2147483647"})
    CHECK_MESSAGE(valid_text(ParamType::integer, ok), ok);
  for (auto bad : {"", "abc", "5.0", "5.7", "1e3", "0x1F", "2147483648", "-2147483648", "--5", "+",
                   "5a", "1 2", "99999999999999999999"})
    CHECK_MESSAGE(!valid_text(ParamType::integer, bad), bad);
  for (auto ok : {"1", "-1.5", ".5", "1.", "1e5", "1E-5", "1e", "+2", "0x1A", "0x1p3", "Inf",
                  "-inf", "infinity", "NaN", " 3 "})
    CHECK_MESSAGE(valid_text(ParamType::number, ok), ok);
  for (auto bad : {"", "abc", "NA", "1e5x", "1,5", ".", "-", "e5", "0x", "1..2", "1.2.3"})
    CHECK_MESSAGE(!valid_text(ParamType::number, bad), bad);
  for (auto ok : {"true", "TRUE", "True", "T", "t", "1", "false", "FALSE", "False", "F", "f", "0"})
    CHECK_MESSAGE(valid_text(ParamType::boolean, ok), ok);
  for (auto bad : {"", "yes", "no", "tRUE", " true", "2", "on"})
    CHECK_MESSAGE(!valid_text(ParamType::boolean, bad), bad);
  CHECK(valid_text(ParamType::string, ""));
  CHECK(valid_text(ParamType::string, "anything at all"));
  // A typed path parameter takes plumber's own pattern: -?\d+ (no plus, no blanks).
  CHECK(valid_path_text(ParamType::integer, "-12"));
  CHECK_FALSE(valid_path_text(ParamType::integer, "+12"));
  CHECK_FALSE(valid_path_text(ParamType::integer, " 12"));
  CHECK(valid_path_text(ParamType::number, "1.5"));
  CHECK(valid_path_text(ParamType::number, ".5"));
  CHECK_FALSE(valid_path_text(ParamType::number, "1e5"));
  CHECK_FALSE(valid_path_text(ParamType::number, "1."));
  CHECK_FALSE(valid_path_text(ParamType::string, ""));
}

TEST_CASE("openapi: other generators' specs: requestBody properties, path-level parameters") {
  std::string error;
  auto spec = ApiSpec::parse(R"({"openapi": "3.0.3", "paths": {
    "/a/{k}": {
      "parameters": [{"name": "k", "in": "path", "required": true, "schema": {"type": "number"}}],
      "put": {
        "parameters": [{"name": "X-Id", "in": "header", "schema": {"type": "integer"}}],
        "requestBody": {"content": {"application/json": {"schema": {"type": "object",
          "required": ["when"], "properties": {"when": {"type": "string"},
          "n": {"type": "array", "items": {"type": "boolean"}},
          "blob": {"type": "string", "format": "binary"}}}}}}
      }
    },
    "not-a-path": {"get": {}},
    "/b": {"get": "not an object", "summary": "x"}
  }})",
                             &error);
  REQUIRE_MESSAGE(spec, error);
  REQUIRE(spec->operations().size() == 1);
  const ApiOperation *op = spec->match("PUT", "/a/2.5");
  REQUIRE(op != nullptr);
  REQUIRE(op->params.size() == 4);  // the header is left out: plumber never reads it as an argument
  CHECK(param(*op, "X-Id") == nullptr);
  CHECK(param(*op, "k")->type == ParamType::number);
  CHECK(param(*op, "when")->in == ParamIn::body);
  CHECK(param(*op, "when")->required);
  CHECK(param(*op, "n")->array);
  CHECK(param(*op, "n")->type == ParamType::boolean);
  CHECK_FALSE(param(*op, "n")->required);
  CHECK(param(*op, "blob")->type == ParamType::other);
}

TEST_CASE("openapi: what is not an OpenAPI document is refused with a reason") {
  std::string error;
  CHECK(ApiSpec::parse("not json", &error) == nullptr);
  CHECK(error == "not JSON");
  CHECK(ApiSpec::parse("[1, 2]", &error) == nullptr);
  CHECK(error == "not a JSON object");
  CHECK(ApiSpec::parse(R"({"openapi": "3.0.3"})", &error) == nullptr);
  CHECK(error.find("paths") != std::string::npos);
  auto empty = ApiSpec::parse(R"({"paths": {}})", &error);
  REQUIRE(empty != nullptr);
  CHECK(empty->match("GET", "/") == nullptr);
}

TEST_CASE("openapi: the pool's spec comes from --openapi, is replaced on a reload, kept if bad") {
  char dir[] = "/tmp/valve-openapi-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string file = std::string(dir) + "/spec.json";
  auto write = [&](const std::string &text) {
    std::ofstream out(file, std::ios::trunc);
    out << text;
  };
  write(read_all(fixture_path()));
  {
    PoolHarness h({{"n-min", "1"}, {"n-max", "1"}, {"openapi", file}});
    valve::Pool &pool = h.make();
    CHECK(pool.spec() == nullptr);  // none until a worker is ready
    pool.start();
    REQUIRE(h.run_until([&] { return h.observer().ready == 1; }));
    auto first = pool.spec();
    REQUIRE(first != nullptr);
    CHECK(first->operations().size() == 6);
    CHECK(pool.openapi_path(1).empty());  // --cmd workers write none

    auto reload = [&] {
      std::optional<valve::ReloadResult> result;
      pool.reload([&](const valve::ReloadResult &r) { result = r; });
      REQUIRE(h.run_until([&] { return result.has_value(); }));
      CHECK(result->ok);
    };
    write("{\"paths\": ");  // cut short
    reload();
    CHECK(pool.spec() == first);
    CHECK(h.log_text().find("cannot parse it") != std::string::npos);

    write(R"({"paths": {"/only": {"get": {"parameters": [{"name": "q", "in": "query",
              "required": true, "schema": {"type": "integer"}}]}}}})");
    reload();
    REQUIRE(pool.spec() != first);
    CHECK(pool.spec()->operations().size() == 1);
    CHECK(pool.spec()->match("GET", "/only") != nullptr);
    h.finish();
  }
  unlink(file.c_str());
  rmdir(dir);
}

TEST_CASE("openapi: an --openapi file that cannot be read or parsed stops the start") {
  valve::Config config = test::backend_config();
  REQUIRE_FALSE(config.set("openapi", "/nonexistent/spec.json"));
  test::TestLoop loop(config);
  test::PoolObserver observer;
  valve::Pool pool(loop.ctx(), observer, config, "default", 1);
  auto problem = pool.check_environment();
  REQUIRE(problem);
  CHECK(problem->find("openapi /nonexistent/spec.json: cannot read") == 0);
}
