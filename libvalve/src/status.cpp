#include "status.hpp"

#include <unistd.h>

#include "json.hpp"
#include "pool.hpp"
#include "util.hpp"
#include "valve/valve.h"

namespace valve {

namespace {

// One row of VALVE_STATS among the totals: a labeled counter as the sum over its labels.
template <Stats::Kind kind, typename T>
void add_total(Json &totals, const char *key, const T &value) {
  if (!*key) return;
  if constexpr (kind == Stats::Kind::labeled) {
    uint64_t sum = 0;
    for (const auto &[label, n] : value) sum += n;
    totals[key] = sum;
  } else {
    totals[key] = value;
  }
}

constexpr const char *kClasses[] = {"", "1xx", "2xx", "3xx", "4xx", "5xx"};
constexpr size_t kTopClients = 5;  // the clients with most requests waiting, in each app's entry

}  // namespace

std::string status_json(const StatusView &view) {
  const Stats &st = view.stats;
  Json totals = Json::object();
  totals["requests"] = total_answers(st.by_class);
  totals["latency_sum_s"] = json_rounded(st.latency.sum(), 6);
  totals["queue_wait_sum_s"] = json_rounded(st.queue_wait.sum(), 6);
  for (int c = 2; c <= 5; ++c) totals[kClasses[c]] = st.by_class[c];
#define VALVE_STAT_TOTAL_(member, kind, key, metric, help, labels) \
  add_total<Stats::Kind::kind>(totals, key, st.member);
  VALVE_STATS(VALVE_STAT_TOTAL_)
#undef VALVE_STAT_TOTAL_
  Json cache = Json::object();
#define VALVE_CACHE_TOTAL_(member, key, metric, help) cache[key] = st.cache.member;
  VALVE_CACHE_STATS(VALVE_CACHE_TOTAL_)
#undef VALVE_CACHE_TOTAL_
  totals["cache"] = std::move(cache);
  // Every app's workers in one list (each names its app), and each app on its own.
  Json workers = Json::array(), apps = Json::array();
  size_t queue = 0;
  for (const auto &app : view.apps) {
    const Pool &pool = *app->pool;
    for (Json &w : pool.workers_json()) workers.push_back(std::move(w));
    queue += pool.queue_depth();
    size_t count = 0;
    for (const auto &[s, n] : pool.count_states()) count += n;
    Json &a = apps.emplace_back(Json::object());
    a["name"] = app->name;
    a["state"] = app->retiring ? "retiring" : app->pending ? "starting" : "serving";
    a["generation"] = pool.generation();
    a["reload"] = pool.reload_json();
    a["queue"] = pool.queue_depth();
    a["clients"] = pool.queue().json(kTopClients);
    a["requests_in_progress"] = app->in_progress;
    a["requests"] = total_answers(app->counts.answers);
    for (int c = 2; c <= 5; ++c) a[kClasses[c]] = app->counts.answers[c];
    a["workers"] = count;
    if (const Cache *cache = app->cache.get()) {
      Json c = Json::object();
      c["size"] = cache->capacity();
      c["bytes"] = cache->bytes();
      c["entries"] = cache->entries();
#define VALVE_CACHE_STATUS_(member, key, metric, help) c[key] = cache->counts().member;
      VALVE_CACHE_STATS(VALVE_CACHE_STATUS_)
#undef VALVE_CACHE_STATUS_
      a["cache"] = std::move(c);
    }
    Json routes = Json::array();
    for (const auto &[route, r] : app->counts.routes) {
      Json &entry = routes.emplace_back(Json::object());
      entry["route"] = route;
      entry["requests"] = total_answers(r.answers);
      for (int c = 2; c <= 5; ++c) entry[kClasses[c]] = r.answers[c];
      entry["latency_sum_s"] = json_rounded(r.latency.sum(), 6);
      entry["latency_p50_s"] = json_rounded(r.latency.quantile(0.5), 6);
      entry["latency_p99_s"] = json_rounded(r.latency.quantile(0.99), 6);
      entry["queue_wait_sum_s"] = json_rounded(r.queue_wait.sum(), 6);
    }
    a["by_route"] = std::move(routes);
    a["config"] = app->config.to_json_value();
  }
  Json routes = Json::array();
  for (const Route &r : view.routes) {
    Json backends = Json::array();
    for (const Backend &b : r.backends) {
      Json &backend = backends.emplace_back(Json::object());
      backend["app"] = b.app;
      backend["weight"] = json_number(b.weight);
    }
    Json &route = routes.emplace_back(Json::object());
    route["hostname"] = r.hostname;
    route["prefix"] = r.prefix;
    route["strip_prefix"] = r.strip_prefix;
    route["sticky"] = r.sticky.describe();
    route["priority"] = priority_name(r.priority);
    route["timeout"] = r.timeout > 0 ? json_number(r.timeout) : Json(nullptr);
    route["cache_post"] = r.cache_post;
    route["apps"] = std::move(backends);
  }
  const Pool &main = *view.main.pool;
  Json doc = Json::object();
  doc["version"] = VALVE_VERSION_STRING;
  doc["state"] = view.state;
  doc["address"] = view.address;
  doc["admin"] = view.admin;
  doc["pid"] = getpid();
  doc["uptime_s"] =
      json_rounded((unix_ms() - static_cast<int64_t>(st.started_unix_ms)) / 1000.0, 3);
  doc["generation"] = main.generation();
  doc["reload"] = view.reload;
  doc["queue"] = queue;
  doc["requests_in_progress"] = view.requests_in_progress;
  doc["connections"] = view.connections;
  doc["totals"] = std::move(totals);
  doc["workers"] = std::move(workers);
  doc["apps"] = std::move(apps);
  doc["routes"] = std::move(routes);
  doc["jobs"] = view.jobs;
  doc["preload"] = main.preload_json();
  doc["config"] = view.config.to_json_value();
  return json_text(doc);
}

}  // namespace valve
