// worker.hpp: one worker process under a fake owner (the pool's side of Worker::Owner): readiness,
// the start-up timeout, active health checks and passive failures, draining, stopping, killing,
// max-requests, and how its end is reported.
#include "worker.hpp"

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "launch.hpp"
#include "loop_support.hpp"
#include "pool_support.hpp"
#include "process.hpp"
#include "upstream.hpp"

namespace {

// What a pool would be to its worker: it plans the launch (the backend on a free port, or a
// command of the test's), and records every call the worker makes.
class FakeOwner final : public valve::Worker::Owner {
 public:
  // options: set on the server's defaults; args: the backend's, after --port N.
  explicit FakeOwner(const test::Options &options = {}, std::vector<std::string> args = {})
      : loop_(make_config(options)), config_(make_config(options)), args_(std::move(args)) {}

  ~FakeOwner() {
    // However the test ended, the process is gone before the worker is.
    if (worker_ && worker_->pid() > 0 && worker_->state() != valve::Worker::State::exited) {
      worker_->kill("the test is over");
      loop_.run_until([&] { return exits > 0; }, 10);
    }
    worker_.reset();
  }
  FakeOwner(const FakeOwner &) = delete;
  FakeOwner &operator=(const FakeOwner &) = delete;

  // Instead of the backend: this argv, serving nowhere.
  void run_instead(std::vector<std::string> argv) { argv_ = std::move(argv); }

  valve::Worker &launch() {
    worker_ = std::make_unique<valve::Worker>(*this, 1, 1);
    uv_update_time(loop_.loop());  // its timers count from now
    launched_ = std::chrono::steady_clock::now();
    REQUIRE(worker_->launch() == 0);
    REQUIRE(worker_->pid() > 0);
    return *worker_;
  }
  valve::Worker &launch_ready() {
    launch();
    REQUIRE_MESSAGE(loop_.run_until([&] { return ready > 0; }), loop_.log_text());
    return *worker_;
  }
  // Stops the worker (SIGTERM) and checks that it exited, reaped, as asked.
  void end() {
    REQUIRE(worker_ != nullptr);
    worker_->stop("the test is over");
    REQUIRE_MESSAGE(loop_.run_until([&] { return exits > 0; }), loop_.log_text());
    CHECK(worker_->state() == valve::Worker::State::exited);
    loop_.run_for(0.01);
    CHECK(test::children_of_self().empty());
  }
  double seconds_since_launch() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - launched_).count();
  }

  test::TestLoop &loop() { return loop_; }
  valve::Stats &stats() { return loop_.ctx().stats(); }
  bool run_until(const std::function<bool()> &done, double seconds = 10) {
    return loop_.run_until(done, seconds);
  }

  // ---- Worker::Owner
  valve::Context &context() override { return loop_.ctx(); }
  const valve::Config &config() const override { return config_; }
  const std::string &name() const override { return name_; }
  int plan_launch(uint64_t id, valve::WorkerLaunch *out) const override {
    valve::SpawnSpec &spec = out->spec;
    spec.env = {"VALVE_WORKER_ID=" + std::to_string(id)};
    if (!argv_.empty()) {
      spec.path = argv_.front();
      spec.argv = argv_;
      out->socket_path = loop_dir() + "/nowhere.sock";
      return 0;
    }
    int port = valve::pick_free_port();
    if (port < 0) return port;
    spec.path = test::backend_path();
    spec.argv = {spec.path, "--port", std::to_string(port)};
    spec.argv.insert(spec.argv.end(), args_.begin(), args_.end());
    out->port = port;
    return 0;
  }
  bool fork(valve::Worker &, const valve::SpawnSpec &) override { return false; }
  void cancel_fork(valve::Worker &) override { FAIL("a worker launched plainly cancels no fork"); }
  size_t queue_depth() const override { return waiting; }

  void on_worker_ready(valve::Worker &) override { ++ready; }
  void retire(valve::Worker &w, std::string kind, std::string_view why) override {
    retired.push_back(kind + ": " + std::string(why));
    w.set_retiring(kind);
  }
  void on_worker_health(valve::Worker &w) override {
    health.push_back(w.unhealthy());
    failed_checks_at_change.push_back(stats().health_check_failures);
  }
  void on_worker_free(valve::Worker &) override { ++freed; }
  void on_worker_exit(valve::Worker &, int status, bool never) override {
    ++exits;
    wait_status = status;
    never_ready = never;
  }

  // What the worker told its owner.
  int ready = 0;
  std::vector<std::string> retired;
  std::vector<bool> health;  // unhealthy after each change
  std::vector<uint64_t> failed_checks_at_change;
  int freed = 0;
  int exits = 0;
  int wait_status = 0;
  bool never_ready = false;
  size_t waiting = 0;  // requests the owner says are waiting

 private:
  static valve::Config make_config(const test::Options &options) {
    valve::Config config;
    REQUIRE_FALSE(config.set("log-level", "debug").has_value());
    for (const auto &[key, value] : options.items) {
      auto problem = config.set(key, value);
      REQUIRE_MESSAGE(!problem, problem.value_or(""));
    }
    return config;
  }
  std::string loop_dir() const { return const_cast<test::TestLoop &>(loop_).ctx().runtime_dir(); }

  test::TestLoop loop_;
  valve::Config config_;
  std::vector<std::string> args_;
  std::vector<std::string> argv_;
  std::string name_ = "default";
  std::chrono::steady_clock::time_point launched_;
  std::unique_ptr<valve::Worker> worker_;
};

bool killed_by(int status, int sig) { return WIFSIGNALED(status) && WTERMSIG(status) == sig; }
bool exited_with(int status, int code) { return WIFEXITED(status) && WEXITSTATUS(status) == code; }

}  // namespace

TEST_CASE("worker: it is ready only once it answers HTTP, and tells its owner once") {
  FakeOwner owner({}, {"--delay-start", "100"});
  valve::Worker &w = owner.launch();
  CHECK(w.state() == valve::Worker::State::starting);
  CHECK(std::string(w.state_name()) == "starting");
  CHECK_FALSE(w.accepting());
  CHECK(w.address() == "127.0.0.1:" + std::to_string(w.port()));
  owner.loop().run_for(0.06);
  // The process runs, but does not listen yet.
  CHECK(owner.ready == 0);
  CHECK(w.state() == valve::Worker::State::starting);
  REQUIRE(owner.run_until([&] { return owner.ready == 1; }));
  CHECK(owner.seconds_since_launch() >= 0.1);
  CHECK(w.state() == valve::Worker::State::ready);
  CHECK(w.accepting());
  CHECK(w.was_ready());
  CHECK(w.ready_ms() >= w.started_ms() + 100);
  CHECK(owner.loop().logged("worker 1 (pid " + std::to_string(w.pid()) + ") ready after") == 1);
  // Its output is logged and kept for error messages.
  CHECK(w.tail().find("backend listening on 127.0.0.1:" + std::to_string(w.port())) !=
        std::string::npos);
  owner.loop().run_for(0.03);
  CHECK(owner.ready == 1);
  owner.end();
  CHECK(exited_with(owner.wait_status, 0));
  CHECK_FALSE(owner.never_ready);
  CHECK(w.stop_requested());
  CHECK(w.stop_chosen());
}

TEST_CASE("worker: startup-timeout kills a worker that never answers") {
  FakeOwner owner({{"startup-timeout", "0.1"}}, {"--delay-start", "60000"});
  valve::Worker &w = owner.launch();
  pid_t pid = w.pid();
  REQUIRE(owner.run_until([&] { return owner.exits == 1; }));
  CHECK(owner.seconds_since_launch() >= 0.095);
  CHECK(owner.ready == 0);
  CHECK(owner.never_ready);
  CHECK(killed_by(owner.wait_status, SIGKILL));
  CHECK(w.state() == valve::Worker::State::exited);
  CHECK_FALSE(w.stop_chosen());  // a failure, not valve's choice
  std::string label = "worker 1 (pid " + std::to_string(pid) + ")";
  CHECK(owner.loop().logged(label + " did not answer HTTP within 0.1 s") == 1);
  CHECK(owner.loop().logged("killing " + label + ": start-up timed out") == 1);
  owner.loop().run_for(0.01);
  CHECK(test::children_of_self().empty());
}

TEST_CASE("worker: health-fall failed checks in a row turn it unhealthy, and it stays so") {
  FakeOwner owner({{"health-path", "/status?code=500"},
                   {"health-interval", "0.02"},
                   {"health-fall", "3"}});
  valve::Worker &w = owner.launch_ready();
  REQUIRE(owner.run_until([&] { return !owner.health.empty(); }));
  CHECK(owner.health == std::vector<bool>{true});
  // Not one check before: the third failure turned it.
  CHECK(owner.failed_checks_at_change == std::vector<uint64_t>{3});
  CHECK(w.unhealthy());
  CHECK_FALSE(w.accepting());
  CHECK(w.awaiting_replacement());
  CHECK(std::string(w.state_name()) == "unhealthy");
  CHECK(owner.loop().logged("is unhealthy: 3 health checks in a row failed (last: GET "
                            "/status?code=500 answered 500); it gets no new requests") == 1);
  // Checks go on failing: no further change.
  uint64_t failed = owner.stats().health_check_failures;
  REQUIRE(owner.run_until([&] { return owner.stats().health_check_failures >= failed + 3; }));
  CHECK(owner.health.size() == 1);
  owner.end();
}

TEST_CASE("worker: a health check that gets no answer within health-timeout fails") {
  FakeOwner owner({{"health-path", "/hang"},
                   {"health-interval", "0.02"},
                   {"health-timeout", "0.03"},
                   {"health-fall", "2"}});
  valve::Worker &w = owner.launch_ready();
  REQUIRE(owner.run_until([&] { return !owner.health.empty(); }));
  CHECK(w.unhealthy());
  CHECK(owner.loop().logged("2 health checks in a row failed (last: no answer in time)") == 1);
  owner.end();
}

TEST_CASE("worker: with no health-path a check is a connection; a passing worker stays healthy") {
  FakeOwner owner({{"health-interval", "0.02"}, {"health-fall", "1"}});
  valve::Worker &w = owner.launch_ready();
  owner.loop().run_for(0.08);
  CHECK(owner.health.empty());
  CHECK(owner.stats().health_check_failures == 0);
  CHECK(w.accepting());
  owner.end();
}

TEST_CASE("worker: a worker busy to its concurrency is not health-checked") {
  FakeOwner owner({{"health-path", "/status?code=500"},
                   {"health-interval", "0.02"},
                   {"health-fall", "1000"}});
  valve::Worker &w = owner.launch_ready();
  valve::UpstreamConn &conn = w.lease();
  CHECK(w.in_flight() == 1);
  // A check begun before the lease may still end; none begins after it.
  owner.loop().run_for(0.04);
  uint64_t failed = owner.stats().health_check_failures;
  CHECK(failed <= 1);
  owner.loop().run_for(0.08);
  CHECK(owner.stats().health_check_failures == failed);
  w.release(conn, false);
  CHECK(w.in_flight() == 0);
  REQUIRE(owner.run_until([&] { return owner.stats().health_check_failures >= failed + 2; }));
  owner.end();
}

TEST_CASE("worker: max-fails failed requests turn it unhealthy; health-rise passed checks heal it") {
  FakeOwner owner({{"health-path", "/hello"},
                   {"health-interval", "0.02"},
                   {"health-rise", "2"},
                   {"max-fails", "2"}});
  valve::Worker &w = owner.launch_ready();
  w.note_request_result(false);
  w.note_request_result(true);  // an answer starts the count again
  w.note_request_result(false);
  CHECK(owner.health.empty());
  CHECK_FALSE(w.unhealthy());
  w.note_request_result(false);
  REQUIRE(owner.health == std::vector<bool>{true});
  CHECK(w.unhealthy());
  CHECK(owner.loop().logged("is unhealthy: 2 requests in a row failed") == 1);
  // The checks pass: two in a row bring it back.
  REQUIRE(owner.run_until([&] { return owner.health.size() == 2; }));
  CHECK(owner.health == std::vector<bool>{true, false});
  CHECK_FALSE(w.unhealthy());
  CHECK(w.accepting());
  CHECK(std::string(w.state_name()) == "ready");
  CHECK(owner.loop().logged("is healthy again: 2 health checks in a row passed") == 1);
  owner.end();
}

TEST_CASE("worker: with max-fails 0 failed requests never turn it unhealthy") {
  FakeOwner owner({{"max-fails", "0"}});
  valve::Worker &w = owner.launch_ready();
  for (int i = 0; i < 50; ++i) w.note_request_result(false);
  CHECK(owner.health.empty());
  CHECK(w.accepting());
  owner.end();
}

TEST_CASE("worker: after max-requests it asks its owner to retire it, once") {
  FakeOwner owner({{"max-requests", "2"}});
  valve::Worker &w = owner.launch_ready();
  for (int i = 1; i <= 3; ++i) {
    valve::UpstreamConn &conn = w.lease();
    w.release(conn, false);
    CHECK(w.served() == static_cast<uint64_t>(i));
    CHECK(owner.retired.size() == (i < 2 ? 0u : 1u));
  }
  CHECK(owner.retired == std::vector<std::string>{"max-requests: served 2 requests (max-requests)"});
  CHECK(w.retiring());
  CHECK(w.retire_reason() == "max-requests");
  CHECK(std::string(w.state_name()) == "retiring");
  // A retiring worker still serves (last of all, the pool decides).
  CHECK(w.accepting());
  CHECK(owner.freed == 3);
  owner.end();
}

TEST_CASE("worker: draining waits for the request in flight, then stops it") {
  FakeOwner owner;
  valve::Worker &w = owner.launch_ready();
  valve::UpstreamConn &conn = w.lease();
  w.drain("the test drains it");
  CHECK(w.state() == valve::Worker::State::draining);
  CHECK_FALSE(w.accepting());
  owner.loop().run_for(0.05);
  CHECK(owner.exits == 0);
  CHECK(w.state() == valve::Worker::State::draining);
  CHECK(owner.loop().logged("draining worker 1 (pid " + std::to_string(w.pid()) +
                            "): the test drains it") == 1);
  w.release(conn, true);
  CHECK(w.state() == valve::Worker::State::stopping);
  REQUIRE(owner.run_until([&] { return owner.exits == 1; }));
  CHECK(exited_with(owner.wait_status, 0));  // the backend ends cleanly on SIGTERM
  CHECK_FALSE(owner.never_ready);
  CHECK(owner.loop().logged("stopping worker 1 (pid " + std::to_string(w.pid()) +
                            "): its last request is done") == 1);
  owner.loop().run_for(0.01);
  CHECK(test::children_of_self().empty());
}

TEST_CASE("worker: an idle worker drains at once") {
  FakeOwner owner;
  valve::Worker &w = owner.launch_ready();
  w.drain("idle");
  CHECK(w.state() == valve::Worker::State::stopping);
  REQUIRE(owner.run_until([&] { return owner.exits == 1; }));
  CHECK(exited_with(owner.wait_status, 0));
}

TEST_CASE("worker: stop() sends SIGTERM; one that ignores it gets SIGKILL after kill-timeout") {
  FakeOwner owner({{"kill-timeout", "0.1"}});
  // A process group that ignores SIGTERM (its children inherit that), and never serves.
  owner.run_instead({"/bin/sh", "-c", "trap '' TERM; echo started; while :; do sleep 0.01; done"});
  valve::Worker &w = owner.launch();
  pid_t pid = w.pid();
  REQUIRE(owner.run_until([&] { return owner.loop().logged("[stdout]: started") == 1; }));
  // Timers count from the loop's clock, which stood still since the loop last ran.
  uv_update_time(owner.loop().loop());
  auto began = std::chrono::steady_clock::now();
  w.stop("the test stops it");
  CHECK(w.state() == valve::Worker::State::stopping);
  REQUIRE(owner.run_until([&] { return owner.exits == 1; }));
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  CHECK(took >= 0.095);
  CHECK(killed_by(owner.wait_status, SIGKILL));
  CHECK(owner.never_ready);
  CHECK(owner.loop().logged("worker 1 (pid " + std::to_string(pid) +
                            ") did not exit within 0.1 s of SIGTERM; sending SIGKILL") == 1);
  // Its whole group went with it: no sleep is left behind.
  CHECK(owner.run_until([&] { return test::live_members_of_group(pid).empty(); }, 5));
  CHECK(test::children_of_self().empty());
}

TEST_CASE("worker: an exit valve did not ask for is reported with its status, unexpected") {
  FakeOwner owner;
  valve::Worker &w = owner.launch_ready();
  pid_t pid = w.pid();
  REQUIRE(::kill(pid, SIGKILL) == 0);  // the worker's own process, started by this test
  REQUIRE(owner.run_until([&] { return owner.exits == 1; }));
  CHECK(killed_by(owner.wait_status, SIGKILL));
  CHECK_FALSE(owner.never_ready);
  CHECK_FALSE(w.stop_requested());
  CHECK(w.state() == valve::Worker::State::exited);
  CHECK(owner.loop().logged("worker 1 (pid " + std::to_string(pid) +
                            ") was killed by signal 9 (SIGKILL) unexpectedly") == 1);
  owner.loop().run_for(0.01);
  CHECK(test::children_of_self().empty());
}

TEST_CASE("worker: a worker that exits before it is ready is reported as never ready") {
  FakeOwner owner({}, {"--exit-at-start", "3"});
  valve::Worker &w = owner.launch();
  REQUIRE(owner.run_until([&] { return owner.exits == 1; }));
  CHECK(exited_with(owner.wait_status, 3));
  CHECK(owner.never_ready);
  CHECK(owner.ready == 0);
  CHECK(w.tail().find("backend: exiting at start as asked") != std::string::npos);
}
