// The API's OpenAPI spec as valve uses it: its operations (method and path template, such as
// plumber's /items/{id}) and each one's parameters, with where they come from, their type and
// whether they are required. Parsed once per generation of workers (plumber writes it as they
// start, or --openapi names a file), immutable after, shared by the requests that use it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace valve {

// A parameter's type as plumber declares it (@param n:int): bool, int, dbl/numeric, chr, or an
// array of one of them. `other` (object, file) is not checked.
enum class ParamType : uint8_t { string, integer, number, boolean, other };
// Where the spec puts it. plumber 1.2.1 writes every non-path parameter as "query", also for POST:
// it fills its arguments from the query string and from a JSON or form body alike, and so does
// the check. "body" is a property of a requestBody schema (other generators write those).
enum class ParamIn : uint8_t { query, path, body };

struct ApiParam {
  std::string name;
  ParamIn in = ParamIn::query;
  ParamType type = ParamType::string;
  bool array = false;  // [int]: each value (repeated query keys, a JSON array) of type
  bool required = false;
};

struct ApiOperation {
  std::string method;         // upper case: GET, POST, ...
  std::string path_template;  // as the spec writes it: /items/{id}
  std::vector<ApiParam> params;
  // Whether any parameter can fail a check (typed, or required): if not, a request is not looked
  // at.
  bool checked = false;
  // The endpoint has its own @parser (x-valve-routes says so): its body is plumber's to read.
  bool own_parsers = false;

  // The template's segments: a literal, or the index in params of a path parameter.
  struct Segment {
    std::string literal;
    int param = -1;  // >= 0: a parameter
  };
  std::vector<Segment> segments;
};

// The text plumber (through R's as.integer, as.numeric, as.logical, and its own path patterns)
// reads as a value of type t. Used for path and query values and form fields.
bool valid_text(ParamType t, std::string_view text);
// The text plumber's router takes for a typed path parameter (<id:int>): its pattern for the type
// (-?\d+ for int), and a value R converts (not NA).
bool valid_path_text(ParamType t, std::string_view text);
// Whether plumber's router takes text for a path parameter <name:t> (or <name:[t]>): its
// pattern for the type (-?\d+ for int, (?:(?:-?\d+),?)+ for [int]), whatever R makes of it.
bool route_text(ParamType t, bool array, std::string_view text);
// The words for a type in messages and in FastAPI's error types: "integer" / "int", ...
const char *type_label(ParamType t);
const char *type_code(ParamType t);

class ApiSpec {
 public:
  // Parses an OpenAPI 3 document (JSON). nullptr and *error when it is not one.
  static std::shared_ptr<const ApiSpec> parse(std::string_view json, std::string *error);

  // The operation a request takes, as plumber routes it: the first in plumber's order (its
  // routes as the worker script lists them in x-valve-routes, else the spec's order) whose
  // template matches the path (without its query) segment by segment, a typed path parameter
  // only where its router's pattern takes the value (route_text); when a path matches a template
  // only but for a path parameter's type, that operation (the check then names the parameter).
  // nullptr: none. Allocates nothing.
  const ApiOperation *match(std::string_view method, std::string_view path) const;

  const std::vector<ApiOperation> &operations() const { return operations_; }
  // Operations with at least one parameter a check can fail.
  size_t checked_operations() const;

 private:
  std::vector<ApiOperation> operations_;
};

}  // namespace valve
