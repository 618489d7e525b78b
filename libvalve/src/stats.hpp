// What the server counts for /metrics and /status. Loop thread only.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>

#include "prometheus.hpp"

namespace valve {

struct Stats {
  uint64_t requests = 0;
  uint64_t by_class[6] = {};  // answers by status / 100
  Histogram latency;          // seconds from the request's arrival to the end of its answer
  Histogram queue_wait;       // seconds from arrival to the first dispatch to a worker
  uint64_t rejected = 0;      // 503s from valve: queue full, queue timeout, shutting down
  uint64_t timeouts = 0;      // 504s: a worker gave no answer within --timeout
  uint64_t retries = 0;       // requests sent again after their worker failed
  uint64_t launches = 0;
  uint64_t exits = 0;
  uint64_t crashes = 0;  // exits valve did not ask for
  uint64_t health_check_failures = 0;
  uint64_t websockets = 0;         // WebSockets opened (the worker answered 101)
  uint64_t websockets_open = 0;    // ... and open now
  uint64_t template_launches = 0;  // --preload: template processes started
  uint64_t forks = 0;              // workers forked from a template
  uint64_t fork_fallbacks = 0;     // workers launched plainly because no template could fork them
  uint64_t buffered_body_bytes = 0;  // request bodies read whole ahead of dispatch, held now
  std::map<std::string, uint64_t> recycles;  // by reason: reload, max-requests, max-rss, unhealthy
  std::map<std::string, uint64_t> reloads;   // by result: ok, failed
  // Each app's totals, by name: they outlive the pools a reload replaces.
  struct AppTotals {
    std::array<uint64_t, 6> answers{};  // by status / 100
    // Seconds its workers spent on requests (from dispatch to the end of the answer, WebSockets
    // aside): their rate over the pool's worker count is how busy its workers are.
    double busy_seconds = 0;
  };
  std::map<std::string, AppTotals> by_app;
  uint64_t started_unix_ms = 0;
};

}  // namespace valve
