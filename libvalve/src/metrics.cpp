#include "metrics.hpp"

#include <array>
#include <cassert>
#include <initializer_list>
#include <map>

#include "pool.hpp"
#include "prometheus.hpp"
#include "valve/valve.h"

namespace valve {

namespace {

// One row of VALVE_STATS as its samples. A labeled counter writes every value the table lists, 0
// until it happens, so the series exist from the start.
template <Stats::Kind kind, typename T>
void add_metric(MetricsText &m, const char *name, const char *help, const T &value,
                std::initializer_list<const char *> labels) {
  if (!*name) return;
  if constexpr (kind == Stats::Kind::counter) {
    m.counter(name, help, static_cast<double>(value));
  } else if constexpr (kind == Stats::Kind::gauge) {
    m.gauge(name, help, static_cast<double>(value));
  } else {
    assert(labels.size() > 1);  // the label's name, then its values
    const char *label = *labels.begin();
    for (auto it = labels.begin() + 1; it != labels.end(); ++it) {
      auto count = value.find(*it);
      m.counter(name, help, count == value.end() ? 0.0 : static_cast<double>(count->second),
                {{label, *it}});
    }
  }
}

}  // namespace

std::string metrics_text(const Stats &s, const std::vector<std::unique_ptr<App>> &apps,
                         size_t requests_in_progress, size_t connections) {
  MetricsText m;
  m.gauge("valve_build_info", "valve's version", 1, {{"version", VALVE_VERSION_STRING}});
  m.gauge("valve_start_time_seconds", "when valve started, in seconds since the Unix epoch",
          s.started_unix_ms / 1000.0);
  static const char *const kClasses[] = {"1xx", "1xx", "2xx", "3xx", "4xx", "5xx"};
  // Every app named since the start, so no counter goes backwards: those that ended, plus those
  // running (while a reload replaces an app, its old and new ones add up under its name).
  std::map<std::string, AppCounts> by_app = s.by_app;
  for (const auto &app : apps) by_app[app->name] += app->counts;
  for (const auto &[app, totals] : by_app) {
    for (int c = 1; c <= 5; ++c)
      m.counter("valve_requests_total", "answered requests by app and status class",
                static_cast<double>(totals.answers[c]), {{"app", app}, {"code", kClasses[c]}});
  }
  // Per route template of the API's spec: as many series as it has operations, plus "unmatched".
  for (const auto &[app, totals] : by_app) {
    for (const auto &[route, r] : totals.routes) {
      for (int c = 1; c <= 5; ++c)
        m.counter("valve_route_requests_total",
                  "answered requests by app, route template (from the API's spec) and status class",
                  static_cast<double>(r.answers[c]),
                  {{"app", app}, {"route", route}, {"code", kClasses[c]}});
      m.histogram("valve_route_request_duration_seconds",
                  "seconds from a request's arrival to the end of its answer, by app and route "
                  "template",
                  r.latency, {{"app", app}, {"route", route}});
      m.histogram("valve_route_queue_wait_seconds",
                  "seconds a request waited for a worker, by app and route template", r.queue_wait,
                  {{"app", app}, {"route", route}});
    }
  }
  for (const auto &[app, totals] : by_app)
    m.counter("valve_worker_busy_seconds_total",
              "seconds workers spent serving requests (dispatch to the end of the answer; "
              "WebSockets aside), by app: over the worker count, how busy the workers are",
              totals.busy_seconds, {{"app", app}});
  m.histogram("valve_request_duration_seconds",
              "seconds from a request's arrival to the end of its answer", s.latency);
  m.histogram("valve_queue_wait_seconds", "seconds a request waited for a worker", s.queue_wait);
  for (size_t c = 0; c < kPriorities; ++c)
    m.histogram("valve_queue_wait_by_priority_seconds",
                "seconds a request waited for a worker, by priority class",
                s.queue_wait_by_priority[c],
                {{"priority", priority_name(static_cast<Priority>(c))}});
  m.gauge("valve_requests_in_progress", "requests being served or waiting",
          static_cast<double>(requests_in_progress));
  m.gauge("valve_client_connections", "open client connections", static_cast<double>(connections));
  // Each app's pool. While a reload replaces an app, its old and new pools add up under its name.
  struct PoolGauges {
    double queue = 0, memory = 0, generation = 0, n_min = 0, n_max = 0, keys = 0, waiting_keys = 0;
    std::array<double, kPriorities> by_priority{};
    std::map<std::string, double> states;
  };
  std::map<std::string, PoolGauges> pools;
  for (const auto &app : apps) {
    const Pool &pool = *app->pool;
    PoolGauges &g = pools[app->name];
    g.queue += static_cast<double>(pool.queue_depth());
    g.keys += static_cast<double>(pool.queue().keys());
    g.waiting_keys += static_cast<double>(pool.queue().waiting_keys());
    for (size_t c = 0; c < kPriorities; ++c)
      g.by_priority[c] += static_cast<double>(pool.queue().waiting(static_cast<Priority>(c)));
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
    for (size_t c = 0; c < kPriorities; ++c)
      m.gauge("valve_queue_depth_by_priority", "requests waiting for a worker, by priority class",
              g.by_priority[c],
              {{"app", a}, {"priority", priority_name(static_cast<Priority>(c))}});
    m.gauge("valve_client_keys",
            "clients (by client-key) with requests waiting or on workers; each waits its turn",
            g.keys, {{"app", a}});
    m.gauge("valve_client_keys_waiting", "clients (by client-key) with requests waiting",
            g.waiting_keys, {{"app", a}});
    for (const auto &[state, n] : g.states)
      m.gauge("valve_workers", "workers by state", n, {{"app", a}, {"state", state}});
    m.gauge("valve_workers_resident_memory_bytes", "resident memory of all workers", g.memory,
            {{"app", a}});
    m.gauge("valve_generation", "the worker generation that takes new requests", g.generation,
            {{"app", a}});
    m.gauge("valve_pool_min_workers", "n-min", g.n_min, {{"app", a}});
    m.gauge("valve_pool_max_workers", "n-max", g.n_max, {{"app", a}});
  }
  // Each app's cache; while a reload replaces an app, its old and new caches add up.
  std::map<std::string, std::pair<double, double>> caches;  // bytes, entries
  for (const auto &app : apps)
    if (const Cache *cache = app->cache.get()) {
      caches[app->name].first += static_cast<double>(cache->bytes());
      caches[app->name].second += static_cast<double>(cache->entries());
    }
  for (const auto &[a, c] : caches) {
    m.gauge("valve_cache_bytes", "bytes the cache holds (its bound is cache-size)", c.first,
            {{"app", a}});
    m.gauge("valve_cache_entries", "answers the cache holds", c.second, {{"app", a}});
  }
#define VALVE_CACHE_METRIC_(member, key, metric, help) \
  m.counter(metric, help, static_cast<double>(s.cache.member));
  VALVE_CACHE_STATS(VALVE_CACHE_METRIC_)
#undef VALVE_CACHE_METRIC_
#define VALVE_STAT_METRIC_(member, kind, key, metric, help, labels) \
  add_metric<Stats::Kind::kind>(m, metric, help, s.member, labels);
  VALVE_STATS(VALVE_STAT_METRIC_)
#undef VALVE_STAT_METRIC_
  return m.str();
}

}  // namespace valve
