// A worker's health: the readiness probe of a starting worker, active checks of a ready one, and
// the rise and fall that turn checks and request failures into healthy or unhealthy.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "context.hpp"
#include "util.hpp"

namespace valve {

// One check of a worker over a connection of its own: connect and, when a path is given, GET it
// and read the status line. done(status, why) runs once per start(): the HTTP status, 0 when only
// the connect was asked for, or -1 with the reason. It may destroy the probe.
class Probe {
 public:
  using Done = std::function<void(int status, std::string why)>;
  Probe(Context &ctx, WorkerAddress address, Done done);
  ~Probe();
  Probe(const Probe &) = delete;
  Probe &operator=(const Probe &) = delete;

  bool running() const { return running_; }
  // timeout 0: none.
  void start(std::string path, double timeout);

 private:
  void finish(int status, std::string why);
  void on_connect(int status);
  void on_read(ssize_t n, const uv_buf_t *buf);

  Context &ctx_;
  WorkerAddress address_;
  Done done_;
  Timer timer_;
  WorkerStream stream_;
  std::string path_;
  std::string seen_;
  bool running_ = false;
  DeferredCalls calls_;
};

// Polls a starting worker with GET /__valve/ready until it answers (any status counts), backing
// off from 20 ms to 250 ms between tries. Readiness never depends on what a worker logs. A forked
// worker serves within milliseconds, so it is polled from 5 ms, backing off more gently (a miss
// costs a connect to a socket that does not exist yet). Once it answers, and if no request is
// waiting for a worker, it is asked once more before it counts as ready: a fresh plumber worker
// spends 100-300 ms of CPU on each of its first two requests (R compiles plumber's code as it is
// first used), and that second one would otherwise be a client's (bench/run's seed scenario).
// When requests wait, the worker takes one at once: the cost is the same, and it starts sooner.
class ReadinessProbe {
 public:
  // requests_waiting: whether a request waits for a worker; ready: the worker answered (it may
  // destroy the probe).
  ReadinessProbe(Context &ctx, WorkerAddress address, bool forked,
                 std::function<bool()> requests_waiting, std::function<void()> ready);

  void attempt();

 private:
  void on_result(int status);

  static constexpr int kWarmupAnswers = 2;
  Probe probe_;
  Timer retry_;
  std::function<bool()> requests_waiting_;
  std::function<void()> ready_;
  double delay_;
  double growth_;
  int answers_ = 0;
};

// Rise and fall: a worker turns unhealthy after `fall` failed checks in a row, or `max_fails`
// requests in a row that it failed itself (passive checks; 0: never), and healthy again after
// `rise` checks in a row that passed. The owner applies each change with set().
class Health {
 public:
  struct Limits {
    uint64_t rise = 2;
    uint64_t fall = 3;
    uint64_t max_fails = 3;
  };
  explicit Health(Limits limits) : limits_(limits) {}

  // An active check passed or failed (what: how); the reason when the health should change.
  std::optional<std::string> on_check(bool ok, std::string_view what);
  // A request the worker answered (ok) or failed itself; the reason when it should turn unhealthy.
  std::optional<std::string> on_request(bool ok);
  // The health changes: every count starts again.
  void set(bool unhealthy);
  bool unhealthy() const { return unhealthy_; }

 private:
  Limits limits_;
  bool unhealthy_ = false;
  uint64_t passes_ = 0;  // checks in a row
  uint64_t fails_ = 0;
  uint64_t request_fails_ = 0;  // requests in a row the worker itself failed
};

}  // namespace valve
