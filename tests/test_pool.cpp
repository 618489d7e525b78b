// pool.hpp: the pending queue, dispatch, launching and retiring workers, driven by a test loop with
// the native backend as workers and fake requests.
#include <doctest/doctest.h>

#include <deque>
#include <string>
#include <vector>

#include "http.hpp"
#include "loop_support.hpp"
#include "pool.hpp"
#include "upstream.hpp"
#include "worker.hpp"

namespace {

struct Observer final : valve::Pool::Observer {
  int ready = 0, terminated = 0, reloads_started = 0, reloads_finished = 0;
  std::vector<std::string> failures;
  void on_pool_ready(valve::Pool &) override { ++ready; }
  void on_pool_failed(valve::Pool &, int, std::string message) override {
    failures.push_back(std::move(message));
  }
  void on_pool_terminated(valve::Pool &) override { ++terminated; }
  void on_reload_started() override { ++reloads_started; }
  void on_reload_finished(bool) override { ++reloads_finished; }
};

// A request as the pool sees it: it records what happens to it.
struct FakeRequest final : valve::Pool::Request {
  valve::Head head;
  std::string affinity_token;
  uint64_t excluded = 0;
  valve::Worker *worker = nullptr;
  valve::UpstreamConn *conn = nullptr;
  bool queued = false;
  int rejected = 0;
  std::string why;

  FakeRequest() {
    head.method = "GET";
    head.target = "/hello";
  }
  const valve::Head &request() const override { return head; }
  uint64_t excluded_worker() const override { return excluded; }
  const std::string &affinity() const override { return affinity_token; }
  void dispatch(valve::Worker &w, valve::UpstreamConn &c) override {
    worker = &w;
    conn = &c;
  }
  void on_queued() override { queued = true; }
  void reject(int status, std::string_view message) override {
    rejected = status;
    why = message;
  }
  // The worker is done with it.
  void finish() {
    REQUIRE(worker != nullptr);
    worker->release(*conn, false);
  }
};

}  // namespace

TEST_CASE("pool: starts n-min workers, dispatches to a ready one, ends them all on terminate") {
  test::TestLoop t(test::backend_config());
  valve::Config config = t.config();
  REQUIRE_FALSE(config.set("n-min", "1").has_value());
  REQUIRE_FALSE(config.set("n-max", "2").has_value());
  Observer observer;
  {
    valve::Pool pool(t.ctx(), observer, config, "default", 1);
    auto problem = pool.check_environment();
    REQUIRE_MESSAGE(!problem, problem.value_or(""));
    pool.start();
    REQUIRE_MESSAGE(t.run_until([&] { return observer.ready == 1; }), t.log_text());
    FakeRequest req;
    pool.submit(req);
    CHECK(req.worker != nullptr);
    CHECK_FALSE(req.queued);
    req.finish();
    pool.terminate();
    REQUIRE_MESSAGE(t.run_until([&] { return observer.terminated == 1; }), t.log_text());
    CHECK(pool.all_exited());
  }
  t.run_for(0.05);
}
