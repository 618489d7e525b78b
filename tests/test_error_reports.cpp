// error_reports.hpp and error_hooks.hpp: the R error among a worker's lines, the reports kept per
// route, the hook URL, and the hooks themselves on a loop (a command fed the JSON on stdin, one
// killed at its time limit, a POST to a loopback listener).
#include "error_reports.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "error_hooks.hpp"
#include "loop_support.hpp"
#include "metrics.hpp"
#include "stats.hpp"

namespace {

std::string read_file(const std::string &path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

valve::ErrorReport report(std::string app, std::string route, int64_t time_ms) {
  valve::ErrorReport r;
  r.app = std::move(app);
  r.route = std::move(route);
  r.time_ms = time_ms;
  r.status = 500;
  r.request_id = "id-" + std::to_string(time_ms);
  return r;
}

}  // namespace

TEST_CASE("r_error_text: plumber's printed condition, R's own form, the last one, none") {
  using valve::r_error_text;
  CHECK(r_error_text({"preparing", "<simpleError in f(): boom>"}) == "simpleError in f(): boom");
  CHECK(r_error_text({"<simpleError in g(x): first line", "second line>", "after"}) ==
        "simpleError in g(x): first line\nsecond line");
  CHECK(r_error_text({"<rlang_error: typed>"}) == "rlang_error: typed");
  CHECK(r_error_text({"Error in log(-1) : oops", "Calls: f"}) ==
        "Error in log(-1) : oops\nCalls: f");
  CHECK(r_error_text({"<simpleError in a(): one>", "<simpleError in b(): two>"}) ==
        "simpleError in b(): two");
  CHECK(r_error_text({"Warning in f() : careful", "<environment>", "<simpleWarning in f(): w>"})
            .empty());
  CHECK(r_error_text({}).empty());
}

TEST_CASE("ErrorReports: counted per (app, route), the latest kept, newest first") {
  valve::ErrorReports reports;
  for (int i = 1; i <= 15; ++i) reports.add(report("a", "/items/{id}", i));
  reports.add(report("a", "unmatched", 100));
  reports.add(report("b", "/items/{id}", 50));
  valve::Json doc = reports.json();
  CHECK(doc["total"] == 17);
  REQUIRE(doc["routes"].size() == 3);
  // The route with the most recent error first.
  CHECK(doc["routes"][0]["route"] == "unmatched");
  CHECK(doc["routes"][1]["app"] == "b");
  const valve::Json &items = doc["routes"][2];
  CHECK(items["app"] == "a");
  CHECK(items["count"] == 15);
  REQUIRE(items["latest"].size() == valve::kErrorsKeptPerRoute);
  CHECK(items["latest"][0]["count"] == 15);
  CHECK(items["latest"][0]["request_id"] == "id-15");
  CHECK(items["latest"][9]["count"] == 6);
  CHECK(items["latest"][0]["time"] == "1970-01-01T00:00:00.015Z");
  for (const char *key : {"time", "app", "route", "method", "target", "status", "request_id",
                          "worker", "pid", "error", "output", "count"})
    CHECK_MESSAGE(items["latest"][0].contains(key), key);
}

TEST_CASE("parse_hook_url: http URLs only, with a host, a port from 1 to 65535") {
  std::string why;
  auto url = valve::parse_hook_url("http://127.0.0.1:9093/api/alerts?x=1", &why);
  REQUIRE(url);
  CHECK(url->host == "127.0.0.1");
  CHECK(url->port == 9093);
  CHECK(url->path == "/api/alerts?x=1");
  CHECK(url->host_header == "127.0.0.1:9093");
  url = valve::parse_hook_url("HTTP://alerts.internal", &why);
  REQUIRE(url);
  CHECK(url->port == 80);
  CHECK(url->path == "/");
  url = valve::parse_hook_url("http://[::1]:8080?q", &why);
  REQUIRE(url);
  CHECK(url->host == "::1");
  CHECK(url->path == "/?q");
  for (const char *bad :
       {"https://x/", "ftp://x", "http://", "http://:80/", "http://x:0/", "http://x:65536",
        "http://x:8a/", "http://u:p@x/", "http://[::1/", "http://x/a b", "x"}) {
    CHECK_MESSAGE(!valve::parse_hook_url(bad, &why), bad);
    CHECK(why.find("expected http://HOST[:PORT][/PATH]") != std::string::npos);
  }
  valve::Config config;
  auto err = config.set("error-hook-url", "https://alerts/");
  REQUIRE(err);
  CHECK(err->starts_with("error-hook-url https://alerts/: https is not supported"));
  CHECK(config.set("error-hook-timeout", "0").has_value());
}

TEST_CASE("per-route figures: one series per route template, merged across an app's ends") {
  valve::AppCounts counts;
  for (int id = 0; id < 50; ++id) counts.count_route("/items/{id}", 200, 0.01, 0.001);
  counts.count_route("/items/{id}", 503, 0.5, -1);  // never reached a worker
  counts.count_route(valve::kUnmatchedRoute, 404, 0.002, 0);
  REQUIRE(counts.routes.size() == 2);
  const valve::RouteFigures &items = counts.routes.at("/items/{id}");
  CHECK(items.answers[2] == 50);
  CHECK(items.answers[5] == 1);
  CHECK(items.latency.count() == 51);
  CHECK(items.queue_wait.count() == 50);
  valve::AppCounts ended;
  ended += counts;
  ended += counts;
  CHECK(ended.routes.at("/items/{id}").latency.count() == 102);
  CHECK(ended.routes.at("/items/{id}").latency.sum() == doctest::Approx(2 * (0.5 + 50 * 0.01)));

  valve::Stats stats;
  stats.by_app["api"] = counts;
  std::vector<std::unique_ptr<valve::App>> apps;
  std::string text = valve::metrics_text(stats, apps, 0, 0);
  auto has = [&](const std::string &piece) { return text.find(piece) != std::string::npos; };
  CHECK(has("valve_route_requests_total{app=\"api\",route=\"/items/{id}\",code=\"2xx\"} 50\n"));
  CHECK(has("valve_route_requests_total{app=\"api\",route=\"unmatched\",code=\"4xx\"} 1\n"));
  CHECK(has("valve_route_request_duration_seconds_count{app=\"api\",route=\"/items/{id}\"} 51\n"));
  CHECK(has("valve_route_queue_wait_seconds_count{app=\"api\",route=\"/items/{id}\"} 50\n"));
}

TEST_CASE("error hooks: the command gets the report on stdin; a hung one is killed and reaped") {
  char dir[] = "/tmp/valve-hook-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string out = std::string(dir) + "/out";
  valve::Config config;
  REQUIRE_FALSE(config
                    .set("error-hook-command", "/bin/sh -c 'cat >> " + out + "; case $(cat " + out +
                                                   ") in *hang*) exec sleep 30;; esac'")
                    .has_value());
  REQUIRE_FALSE(config.set("error-hook-timeout", "0.5").has_value());
  {
    test::TestLoop loop(config);
    valve::ErrorHooks hooks(loop.ctx());
    REQUIRE(hooks.enabled());
    hooks.send(R"({"n":1})");
    auto &results = loop.ctx().stats().error_hooks;
    REQUIRE(loop.run_until([&] { return results["ok"] == 1; }));
    CHECK(read_file(out) == "{\"n\":1}\n");
    CHECK(hooks.running() == 0);

    hooks.send(R"({"n":"hang"})");
    REQUIRE(loop.run_until([&] { return results["timeout"] == 1; }, 5));
    CHECK(loop.logged("error hook (timeout): killed after 0.5 s") == 1);
    loop.run_until([&] { return hooks.running() == 0; }, 1);
    CHECK(hooks.running() == 0);

    // More than run at once plus those that may wait: the rest are dropped, never queued.
    for (size_t i = 0; i < valve::kHookDeliveries + valve::kHookQueue + 3; ++i)
      hooks.send(R"({"n":"hang"})");
    CHECK(hooks.running() == valve::kHookDeliveries);
    CHECK(results["dropped"] == 3);
    hooks.close();  // kills and reaps the commands running
    CHECK(hooks.running() == 0);
  }
  CHECK(system((std::string("rm -rf ") + dir).c_str()) == 0);
}

TEST_CASE("error hooks: a POST of the JSON to a loopback listener; a refused one fails") {
  // A listener that answers 202 to whatever it is sent, and keeps it.
  uv_loop_t *lp = nullptr;
  valve::Config config;
  int port = valve::pick_free_port();
  REQUIRE_FALSE(
      config.set("error-hook-url", fmt::format("http://127.0.0.1:{}/hook", port)).has_value());
  test::TestLoop loop(config);
  lp = loop.loop();
  struct Server {
    uv_tcp_t listener;
    uv_tcp_t conn;
    std::string got;
  } server;
  uv_tcp_init(lp, &server.listener);
  server.listener.data = &server;
  sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", port, &addr);
  REQUIRE(uv_tcp_bind(&server.listener, reinterpret_cast<sockaddr *>(&addr), 0) == 0);
  REQUIRE(uv_listen(reinterpret_cast<uv_stream_t *>(&server.listener), 4, [](uv_stream_t *l, int) {
            auto *s = static_cast<Server *>(l->data);
            uv_tcp_init(l->loop, &s->conn);
            s->conn.data = s;
            uv_accept(l, reinterpret_cast<uv_stream_t *>(&s->conn));
            uv_read_start(reinterpret_cast<uv_stream_t *>(&s->conn), valve::alloc_read_buffer,
                          [](uv_stream_t *c, ssize_t n, const uv_buf_t *buf) {
                            auto *s = static_cast<Server *>(c->data);
                            if (n <= 0) return;
                            s->got.append(buf->base, static_cast<size_t>(n));
                            if (s->got.find("\r\n\r\n{\"n\":2}") == std::string::npos) return;
                            valve::write_string(
                                c, "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
                          });
          }) == 0);
  valve::ErrorHooks hooks(loop.ctx());
  hooks.send(R"({"n":2})");
  auto &results = loop.ctx().stats().error_hooks;
  REQUIRE(loop.run_until([&] { return results["ok"] == 1; }));
  CHECK(server.got.starts_with("POST /hook HTTP/1.1\r\n"));
  CHECK(server.got.find("Content-Type: application/json\r\n") != std::string::npos);
  CHECK(server.got.find("Content-Length: 7\r\n") != std::string::npos);
  uv_close(reinterpret_cast<uv_handle_t *>(&server.listener), nullptr);
  uv_close(reinterpret_cast<uv_handle_t *>(&server.conn), nullptr);
  loop.run_for(0.05);
  hooks.send(R"({"n":3})");  // nothing listens now
  REQUIRE(loop.run_until([&] { return results["failed"] == 1; }));
  CHECK(loop.logged("error hook (failed): connection refused") == 1);
}
