// prometheus.hpp: Histogram (buckets, sum, quantile) and the Prometheus text builder.
#include "prometheus.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

using valve::Histogram;
using valve::MetricsText;

TEST_CASE("prometheus: histogram counts into less-or-equal buckets, cumulatively") {
  Histogram h({1, 2, 5});
  for (double v : {0.5, 1.0, 1.5, 5.0, 7.0, -3.0}) h.observe(v);
  h.observe(NAN);  // ignored
  CHECK(h.bounds() == std::vector<double>{1, 2, 5});
  CHECK(h.cumulative() == std::vector<uint64_t>{3, 4, 5});  // -3 and 1 land in le=1
  CHECK(h.count() == 6);
  CHECK(h.sum() == doctest::Approx(12.0));
}

TEST_CASE("prometheus: latency buckets are seconds from 1ms to 60s, ascending") {
  auto b = Histogram::latency_buckets();
  CHECK(b.size() == 15);
  CHECK(b.front() == 0.001);
  CHECK(b.back() == 60);
  CHECK(std::is_sorted(b.begin(), b.end()));
  CHECK(Histogram().bounds() == b);
}

TEST_CASE("prometheus: quantile interpolates inside the bucket, like histogram_quantile") {
  Histogram h({1, 2, 4});
  for (int i = 0; i < 4; ++i) h.observe(0.5);       // (0, 1]
  for (int i = 0; i < 4; ++i) h.observe(1.5);       // (1, 2]
  for (int i = 0; i < 2; ++i) h.observe(3);         // (2, 4]
  CHECK(h.quantile(0.2) == doctest::Approx(0.5));   // rank 2 of 4 in [0, 1]
  CHECK(h.quantile(0.5) == doctest::Approx(1.25));  // rank 1 of 4 in [1, 2]
  CHECK(h.quantile(0.9) == doctest::Approx(3));     // rank 1 of 2 in [2, 4]
  CHECK(h.quantile(1) == doctest::Approx(4));
  CHECK(h.quantile(0) == 0);
  CHECK(h.quantile(7) == h.quantile(1));  // q is clamped to [0, 1]

  h.observe(100);  // the +Inf bucket: estimated as the largest finite bound
  CHECK(h.quantile(1) == 4);

  Histogram high({1, 2, 4});
  high.observe(3);
  CHECK(high.quantile(0) == 2);  // the first non-empty bucket's lower bound
  CHECK(high.quantile(0.5) == doctest::Approx(3));
}

TEST_CASE("prometheus: an empty histogram") {
  Histogram h({0.5, 1});
  CHECK(h.cumulative() == std::vector<uint64_t>{0, 0});
  CHECK(h.count() == 0);
  CHECK(h.sum() == 0);
  CHECK(h.quantile(0.5) == 0);
  MetricsText m;
  m.histogram("valve_empty_seconds", "Nothing yet.", h);
  CHECK(m.str() ==
        "# HELP valve_empty_seconds Nothing yet.\n"
        "# TYPE valve_empty_seconds histogram\n"
        "valve_empty_seconds_bucket{le=\"0.5\"} 0\n"
        "valve_empty_seconds_bucket{le=\"1\"} 0\n"
        "valve_empty_seconds_bucket{le=\"+Inf\"} 0\n"
        "valve_empty_seconds_sum 0\n"
        "valve_empty_seconds_count 0\n");
  CHECK(MetricsText().str().empty());
}

TEST_CASE("prometheus: histogram lines, with labels before le") {
  Histogram h({0.1, 0.25, 1});
  for (double v : {0.05, 0.2, 0.2, 3.0}) h.observe(v);
  MetricsText m;
  m.histogram("valve_request_duration_seconds", "Request latency.", h, {{"worker", "1"}});
  CHECK(m.str() ==
        "# HELP valve_request_duration_seconds Request latency.\n"
        "# TYPE valve_request_duration_seconds histogram\n"
        "valve_request_duration_seconds_bucket{worker=\"1\",le=\"0.1\"} 1\n"
        "valve_request_duration_seconds_bucket{worker=\"1\",le=\"0.25\"} 3\n"
        "valve_request_duration_seconds_bucket{worker=\"1\",le=\"1\"} 3\n"
        "valve_request_duration_seconds_bucket{worker=\"1\",le=\"+Inf\"} 4\n"
        "valve_request_duration_seconds_sum{worker=\"1\"} 3.45\n"
        "valve_request_duration_seconds_count{worker=\"1\"} 4\n");
}

TEST_CASE("prometheus: label values and help text are escaped") {
  MetricsText m;
  m.gauge("valve_info", "Back\\slash, \"quotes\"\nand a newline.", 1,
          {{"path", "a\\b\"c\nd"}, {"empty", ""}});
  CHECK(m.str() ==
        "# HELP valve_info Back\\\\slash, \"quotes\"\\nand a newline.\n"
        "# TYPE valve_info gauge\n"
        "valve_info{path=\"a\\\\b\\\"c\\nd\",empty=\"\"} 1\n");
}

TEST_CASE("prometheus: one HELP and TYPE per family, samples grouped even when interleaved") {
  MetricsText m;
  m.counter("valve_requests_total", "Requests.", 3, {{"code", "2xx"}});
  m.gauge("valve_workers", "Workers.", 2, {{"state", "ready"}});
  m.counter("valve_requests_total", "Ignored: the first help wins.", 1, {{"code", "5xx"}});
  m.gauge("valve_workers", "Workers.", 1, {{"state", "starting"}});
  m.gauge("valve_queue", "Waiting requests.", 0);
  CHECK(m.str() ==
        "# HELP valve_requests_total Requests.\n"
        "# TYPE valve_requests_total counter\n"
        "valve_requests_total{code=\"2xx\"} 3\n"
        "valve_requests_total{code=\"5xx\"} 1\n"
        "# HELP valve_workers Workers.\n"
        "# TYPE valve_workers gauge\n"
        "valve_workers{state=\"ready\"} 2\n"
        "valve_workers{state=\"starting\"} 1\n"
        "# HELP valve_queue Waiting requests.\n"
        "# TYPE valve_queue gauge\n"
        "valve_queue 0\n");
}

TEST_CASE("prometheus: numbers: integers plain, floats round-trip, special values spelled out") {
  const std::pair<double, const char *> cases[] = {
      {0, "0"},       {42, "42"},          {1234567890123, "1234567890123"},
      {0.1, "0.1"},   {2.5e-7, "2.5e-07"}, {1.0 / 3, "0.3333333333333333"},
      {-1.5, "-1.5"}, {INFINITY, "+Inf"},  {-INFINITY, "-Inf"},
      {NAN, "NaN"},
  };
  for (auto [v, text] : cases) {
    MetricsText m;
    m.gauge("valve_x", "X.", v);
    CHECK(m.str() ==
          std::string("# HELP valve_x X.\n# TYPE valve_x gauge\nvalve_x ") + text + "\n");
  }
}

TEST_CASE("prometheus: promtool check metrics accepts the output, with no warnings") {
  REQUIRE_MESSAGE(access("/usr/bin/promtool", X_OK) == 0,
                  "/usr/bin/promtool is missing: run scripts/install-deps (package prometheus)");
  Histogram h;
  for (double v : {0.003, 0.04, 0.04, 0.7, 12.0, 90.0}) h.observe(v);
  MetricsText m;
  m.counter("valve_requests_total", "Requests answered, by status class.", 118, {{"code", "2xx"}});
  m.gauge("valve_workers", "Workers, by state.", 2, {{"state", "ready"}});
  m.counter("valve_requests_total", "Requests answered, by status class.", 2, {{"code", "4xx"}});
  m.gauge("valve_uptime_seconds", "Seconds since start.", 12.5);
  m.gauge("valve_worker_resident_memory_bytes", "Resident memory.", 125829120,
          {{"worker", "1"}, {"address", "unix:/tmp/x \"y\"\n\\z"}});
  m.histogram("valve_request_duration_seconds", "Latency \"quoted\"\nsecond line.", h);
  m.histogram("valve_queue_wait_seconds", "Queue wait.", Histogram(), {{"generation", "1"}});

  char path[] = "/tmp/valve-metrics-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  std::ofstream(path) << m.str();
  std::string cmd = std::string("/usr/bin/promtool check metrics < ") + path + " 2>&1";
  FILE *p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  std::string out;
  char buf[512];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  int status = pclose(p);
  unlink(path);
  INFO("promtool said: " << out);
  CHECK(status == 0);
  CHECK(out.empty());
}
