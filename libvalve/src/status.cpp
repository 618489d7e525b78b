#include "status.hpp"

#include <unistd.h>

#include <fmt/format.h>

#include <map>

#include "pool.hpp"
#include "util.hpp"
#include "valve/valve.h"

namespace valve {

std::string status_json(const StatusView &view) {
  const Stats &st = view.stats;
  auto count = [](const std::map<std::string, uint64_t> &m) {
    uint64_t n = 0;
    for (const auto &[k, v] : m) n += v;
    return n;
  };
  std::string totals = fmt::format(
      R"({{"requests":{},"latency_sum_s":{:.6f},"queue_wait_sum_s":{:.6f},"2xx":{},"3xx":{},)"
      R"("4xx":{},"5xx":{},"rejected":{},"timeouts":{},"retries":{},"launches":{},"exits":{},)"
      R"("crashes":{},"recycles":{},"health_check_failures":{},"template_launches":{},)"
      R"("forks":{},"fork_fallbacks":{},"websockets":{},"websockets_open":{}}})",
      st.requests, st.latency.sum(), st.queue_wait.sum(), st.by_class[2], st.by_class[3],
      st.by_class[4], st.by_class[5], st.rejected, st.timeouts, st.retries, st.launches, st.exits,
      st.crashes, count(st.recycles), st.health_check_failures, st.template_launches, st.forks,
      st.fork_fallbacks, st.websockets, st.websockets_open);
  // Every app's workers in one list (each names its app), and each app on its own.
  std::string workers = "[", apps = "[";
  size_t queue = 0;
  for (const auto &app : view.apps) {
    const Pool &pool = *app->pool;
    std::string list = pool.workers_json();
    if (list.size() > 2)
      workers += (workers.size() > 1 ? "," : "") + list.substr(1, list.size() - 2);
    queue += pool.queue_depth();
    size_t count = 0;
    for (const auto &[s, n] : pool.count_states()) count += n;
    apps += fmt::format(
        R"({}{{"name":"{}","state":"{}","generation":{},"reload":{},"queue":{},)"
        R"("requests_in_progress":{},"requests":{},"2xx":{},"3xx":{},"4xx":{},"5xx":{},)"
        R"("workers":{},"config":{}}})",
        apps.size() > 1 ? "," : "", json_escape(app->name),
        app->retiring  ? "retiring"
        : app->pending ? "starting"
                       : "serving",
        pool.generation(), pool.reload_json(), pool.queue_depth(), app->in_progress, app->requests,
        app->by_class[2], app->by_class[3], app->by_class[4], app->by_class[5], count,
        app->config.to_json());
  }
  workers += "]";
  apps += "]";
  std::string routes = "[";
  for (const Route &r : view.routes) {
    std::string backends;
    for (const Backend &b : r.backends)
      backends += fmt::format(R"({}{{"app":"{}","weight":{}}})", backends.empty() ? "" : ",",
                              json_escape(b.app), b.weight);
    routes += fmt::format(
        R"({}{{"hostname":"{}","prefix":"{}","strip_prefix":{},"sticky":"{}","apps":[{}]}})",
        routes.size() > 1 ? "," : "", json_escape(r.hostname), json_escape(r.prefix),
        r.strip_prefix ? "true" : "false", json_escape(r.sticky.describe()), backends);
  }
  routes += "]";
  const Pool &main = *view.main.pool;
  return fmt::format(
      R"({{"version":"{}","state":"{}","address":"{}","admin":"{}","pid":{},"uptime_s":{:.3f},)"
      R"("generation":{},"reload":{},"queue":{},"requests_in_progress":{},"connections":{},)"
      R"("totals":{},"workers":{},"apps":{},"routes":{},"preload":{},"config":{}}})",
      VALVE_VERSION_STRING, view.state, json_escape(view.address), json_escape(view.admin),
      getpid(), (unix_ms() - static_cast<int64_t>(st.started_unix_ms)) / 1000.0, main.generation(),
      view.reload_json, queue, view.requests_in_progress, view.connections, totals, workers, apps,
      routes, main.preload_json(), view.config.to_json());
}

}  // namespace valve
