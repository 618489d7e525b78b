// A loop and a Context for unit tests of the parts below the server (pool, worker, health, proxy,
// reload), with the native test backend (VALVE_BACKEND) as the workers. A test counts callbacks,
// runs the loop until what it waits for happens (or a deadline passes), checks, and ends with the
// loop closed cleanly and no child left.
#pragma once

#include <doctest/doctest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "config.hpp"
#include "context.hpp"
#include "log.hpp"

namespace test {

// The backend as every worker: `--cmd VALVE_BACKEND --port {port}`, plus extra arguments.
inline valve::Config backend_config(const std::string &extra_args = {}) {
  const char *backend = getenv("VALVE_BACKEND");
  REQUIRE_MESSAGE(backend != nullptr, "VALVE_BACKEND is not set: run the tests through meson");
  valve::Config config;
  std::string cmd = std::string(backend) + " --port {port}";
  if (!extra_args.empty()) cmd += " " + extra_args;
  REQUIRE_FALSE(config.set("cmd", cmd).has_value());
  REQUIRE_FALSE(config.set("port", "0").has_value());
  REQUIRE_FALSE(config.set("log-level", "debug").has_value());
  if (geteuid() == 0) REQUIRE_FALSE(config.set("allow-root", "true").has_value());
  return config;
}

class TestLoop {
 public:
  // config: the server's options, as the context hands them down.
  explicit TestLoop(valve::Config config = {}) : config_(std::move(config)) {
    uv_loop_init(&loop_);
    valve::Logger log(valve::LogLevel::debug, &TestLoop::on_log, this);
    ctx_ = std::make_unique<valve::Context>(&loop_, config_, log, nullptr, nullptr);
    ctx_->deferred().start();
    char dir[] = "/tmp/valve-unit-XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    ctx_->set_runtime_dir(dir);
  }

  ~TestLoop() {
    ctx_->deferred().run();
    ctx_->deferred().close();
    // Every handle still open belongs to an object the test forgot: close it so the loop can.
    uv_walk(
        &loop_,
        [](uv_handle_t *h, void *) {
          if (!uv_is_closing(h)) uv_close(h, nullptr);
        },
        nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop_) == 0);
    std::string rm = "rm -rf '" + ctx_->runtime_dir() + "'";
    CHECK(system(rm.c_str()) == 0);
  }
  TestLoop(const TestLoop &) = delete;
  TestLoop &operator=(const TestLoop &) = delete;

  valve::Context &ctx() { return *ctx_; }
  uv_loop_t *loop() { return &loop_; }
  const valve::Config &config() const { return config_; }

  // Runs the loop until done() holds or `seconds` pass: whether done() held.
  bool run_until(const std::function<bool()> &done, double seconds = 10) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    uv_timer_t tick;
    uv_timer_init(&loop_, &tick);
    uv_timer_start(
        &tick, [](uv_timer_t *) {}, 5, 5);  // wake up to look again
    bool ok = done();
    while (!ok && std::chrono::steady_clock::now() < deadline) {
      uv_run(&loop_, UV_RUN_ONCE);
      ctx_->deferred().run();
      ok = done();
    }
    uv_close(reinterpret_cast<uv_handle_t *>(&tick), nullptr);
    uv_run(&loop_, UV_RUN_NOWAIT);
    return ok;
  }
  // Runs the loop for `seconds`, whatever happens.
  void run_for(double seconds) {
    run_until([] { return false; }, seconds);
  }

  // Lines logged so far containing text.
  size_t logged(const std::string &text) const {
    std::lock_guard lock(mutex_);
    size_t n = 0;
    for (const auto &l : lines_) n += l.find(text) != std::string::npos;
    return n;
  }
  std::string log_text() const {
    std::lock_guard lock(mutex_);
    std::string all;
    for (const auto &l : lines_) all += l + "\n";
    return all;
  }

 private:
  static void on_log(void *self, int, const char *line) {
    auto *t = static_cast<TestLoop *>(self);
    std::lock_guard lock(t->mutex_);
    t->lines_.emplace_back(line);
  }

  valve::Config config_;
  uv_loop_t loop_{};
  std::unique_ptr<valve::Context> ctx_;
  mutable std::mutex mutex_;
  std::vector<std::string> lines_;
};

}  // namespace test
