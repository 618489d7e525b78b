// What the server counts for /metrics and /status. Loop thread only.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <numeric>
#include <string>

#include "prometheus.hpp"

namespace valve {

// Every counter and gauge, once, in the order of the status's totals:
// XX(member, kind, status key, metric, help, labels). kind: counter (only goes up), gauge (a level
// now), labeled (a counter per label value: labels is VALVE_LABELS(label, every value), each value
// written from the start, at 0 until it happens; the status shows their sum). A status key ""
// leaves it out of the status's totals, a metric "" out of /metrics.
// clang-format off
#define VALVE_LABELS(...) {__VA_ARGS__}
#define VALVE_STATS(XX)                                                                            \
  XX(rejected, counter, "rejected", "valve_rejections_total",                                      \
     "requests refused with 503 (queue full, queue timeout, shutting down)", {})                   \
  XX(client_limited, counter, "client_limited", "valve_client_limited_total",                      \
     "requests refused with 429: their client had client-max-queued requests waiting", {})         \
  XX(timeouts, counter, "timeouts", "valve_request_timeouts_total",                                \
     "requests a worker did not answer within --timeout", {})                                      \
  XX(retries, counter, "retries", "valve_retries_total",                                           \
     "requests sent again after their worker failed", {})                                          \
  XX(batches, counter, "batches", "valve_batches_total",                                           \
     "batches sent to a batch route (batch-path)", {})                                             \
  XX(batched_requests, counter, "batched_requests", "valve_batched_requests_total",                \
     "requests sent in a batch: over valve_batches_total, the mean batch size", {})                \
  XX(batch_failures, counter, "batch_failures", "valve_batch_failures_total",                      \
     "batches whose answer was an error or no JSON array of one element per request", {})          \
  XX(batch_fallbacks, counter, "batch_fallbacks", "valve_batch_fallbacks_total",                   \
     "requests of a failed batch sent alone to their route (batch-retry-singly)", {})              \
  XX(launches, counter, "launches", "valve_worker_launches_total", "workers launched", {})         \
  XX(exits, counter, "exits", "valve_worker_exits_total", "workers that exited", {})               \
  XX(crashes, counter, "crashes", "valve_worker_crashes_total",                                    \
     "workers that exited without being asked to", {})                                             \
  XX(recycles, labeled, "recycles", "valve_worker_recycles_total",                                 \
     "workers replaced gracefully, by reason",                                                     \
     VALVE_LABELS("reason", "max-requests", "max-rss", "reload", "unhealthy"))                     \
  XX(health_check_failures, counter, "health_check_failures", "valve_health_check_failures_total", \
     "failed active health checks", {})                                                            \
  XX(template_launches, counter, "template_launches", "valve_template_launches_total",             \
     "preload templates launched (--preload)", {})                                                 \
  XX(forks, counter, "forks", "valve_worker_forks_total",                                          \
     "workers forked from a preload template", {})                                                 \
  XX(fork_fallbacks, counter, "fork_fallbacks", "valve_fork_fallbacks_total",                      \
     "workers launched plainly because no preload template could fork them", {})                   \
  XX(websockets, counter, "websockets", "valve_websockets_total",                                  \
     "WebSockets opened (the worker answered 101)", {})                                            \
  XX(websockets_open, gauge, "websockets_open", "valve_websockets_open",                           \
     "WebSockets open now (each also a request in progress)", {})                                  \
  XX(tunnels_closed, labeled, "tunnels_closed", "valve_tunnels_closed_total",                     \
     "WebSockets closed, by what ended them: either side, or a limit of valve's",                  \
     VALVE_LABELS("reason", "client", "worker", "idle", "lifetime", "ping"))                       \
  XX(tunnels_refused, counter, "tunnels_refused", "valve_tunnels_refused_total",                   \
     "WebSocket handshakes refused with 503: WebSockets held --tunnel-workers-max workers", {})    \
  XX(reloads, labeled, "", "valve_reloads_total", "reloads by result",                             \
     VALVE_LABELS("result", "ok", "failed"))                                                       \
  XX(buffered_body_bytes, gauge, "", "",                                                           \
     "request bodies read whole ahead of dispatch, held now (the budget for more)", {})
// clang-format on

// Answers by status / 100.
using ByClass = std::array<uint64_t, 6>;
inline uint64_t total_answers(const ByClass &by_class) {
  return std::accumulate(by_class.begin(), by_class.end(), uint64_t{0});
}

// One app's answers and its workers' time. Each App counts its own (its entry in the status shows
// them); when it ends they are added to Stats::by_app, so that no metric goes backwards.
struct AppCounts {
  ByClass answers{};
  // Seconds its workers spent on requests (from dispatch to the end of the answer, WebSockets
  // aside): their rate over the pool's worker count is how busy its workers are.
  double busy_seconds = 0;

  AppCounts &operator+=(const AppCounts &other) {
    for (size_t c = 0; c < answers.size(); ++c) answers[c] += other.answers[c];
    busy_seconds += other.busy_seconds;
    return *this;
  }
};

struct Stats {
  enum class Kind { counter, gauge, labeled };
  // Each kind's C++ type, for the members the table declares.
  using counter_type = uint64_t;
  using gauge_type = uint64_t;
  using labeled_type = std::map<std::string, uint64_t>;  // by label value

#define VALVE_STAT_MEMBER_(member, kind, key, metric, help, labels) kind##_type member{};
  VALVE_STATS(VALVE_STAT_MEMBER_)
#undef VALVE_STAT_MEMBER_

  // The rest, each shown its own way. Every answer by status / 100, those without an app (no
  // route's 404s) too: the status's totals "requests" (their sum) and "2xx" to "5xx".
  ByClass by_class{};
  // Seconds from a request's arrival to the end of its answer: valve_request_duration_seconds, the
  // status's latency_sum_s.
  Histogram latency;
  // Seconds from arrival to the first dispatch to a worker: valve_queue_wait_seconds, the status's
  // queue_wait_sum_s.
  Histogram queue_wait;
  // The same by priority class (fair_queue.hpp): valve_queue_wait_by_priority_seconds.
  std::array<Histogram, 3> queue_wait_by_priority;
  // The counts of the apps that ended, by name: with those of the apps running, each app's since
  // the start (valve_requests_total, valve_worker_busy_seconds_total).
  std::map<std::string, AppCounts> by_app;
  uint64_t started_unix_ms = 0;  // valve_start_time_seconds, the status's uptime_s
};

}  // namespace valve
