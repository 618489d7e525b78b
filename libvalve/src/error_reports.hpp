// Error reports: each 5xx answer from a worker, tied to the request's id and to what the worker
// printed while it served the request (the R error plumber prints), kept per (app, route template)
// for the admin interface (/errors, the page) and handed to the hooks (error_hooks.hpp).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "json.hpp"

namespace valve {

class ErrorHooks;

// The latest reports kept per route; older ones are only counted.
constexpr size_t kErrorsKeptPerRoute = 10;
// What a worker printed during one request, at most: lines, and bytes over all of them.
constexpr size_t kRequestOutputLines = 20;
constexpr size_t kRequestOutputBytes = 4096;

struct ErrorReport {
  int64_t time_ms = 0;  // wall clock
  std::string app;
  std::string route;  // the spec's path template; "" when no operation matched
  std::string method;
  std::string target;  // as the client sent it
  int status = 0;
  std::string request_id;  // the X-Request-Id the client got
  uint64_t worker = 0;
  pid_t pid = 0;
  std::string error;  // the R error in the output (r_error_text), "" when none was seen
  std::vector<std::string> output;  // every line the worker printed during the request
  uint64_t count = 0;               // errors on this route so far, this one included

  Json json() const;
};

// The R error among the lines a worker printed: plumber prints the condition of an error in an
// endpoint or a filter as "<simpleError in CALL: MESSAGE>" on stdout (possibly over several lines);
// R's own form is "Error in CALL : MESSAGE". The last such text, without the angle brackets; "" if
// none.
std::string r_error_text(const std::vector<std::string> &lines);

class ErrorReports {
 public:
  ErrorReports() = default;
  ErrorReports(const ErrorReports &) = delete;
  ErrorReports &operator=(const ErrorReports &) = delete;

  // Where each report goes as well (may be null).
  void set_hooks(ErrorHooks *hooks) { hooks_ = hooks; }
  // Counts the report on its route, keeps it among the latest and hands it to the hooks.
  void add(ErrorReport report);
  // {"routes": [{app, route, count, latest: [report, newest first]}]}: the routes with errors, the
  // most recent error first.
  Json json() const;
  uint64_t total() const { return total_; }

 private:
  struct Route {
    uint64_t count = 0;
    std::deque<ErrorReport> latest;  // oldest first
  };
  std::map<std::pair<std::string, std::string>, Route> routes_;  // by (app, route)
  uint64_t total_ = 0;
  ErrorHooks *hooks_ = nullptr;
};

}  // namespace valve
