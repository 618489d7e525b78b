// Which app serves a request: routes by Host and path prefix, and weighted sticky splits.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fair_queue.hpp"

namespace valve {

struct Head;

// Where a split route takes the key that keeps a user on one app.
struct StickyKey {
  enum class Kind { ip, header, cookie } kind = Kind::ip;
  std::string name;  // the header's or the cookie's

  // "ip", "header:NAME" or "cookie:NAME"; false if text is none of these.
  bool parse(std::string_view text);
  std::string describe() const;
};

struct Backend {
  std::string app;
  double weight = 1;
};

// Micro-batching on a route (batcher.hpp): a POST of a JSON body to exactly the route's prefix may
// go to the API's batch route with others, as one JSON array. Off while path is empty.
struct BatchSpec {
  std::string path;          // the API's batch route, as the worker sees it: batch-path
  size_t max = 32;           // members at most: batch-max
  bool retry_singly = true;  // a failed batch's members go alone to the route: batch-retry-singly
  bool enabled() const { return !path.empty(); }
};

struct Route {
  std::string hostname;  // matched against Host without its port, case-insensitively; empty: any
  std::string prefix;    // matched on whole path segments: "/v1" takes /v1 and /v1/x, not /v10
  bool strip_prefix = false;
  std::vector<Backend> backends;  // one, or a weighted split
  StickyKey sticky;
  Priority priority = Priority::normal;  // of its requests in the queue (fair_queue.hpp)
  double timeout = 0;  // seconds a worker has to answer its requests (0: the app's --timeout)
  // POST answers are cached (with --cache-size), keyed by the body and these request headers too.
  bool cache_post = false;
  std::vector<std::string> cache_key_headers;
  std::optional<bool> check_requests;    // unset: its app's --check-requests
  BatchSpec batch;
  int line = 0;  // in the config file (0: not from one)

  std::string describe() const;
};

// The route for a request: the longest matching prefix, a route naming the host before one that
// does not; nullptr when none matches.
const Route *match_route(const std::vector<Route> &routes, std::string_view host_header,
                         std::string_view target);

// The backend a key goes to. Weighted rendezvous hashing: each backend scores the key by a hash of
// (key, app), scaled by its weight, and the best score wins. Each backend gets its weight's share
// of keys, a key's backend depends only on the key and the backends' names and weights, and when
// one weight changes only the keys that must move do.
size_t pick_backend(const Route &route, std::string_view key);

// The key a request carries for route's split: the header's or cookie's value, or else the
// client's address.
std::string sticky_key(const Route &route, const Head &request, std::string_view peer_ip);

// The request target with route's prefix taken off ("/v1/x?y" -> "/x?y", "/v1" -> "/").
std::string strip_prefix(std::string_view target, std::string_view prefix);

// The value of one cookie in a Cookie header; empty when absent.
std::string_view cookie_value(std::string_view header, std::string_view name);

}  // namespace valve
