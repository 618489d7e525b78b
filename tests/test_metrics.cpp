// metrics.hpp: valve's /metrics from the counters of VALVE_STATS and the apps.
#include "metrics.hpp"

#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

TEST_CASE("metrics: each row of VALVE_STATS with a metric, labeled ones with every value") {
  valve::Stats s;
  s.rejected = 3;
  s.websockets_open = 2;
  s.recycles["reload"] = 4;
  s.buffered_body_bytes = 99;  // no metric
  std::vector<std::unique_ptr<valve::App>> apps;
  std::string text = valve::metrics_text(s, apps, 0, 0);
  auto has = [&](const std::string &piece) { return text.find(piece) != std::string::npos; };
  CHECK(
      has("# HELP valve_rejections_total requests refused with 503 (queue full, queue timeout, "
          "shutting down)\n# TYPE valve_rejections_total counter\nvalve_rejections_total 3\n"));
  CHECK(has("# TYPE valve_websockets_open gauge\nvalve_websockets_open 2\n"));
  CHECK(has("valve_worker_recycles_total{reason=\"reload\"} 4\n"));
  for (const char *reason : {"max-requests", "max-rss", "unhealthy"})
    CHECK(has(std::string("valve_worker_recycles_total{reason=\"") + reason + "\"} 0\n"));
  CHECK(has("valve_reloads_total{result=\"ok\"} 0\nvalve_reloads_total{result=\"failed\"} 0\n"));
  CHECK(!has(" 99\n"));
#define VALVE_STAT_CHECK_(member, kind, key, metric, help, labels) \
  CHECK((!*metric || has(std::string("# HELP ") + metric + " " + help + "\n")));
  VALVE_STATS(VALVE_STAT_CHECK_)
#undef VALVE_STAT_CHECK_
}
