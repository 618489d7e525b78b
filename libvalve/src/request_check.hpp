// The request check (--check-requests): a request's query, path and body parameters against the
// types and required parameters its operation declares (openapi.hpp), before a worker takes it.
// Pure functions: the proxy calls check_request() once a request's body is read, and refuses one
// that fails with --check-status and check_detail()'s list, FastAPI's 422 shape:
//   {"detail":[{"loc":["query","n"],"msg":"Input should be a valid integer, unable to parse string
//   as an integer","type":"int_parsing","input":"foobar"}]}
//
// It takes what plumber 1.2.1 takes, and refuses only what cannot be the declared type:
// - values are found as plumber finds its arguments: the query string (plumber's parseQS: '+' is a
//   space, a pair without exactly one non-empty key and value is dropped, a repeated key gives
//   several values), the path's {params}, and a body plumber parses into named arguments: a JSON
//   object (Content-Type application/json or text/json, or none and a body starting with { or [)
//   or a form (application/x-www-form-urlencoded, or any type plumber has no parser for). A
//   parameter the spec puts in the query may come from the body too, as plumber merges them.
// - text (query, path, form) is of a type when R reads it as one (valid_text in openapi.hpp); a
//   JSON value when it is a JSON value of the type, or a string valid_text takes (FastAPI's lax
//   mode; R gets the string, as it would from a query); a JSON array when each item is, for arrays
//   and scalars alike (plumber passes vectors to both). chr and untyped parameters take anything.
// - a required parameter is missing when no value is found; a body valve did not read whole
//   (larger than --request-buffer-size) or cannot parse (multipart, invalid JSON) is not looked
//   into, and then its parameters are never missing (plumber answers invalid JSON itself).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "http.hpp"
#include "json.hpp"
#include "openapi.hpp"

namespace valve {

struct Violation {
  const char *where = "query";  // "query", "path" or "body": loc's first item
  std::string name;
  int index = -1;         // an array item's position in loc, -1 for the parameter itself
  const char *type = "";  // FastAPI's error type: int_parsing, missing, ...
  const char *msg = "";   // and its message
  Json input;             // the value as given; null for a missing one
};

// Every parameter of op the request gets wrong; empty when it passes. path: the request's path
// without its query, as routed to the worker; query: after '?' (may be empty); body: null when it
// is not known whole; content_type: the header's value (empty when absent).
std::vector<Violation> check_request(const ApiOperation &op, std::string_view path,
                                     std::string_view query, const std::string_view *body,
                                     std::string_view content_type);

// The check of a request the proxy is about to submit: its target as the worker gets it (path and
// query), body (null when not read whole) and Content-Type against op, the spec's operation for
// it. The detail of a refusal, or null when it passes (or op is null, or declares nothing).
Json check_proxied(const ApiOperation *op, const Head &request, std::string_view target,
                   const std::string_view *body);

// The JSON array of FastAPI's "detail": each violation's loc, msg, type and input.
Json check_detail(const std::vector<Violation> &violations);

}  // namespace valve
