// health.hpp: rise and fall (pure logic), the one-shot Probe and the ReadinessProbe, against the
// native backend run by the test and against addresses where nothing listens.
#include "health.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config.hpp"
#include "loop_support.hpp"
#include "pool_support.hpp"
#include "process.hpp"

using valve::Health;

namespace {

Health health(uint64_t rise, uint64_t fall, uint64_t max_fails) {
  return Health(Health::Limits{rise, fall, max_fails});
}

// Results of a probe's runs.
struct Results {
  std::vector<int> status;
  std::vector<std::string> why;
  valve::Probe::Done done() {
    return [this](int s, std::string w) {
      status.push_back(s);
      why.push_back(std::move(w));
    };
  }
};

}  // namespace

// ---- rise and fall

TEST_CASE("health: the limits default to the options' defaults (rise 2, fall 3, max-fails 3)") {
  Health::Limits limits;
  valve::Config config;
  CHECK(limits.rise == 2);
  CHECK(limits.fall == 3);
  CHECK(limits.max_fails == 3);
  CHECK(config.health_rise == limits.rise);
  CHECK(config.health_fall == limits.fall);
  CHECK(config.max_fails == limits.max_fails);
}

TEST_CASE("health: fall failed checks in a row turn it unhealthy, naming the last failure") {
  Health h = health(2, 3, 3);
  CHECK_FALSE(h.on_check(false, "first"));
  CHECK_FALSE(h.on_check(false, "second"));
  auto change = h.on_check(false, "GET /health answered 500");
  REQUIRE(change);
  CHECK(*change == "3 health checks in a row failed (last: GET /health answered 500)");
  // The owner applies the change.
  CHECK_FALSE(h.unhealthy());
  h.set(true);
  CHECK(h.unhealthy());
  // Once unhealthy, more failures report nothing.
  for (int i = 0; i < 10; ++i) CHECK_FALSE(h.on_check(false, "again"));
  CHECK(h.unhealthy());
}

TEST_CASE("health: until the owner applies a fall, each further failure reports it again") {
  Health h = health(2, 2, 3);
  CHECK_FALSE(h.on_check(false, "a"));
  CHECK(h.on_check(false, "b") == std::optional<std::string>("2 health checks in a row failed (last: b)"));
  CHECK(h.on_check(false, "c") == std::optional<std::string>("3 health checks in a row failed (last: c)"));
}

TEST_CASE("health: a passed check starts the count of failures again") {
  Health h = health(2, 3, 3);
  CHECK_FALSE(h.on_check(false, "x"));
  CHECK_FALSE(h.on_check(false, "x"));
  CHECK_FALSE(h.on_check(true, ""));
  CHECK_FALSE(h.on_check(false, "x"));
  CHECK_FALSE(h.on_check(false, "x"));
  CHECK(h.on_check(false, "x"));
}

TEST_CASE("health: passed checks on a healthy worker change nothing") {
  Health h = health(1, 1, 1);
  for (int i = 0; i < 20; ++i) CHECK_FALSE(h.on_check(true, ""));
  CHECK_FALSE(h.unhealthy());
}

TEST_CASE("health: rise passed checks in a row bring it back; a failure starts them again") {
  Health h = health(3, 2, 3);
  h.set(true);
  CHECK_FALSE(h.on_check(true, ""));
  CHECK_FALSE(h.on_check(true, ""));
  CHECK_FALSE(h.on_check(false, "x"));  // two passes, then a failure: counted from zero
  CHECK_FALSE(h.on_check(true, ""));
  CHECK_FALSE(h.on_check(true, ""));
  auto change = h.on_check(true, "");
  REQUIRE(change);
  CHECK(*change == "3 health checks in a row passed");
  h.set(false);
  CHECK_FALSE(h.unhealthy());
  // Healthy again: it takes fall failures anew to turn it, not the ones from before.
  CHECK_FALSE(h.on_check(false, "y"));
  CHECK(h.on_check(false, "y"));
}

TEST_CASE("health: fall 1 and rise 1 act on the first check") {
  Health h = health(1, 1, 3);
  CHECK(h.on_check(false, "x") == std::optional<std::string>("1 health checks in a row failed (last: x)"));
  h.set(true);
  CHECK(h.on_check(true, "") == std::optional<std::string>("1 health checks in a row passed"));
}

TEST_CASE("health: max-fails requests in a row it failed itself turn it unhealthy") {
  Health h = health(2, 3, 3);
  CHECK_FALSE(h.on_request(false));
  CHECK_FALSE(h.on_request(false));
  auto change = h.on_request(false);
  REQUIRE(change);
  CHECK(*change == "3 requests in a row failed");
  h.set(true);
  // An unhealthy worker's failures report nothing more.
  for (int i = 0; i < 5; ++i) CHECK_FALSE(h.on_request(false));
}

TEST_CASE("health: a request it answered starts the count of failed requests again") {
  Health h = health(2, 3, 2);
  CHECK_FALSE(h.on_request(false));
  CHECK_FALSE(h.on_request(true));
  CHECK_FALSE(h.on_request(false));
  CHECK(h.on_request(false) == std::optional<std::string>("2 requests in a row failed"));
}

TEST_CASE("health: max-fails 0 never turns a worker unhealthy for its requests") {
  Health h = health(2, 3, 0);
  for (int i = 0; i < 1000; ++i) REQUIRE_FALSE(h.on_request(false));
  // Active checks still work.
  CHECK_FALSE(h.on_check(false, "x"));
  CHECK_FALSE(h.on_check(false, "x"));
  CHECK(h.on_check(false, "x"));
}

TEST_CASE("health: max-fails 1 acts on the first failed request") {
  Health h = health(2, 3, 1);
  CHECK(h.on_request(false) == std::optional<std::string>("1 requests in a row failed"));
}

TEST_CASE("health: failed checks and failed requests are counted apart") {
  Health h = health(2, 3, 3);
  for (int i = 0; i < 2; ++i) {
    CHECK_FALSE(h.on_check(false, "x"));
    CHECK_FALSE(h.on_request(false));
  }
  // A passed check does not forgive failed requests, nor an answered request failed checks.
  CHECK_FALSE(h.on_check(true, ""));
  CHECK(h.on_request(false));
  Health g = health(2, 3, 3);
  CHECK_FALSE(g.on_check(false, "x"));
  CHECK_FALSE(g.on_check(false, "x"));
  CHECK_FALSE(g.on_request(true));
  CHECK(g.on_check(false, "x"));
}

TEST_CASE("health: set() starts every count again") {
  Health h = health(2, 3, 3);
  CHECK_FALSE(h.on_check(false, "x"));
  CHECK_FALSE(h.on_check(false, "x"));
  CHECK_FALSE(h.on_request(false));
  CHECK_FALSE(h.on_request(false));
  h.set(false);
  CHECK_FALSE(h.on_check(false, "x"));
  CHECK_FALSE(h.on_check(false, "x"));
  CHECK_FALSE(h.on_request(false));
  CHECK_FALSE(h.on_request(false));
  CHECK(h.on_check(false, "x"));
  CHECK(h.on_request(false));
  // Passes before turning unhealthy do not count toward rising again.
  Health g = health(2, 3, 3);
  CHECK_FALSE(g.on_check(true, ""));
  g.set(true);
  CHECK_FALSE(g.on_check(true, ""));
  CHECK(g.on_check(true, ""));
}

// ---- Probe

TEST_CASE("probe: GET reads the status of a live worker's answer; no path only connects") {
  test::TestLoop t;
  test::BackendProcess backend;
  REQUIRE(backend.wait_listening());
  Results r;
  valve::Probe probe(t.ctx(), {"", backend.port()}, r.done());
  CHECK_FALSE(probe.running());
  probe.start("/status?code=503", 5);
  CHECK(probe.running());
  REQUIRE(t.run_until([&] { return r.status.size() == 1; }));
  CHECK(r.status[0] == 503);
  CHECK(r.why[0].empty());
  CHECK_FALSE(probe.running());
  // The same probe runs again, once per start().
  probe.start("/hello", 5);
  REQUIRE(t.run_until([&] { return r.status.size() == 2; }));
  CHECK(r.status[1] == 200);
  probe.start("", 5);
  REQUIRE(t.run_until([&] { return r.status.size() == 3; }));
  CHECK(r.status[2] == 0);
  t.run_for(0.05);
  CHECK(r.status.size() == 3);
}

TEST_CASE("probe: over a Unix socket") {
  test::TestLoop t;
  std::string socket = t.ctx().runtime_dir() + "/probe.sock";
  test::BackendProcess backend({}, socket);
  REQUIRE(backend.wait_listening());
  Results r;
  valve::Probe probe(t.ctx(), {socket, 0}, r.done());
  probe.start("/status?code=204", 5);
  REQUIRE(t.run_until([&] { return r.status.size() == 1; }));
  CHECK(r.status[0] == 204);
}

TEST_CASE("probe: where nothing listens it fails with the reason, never from inside start()") {
  test::TestLoop t;
  Results r;
  SUBCASE("a closed port") {
    int port = valve::pick_free_port();
    REQUIRE(port > 0);
    valve::Probe probe(t.ctx(), {"", port}, r.done());
    probe.start("/hello", 5);
    CHECK(r.status.empty());
    REQUIRE(t.run_until([&] { return r.status.size() == 1; }));
    CHECK(r.status[0] == -1);
    CHECK(r.why[0].find("ECONNREFUSED") != std::string::npos);
  }
  SUBCASE("a socket that does not exist") {
    valve::Probe probe(t.ctx(), {t.ctx().runtime_dir() + "/none.sock", 0}, r.done());
    probe.start("", 5);
    CHECK(r.status.empty());
    REQUIRE(t.run_until([&] { return r.status.size() == 1; }));
    CHECK(r.status[0] == -1);
    CHECK(r.why[0].find("ENOENT") != std::string::npos);
  }
  t.run_for(0.02);
  CHECK(r.status.size() == 1);
}

TEST_CASE("probe: a worker that does not answer fails at the timeout") {
  test::TestLoop t;
  test::BackendProcess backend;
  REQUIRE(backend.wait_listening());
  Results r;
  valve::Probe probe(t.ctx(), {"", backend.port()}, r.done());
  // The loop's clock stood still while the test waited for the backend: timers count from it.
  uv_update_time(t.loop());
  auto began = std::chrono::steady_clock::now();
  probe.start("/hang", 0.05);
  REQUIRE(t.run_until([&] { return r.status.size() == 1; }));
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  CHECK(r.status[0] == -1);
  CHECK(r.why[0] == "no answer in time");
  CHECK(took >= 0.045);
  CHECK(took < 5);
}

TEST_CASE("probe: a worker that closes the connection without an answer fails") {
  test::TestLoop t;
  test::BackendProcess backend;
  REQUIRE(backend.wait_listening());
  Results r;
  valve::Probe probe(t.ctx(), {"", backend.port()}, r.done());
  probe.start("/crash", 5);  // the backend exits as it reads the head
  REQUIRE(t.run_until([&] { return r.status.size() == 1; }));
  CHECK(r.status[0] == -1);
  CHECK(r.why[0] == "the connection closed before an answer");
}

TEST_CASE("probe: done may destroy the probe") {
  test::TestLoop t;
  test::BackendProcess backend;
  REQUIRE(backend.wait_listening());
  int calls = 0;
  int status = 0;
  std::unique_ptr<valve::Probe> owned;
  owned = std::make_unique<valve::Probe>(t.ctx(), valve::WorkerAddress{"", backend.port()},
                                         [&](int s, std::string) {
                                           ++calls;
                                           status = s;
                                           owned.reset();
                                         });
  owned->start("/hello", 5);
  REQUIRE(t.run_until([&] { return calls == 1; }));
  CHECK(status == 200);
  CHECK(owned == nullptr);
  // A failure reported from the loop may destroy it too.
  calls = 0;
  owned = std::make_unique<valve::Probe>(
      t.ctx(), valve::WorkerAddress{t.ctx().runtime_dir() + "/none.sock", 0},
      [&](int s, std::string) {
        ++calls;
        status = s;
        owned.reset();
      });
  owned->start("", 5);
  REQUIRE(t.run_until([&] { return calls == 1; }));
  CHECK(status == -1);
  t.run_for(0.02);
  CHECK(calls == 1);
}

TEST_CASE("probe: destroyed while running, it never calls back") {
  test::TestLoop t;
  test::BackendProcess backend;
  REQUIRE(backend.wait_listening());
  int calls = 0;
  {
    valve::Probe probe(t.ctx(), {"", backend.port()}, [&](int, std::string) { ++calls; });
    probe.start("/sleep?ms=20", 0.01);
  }
  {
    // A failure already posted to the loop is dropped with its probe.
    valve::Probe probe(t.ctx(), {t.ctx().runtime_dir() + "/none.sock", 0},
                       [&](int, std::string) { ++calls; });
    probe.start("", 0);
  }
  t.run_for(0.05);
  CHECK(calls == 0);
}

// ---- ReadinessProbe

namespace {

// The backend's count of requests (its /stats answer counts itself).
int backend_requests(int port) {
  std::string answer = test::http_get(port, "/stats");
  size_t body = answer.find("\r\n\r\n");
  REQUIRE_MESSAGE(body != std::string::npos, answer);
  return static_cast<int>(test::parse_json(answer.substr(body + 4))["requests"].number);
}

}  // namespace

TEST_CASE("readiness: a worker is ready after a warm-up answer, or at once when requests wait") {
  test::TestLoop t;
  test::BackendProcess backend;
  REQUIRE(backend.wait_listening());
  bool waiting = false;
  int ready = 0;
  SUBCASE("none waiting: two answers") {
    valve::ReadinessProbe probe(t.ctx(), {"", backend.port()}, false, [&] { return waiting; },
                                [&] { ++ready; });
    probe.attempt();
    REQUIRE(t.run_until([&] { return ready == 1; }));
    CHECK(backend_requests(backend.port()) == 3);
  }
  SUBCASE("a request waiting: one answer") {
    waiting = true;
    valve::ReadinessProbe probe(t.ctx(), {"", backend.port()}, false, [&] { return waiting; },
                                [&] { ++ready; });
    probe.attempt();
    REQUIRE(t.run_until([&] { return ready == 1; }));
    CHECK(backend_requests(backend.port()) == 2);
  }
  t.run_for(0.05);
  CHECK(ready == 1);
}

TEST_CASE("readiness: it keeps trying until the worker listens, and any status counts") {
  test::TestLoop t;
  test::BackendProcess backend({"--delay-start", "60"});
  int ready = 0;
  double at = 0;
  valve::ReadinessProbe probe(t.ctx(), {"", backend.port()}, false, [] { return false; }, [&] {
    ++ready;
    at = backend.seconds_since_start();
  });
  probe.attempt();
  REQUIRE(t.run_until([&] { return ready == 1; }));
  CHECK(at >= 0.06);
  // The backend answers /__valve/ready with 404: an answer all the same.
  CHECK(backend_requests(backend.port()) == 3);
}
