// What the server counts for /metrics and /status. Loop thread only.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <numeric>
#include <string>
#include <string_view>

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
  XX(check_refusals, counter, "check_refusals", "valve_check_refusals_total",                      \
     "requests refused with --check-status: a parameter was not of its declared type, or a "       \
     "required one was missing (--check-requests)", {})                                            \
  XX(timeouts, counter, "timeouts", "valve_request_timeouts_total",                                \
     "requests a worker did not answer within --timeout", {})                                      \
  XX(retries, counter, "retries", "valve_retries_total",                                           \
     "requests sent again after their worker failed", {})                                          \
  XX(jobs_submitted, counter, "jobs_submitted", "valve_jobs_submitted_total",                      \
     "requests taken as jobs (Prefer: respond-async): 202 with a Location", {})                    \
  XX(jobs_refused, counter, "jobs_refused", "valve_jobs_refused_total",                            \
     "Prefer: respond-async requests refused with 503: jobs-max jobs kept, or jobs-max-bytes of "  \
     "answers stored", {})                                                                         \
  XX(jobs_finished, labeled, "jobs_finished", "valve_jobs_finished_total",                         \
     "jobs whose answer is stored, by result: done (below 500) or failed (500 and up: the app's "  \
     "error, or valve's when the worker failed or the job timed out)",                             \
     VALVE_LABELS("result", "done", "failed"))                                                     \
  XX(jobs_cancelled, counter, "jobs_cancelled", "valve_jobs_cancelled_total",                      \
     "jobs cancelled (DELETE) while queued or running", {})                                        \
  XX(jobs_expired, counter, "jobs_expired", "valve_jobs_expired_total",                            \
     "finished jobs forgotten once their answer's job-result-ttl passed", {})                      \
  XX(jobs_waited, counter, "jobs_waited", "valve_jobs_waited_total",                               \
     "jobs answered within their client's Prefer: wait=N, as if synchronously (not kept)", {})     \
  XX(jobs_queued, gauge, "jobs_queued", "valve_jobs_queued", "jobs waiting for a worker now", {})  \
  XX(jobs_held, gauge, "jobs_held", "valve_jobs_held",                                             \
     "queued jobs held in valve while their app's jobs hold --jobs-workers-max workers (a part "   \
     "of valve_jobs_queued)", {})                                                                  \
  XX(jobs_running, gauge, "jobs_running", "valve_jobs_running", "jobs on a worker now", {})        \
  XX(jobs_stored_bytes, gauge, "jobs_stored_bytes", "valve_jobs_stored_bytes",                     \
     "bytes of finished jobs' answers held now (bounded by jobs-max-bytes)", {})                   \
  XX(error_reports, counter, "error_reports", "valve_error_reports_total",                          \
     "5xx answers of workers, each kept as an error report (the admin interface's /errors)", {})   \
  XX(error_hooks, labeled, "error_hooks", "valve_error_hooks_total",                               \
     "error reports handed to --error-hook-command and --error-hook-url, by result",               \
     VALVE_LABELS("result", "ok", "failed", "timeout", "dropped"))                                 \
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

// The cache's counters (cache.hpp), each app's and their sum since the start:
// XX(member, status key, metric, help).
// clang-format off
#define VALVE_CACHE_STATS(XX)                                                                      \
  XX(hits, "hits", "valve_cache_hits_total",                                                       \
     "requests answered from the cache (its 304s included)")                                      \
  XX(misses, "misses", "valve_cache_misses_total",                                                 \
     "cacheable requests that went to a worker: nothing fresh was stored for them")                \
  XX(stores, "stores", "valve_cache_stores_total", "answers stored in the cache")                  \
  XX(evictions, "evictions", "valve_cache_evictions_total",                                        \
     "stored answers dropped to make room (least recently used first)")                           \
  XX(purged, "purged", "valve_cache_purged_total",                                                 \
     "stored answers dropped by a purge or by an unsafe method (POST, PUT, DELETE) on their URI")  \
  XX(coalesced, "coalesced", "valve_cache_coalesced_total",                                        \
     "requests answered by an identical one's worker call, having waited for it")                  \
  XX(lock_timeouts, "lock_timeouts", "valve_cache_lock_timeouts_total",                            \
     "requests that waited cache-lock-timeout for an identical one, then went to a worker")
// clang-format on

struct CacheCounts {
#define VALVE_CACHE_MEMBER_(member, key, metric, help) uint64_t member = 0;
  VALVE_CACHE_STATS(VALVE_CACHE_MEMBER_)
#undef VALVE_CACHE_MEMBER_
};

// Answers by status / 100.
using ByClass = std::array<uint64_t, 6>;
inline uint64_t total_answers(const ByClass &by_class) {
  return std::accumulate(by_class.begin(), by_class.end(), uint64_t{0});
}

// What no operation of the API's spec matched (or there is no spec): one series for all of it.
inline constexpr const char *kUnmatchedRoute = "unmatched";

// One route template's answers, the seconds from arrival to the end of each answer, and the
// seconds dispatched requests waited for a worker (valve_route_*, the status's apps[].routes).
struct RouteFigures {
  ByClass answers{};
  Histogram latency;
  Histogram queue_wait;

  RouteFigures &operator+=(const RouteFigures &other) {
    for (size_t c = 0; c < answers.size(); ++c) answers[c] += other.answers[c];
    latency += other.latency;
    queue_wait += other.queue_wait;
    return *this;
  }
};

// One app's answers and its workers' time. Each App counts its own (its entry in the status shows
// them); when it ends they are added to Stats::by_app, so that no metric goes backwards.
struct AppCounts {
  ByClass answers{};
  // Seconds its workers spent on requests (from dispatch to the end of the answer, WebSockets
  // aside): their rate over the pool's worker count is how busy its workers are.
  double busy_seconds = 0;
  // By the path template of the spec's operation the request matched (kUnmatchedRoute for none):
  // as many as the spec has operations, plus one, never one per concrete path.
  std::map<std::string, RouteFigures, std::less<>> routes;

  AppCounts &operator+=(const AppCounts &other) {
    for (size_t c = 0; c < answers.size(); ++c) answers[c] += other.answers[c];
    busy_seconds += other.busy_seconds;
    for (const auto &[route, figures] : other.routes) routes[route] += figures;
    return *this;
  }
  // One answer on route: queue_seconds < 0 when it never reached a worker.
  void count_route(std::string_view route, int status, double seconds, double queue_seconds) {
    auto it = routes.find(route);
    if (it == routes.end()) it = routes.try_emplace(std::string(route)).first;
    RouteFigures &r = it->second;
    r.answers[std::min(status / 100, 5)]++;
    r.latency.observe(seconds);
    if (queue_seconds >= 0) r.queue_wait.observe(queue_seconds);
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
  CacheCounts cache;             // every app's cache, since the start
  uint64_t started_unix_ms = 0;  // valve_start_time_seconds, the status's uptime_s
};

}  // namespace valve
