#include "metrics.hpp"

#include <map>

#include "pool.hpp"
#include "prometheus.hpp"
#include "valve/valve.h"

namespace valve {

std::string metrics_text(const Stats &s, const std::vector<std::unique_ptr<App>> &apps,
                         size_t requests_in_progress, size_t connections) {
  MetricsText m;
  m.gauge("valve_build_info", "valve's version", 1, {{"version", VALVE_VERSION_STRING}});
  m.gauge("valve_start_time_seconds", "when valve started, in seconds since the Unix epoch",
          s.started_unix_ms / 1000.0);
  static const char *const kClasses[] = {"1xx", "1xx", "2xx", "3xx", "4xx", "5xx"};
  // Every app named since the start, so no counter goes backwards.
  std::map<std::string, Stats::AppTotals> by_app = s.by_app;
  for (const auto &app : apps) by_app[app->name];
  for (const auto &[app, totals] : by_app) {
    for (int c = 1; c <= 5; ++c)
      m.counter("valve_requests_total", "answered requests by app and status class",
                static_cast<double>(totals.answers[c]), {{"app", app}, {"code", kClasses[c]}});
  }
  for (const auto &[app, totals] : by_app)
    m.counter("valve_worker_busy_seconds_total",
              "seconds workers spent serving requests (dispatch to the end of the answer; "
              "WebSockets aside), by app: over the worker count, how busy the workers are",
              totals.busy_seconds, {{"app", app}});
  m.histogram("valve_request_duration_seconds",
              "seconds from a request's arrival to the end of its answer", s.latency);
  m.histogram("valve_queue_wait_seconds", "seconds a request waited for a worker", s.queue_wait);
  m.gauge("valve_requests_in_progress", "requests being served or waiting",
          static_cast<double>(requests_in_progress));
  m.gauge("valve_client_connections", "open client connections", static_cast<double>(connections));
  // Each app's pool. While a reload replaces an app, its old and new pools add up under its name.
  struct PoolGauges {
    double queue = 0, memory = 0, generation = 0, n_min = 0, n_max = 0;
    std::map<std::string, double> states;
  };
  std::map<std::string, PoolGauges> pools;
  for (const auto &app : apps) {
    const Pool &pool = *app->pool;
    PoolGauges &g = pools[app->name];
    g.queue += static_cast<double>(pool.queue_depth());
    g.memory += static_cast<double>(pool.resident_bytes());
    for (const auto &[state, n] : pool.count_states()) g.states[state] += static_cast<double>(n);
    if (!app->retiring && !app->pending) {
      g.generation = static_cast<double>(pool.generation());
      g.n_min = static_cast<double>(app->config.n_min);
      g.n_max = static_cast<double>(app->config.n_max);
    }
  }
  for (const auto &[a, g] : pools) {
    m.gauge("valve_queue_depth", "requests waiting for a worker", g.queue, {{"app", a}});
    for (const auto &[state, n] : g.states)
      m.gauge("valve_workers", "workers by state", n, {{"app", a}, {"state", state}});
    m.gauge("valve_workers_resident_memory_bytes", "resident memory of all workers", g.memory,
            {{"app", a}});
    m.gauge("valve_generation", "the worker generation that takes new requests", g.generation,
            {{"app", a}});
    m.gauge("valve_pool_min_workers", "n-min", g.n_min, {{"app", a}});
    m.gauge("valve_pool_max_workers", "n-max", g.n_max, {{"app", a}});
  }
  m.counter("valve_worker_launches_total", "workers launched", static_cast<double>(s.launches));
  m.counter("valve_worker_exits_total", "workers that exited", static_cast<double>(s.exits));
  m.counter("valve_worker_crashes_total", "workers that exited without being asked to",
            static_cast<double>(s.crashes));
  m.counter("valve_template_launches_total", "preload templates launched (--preload)",
            static_cast<double>(s.template_launches));
  m.counter("valve_worker_forks_total", "workers forked from a preload template",
            static_cast<double>(s.forks));
  m.counter("valve_fork_fallbacks_total",
            "workers launched plainly because no preload template could fork them",
            static_cast<double>(s.fork_fallbacks));
  m.counter("valve_request_timeouts_total", "requests a worker did not answer within --timeout",
            static_cast<double>(s.timeouts));
  m.counter("valve_rejections_total",
            "requests refused with 503 (queue full, queue timeout, shutting down)",
            static_cast<double>(s.rejected));
  m.counter("valve_retries_total", "requests sent again after their worker failed",
            static_cast<double>(s.retries));
  m.counter("valve_websockets_total", "WebSockets opened (the worker answered 101)",
            static_cast<double>(s.websockets));
  m.gauge("valve_websockets_open", "WebSockets open now (each also a request in progress)",
          static_cast<double>(s.websockets_open));
  m.counter("valve_health_check_failures_total", "failed active health checks",
            static_cast<double>(s.health_check_failures));
  // Every label value is written, 0 until it happens, so the series exist from the start.
  auto count_of = [](const std::map<std::string, uint64_t> &counts, const char *key) {
    auto it = counts.find(key);
    return it == counts.end() ? 0.0 : static_cast<double>(it->second);
  };
  for (const char *reason : {"max-requests", "max-rss", "reload", "unhealthy"})
    m.counter("valve_worker_recycles_total", "workers replaced gracefully, by reason",
              count_of(s.recycles, reason), {{"reason", reason}});
  for (const char *result : {"ok", "failed"})
    m.counter("valve_reloads_total", "reloads by result", count_of(s.reloads, result),
              {{"result", result}});
  return m.str();
}

}  // namespace valve
