// Test doubles and helpers for the pool, worker and health tests: a pool observer and a request
// that record what happens to them, a pool run on a test loop that always ends its workers, the
// pool's workers read back from Pool::workers(), the native backend as a process of the test's
// own, and this process's children (zombies included).
#pragma once

#include <arpa/inet.h>
#include <dirent.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <deque>
#include <fstream>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "http.hpp"
#include "loop_support.hpp"
#include "pool.hpp"
#include "process.hpp"
#include "support.hpp"
#include "upstream.hpp"
#include "worker.hpp"

namespace test {

// Options to set, in order: {{"n-min", "2"}, {"n-max", "4"}}. (A type of its own: a braced list
// of pairs would also fit a vector's iterator-pair constructor, making calls ambiguous.)
struct Options {
  std::vector<std::pair<std::string, std::string>> items;
  Options() = default;
  Options(std::initializer_list<std::pair<std::string, std::string>> list) : items(list) {}
};

// ---- processes

// The processes whose parent is this one, zombies included: none once every child is reaped.
inline std::vector<pid_t> children_of_self() {
  std::vector<pid_t> out;
  pid_t self = getpid();
  DIR *dir = opendir("/proc");
  if (!dir) return out;
  while (dirent *d = readdir(dir)) {
    char *end = nullptr;
    long pid = strtol(d->d_name, &end, 10);
    if (*end != 0 || pid <= 0) continue;
    std::ifstream in(std::string("/proc/") + d->d_name + "/stat");
    std::string stat;
    if (!std::getline(in, stat)) continue;
    size_t paren = stat.rfind(')');
    if (paren == std::string::npos) continue;
    // ") S PPID ..."
    long ppid = strtol(stat.c_str() + paren + 4, nullptr, 10);
    if (ppid == self) out.push_back(static_cast<pid_t>(pid));
  }
  closedir(dir);
  return out;
}

inline std::string backend_path() {
  const char *backend = getenv("VALVE_BACKEND");
  REQUIRE_MESSAGE(backend != nullptr, "VALVE_BACKEND is not set: run the tests through meson");
  return backend;
}

// The native backend as a child of the test itself (not of a pool), serving on a free loopback
// port or on a Unix socket; killed and reaped when it goes out of scope.
class BackendProcess {
 public:
  // args: after --port N (or --socket PATH when socket_path is given).
  explicit BackendProcess(std::vector<std::string> args = {}, std::string socket_path = {})
      : socket_path_(std::move(socket_path)) {
    valve::SpawnSpec spec;
    spec.path = backend_path();
    spec.argv = {spec.path};
    if (socket_path_.empty()) {
      port_ = valve::pick_free_port();
      REQUIRE(port_ > 0);
      spec.argv.insert(spec.argv.end(), {"--port", std::to_string(port_)});
    } else {
      spec.argv.insert(spec.argv.end(), {"--socket", socket_path_});
    }
    spec.argv.insert(spec.argv.end(), args.begin(), args.end());
    REQUIRE(valve::spawn_process(spec, &child_) == 0);
    started_ = std::chrono::steady_clock::now();
  }
  ~BackendProcess() {
    kill_and_reap(child_.pid);
    for (int fd : {child_.pidfd, child_.out_fd, child_.err_fd})
      if (fd >= 0) close(fd);
  }
  BackendProcess(const BackendProcess &) = delete;
  BackendProcess &operator=(const BackendProcess &) = delete;

  // Waits for "backend listening on ..." (it then accepts connections).
  bool wait_listening(double seconds = 10) {
    return read_line(child_.out_fd, seconds).starts_with("backend listening on");
  }
  // Ends it (SIGKILL) and reaps it.
  void kill_now() {
    kill_and_reap(child_.pid);
    child_.pid = -1;
  }
  pid_t pid() const { return child_.pid; }
  int port() const { return port_; }
  const std::string &socket_path() const { return socket_path_; }
  double seconds_since_start() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  }

 private:
  valve::Spawned child_;
  int port_ = 0;
  std::string socket_path_;
  std::chrono::steady_clock::time_point started_;
};

// A blocking HTTP/1.0 GET to 127.0.0.1:port: the whole answer, or "" when it fails.
inline std::string http_get(int port, const std::string &path, double timeout_seconds = 5) {
  FdGuard fd(connect_loopback(port));
  if (fd.fd < 0) return {};
  std::string request = "GET " + path + " HTTP/1.0\r\nHost: test\r\n\r\n";
  if (write(fd.fd, request.data(), request.size()) != static_cast<ssize_t>(request.size()))
    return {};
  return read_until_eof(fd.fd, timeout_seconds);
}

// ---- the pool's doubles

struct PoolObserver final : valve::Pool::Observer {
  int ready = 0, terminated = 0, reloads_started = 0;
  std::vector<bool> reloads_finished;
  std::vector<std::pair<int, std::string>> failures;
  void on_pool_ready(valve::Pool &) override { ++ready; }
  void on_pool_failed(valve::Pool &, int code, std::string message) override {
    failures.emplace_back(code, std::move(message));
  }
  void on_pool_terminated(valve::Pool &) override { ++terminated; }
  void on_reload_started() override { ++reloads_started; }
  void on_reload_finished(bool ok) override { reloads_finished.push_back(ok); }
};

// A request as the pool sees it, and as the connection to its worker sees it: it records what
// happens to it. It sends nothing unless asked (send()); finish() hands the worker back.
struct FakeRequest final : valve::Pool::Request, valve::UpstreamConn::Handler {
  valve::Head head;
  std::string affinity_token;
  std::string key = "127.0.0.1";  // its client (client_key())
  valve::Priority priority_class = valve::Priority::normal;
  valve::Pool *pool = nullptr;  // told when its worker is done with it (finish())
  uint64_t excluded = 0;
  valve::Worker *worker = nullptr;
  valve::UpstreamConn *conn = nullptr;
  uint64_t worker_id = 0;  // the worker it was dispatched to, kept after finish()
  pid_t worker_pid = -1;
  int dispatches = 0;
  bool queued = false;
  int rejected = 0;
  std::string why;
  int answer_status = 0;  // the worker's answer, after send()
  bool answered = false;
  std::string failure;  // the connection failed

  explicit FakeRequest(std::string target = "/hello") {
    head.method = "GET";
    head.target = std::move(target);
  }
  FakeRequest(const FakeRequest &) = delete;
  FakeRequest &operator=(const FakeRequest &) = delete;

  bool dispatched() const { return worker_id != 0; }
  bool holding() const { return conn != nullptr; }

  // Pool::Request
  const valve::Head &request() const override { return head; }
  uint64_t excluded_worker() const override { return excluded; }
  const std::string &affinity() const override { return affinity_token; }
  const std::string &client_key() const override { return key; }
  valve::Priority priority() const override { return priority_class; }
  void dispatch(valve::Worker &w, valve::UpstreamConn &c) override {
    ++dispatches;
    worker = &w;
    conn = &c;
    worker_id = w.id();
    worker_pid = w.pid();
    queued = false;
    c.attach(*this);
  }
  void on_queued() override { queued = true; }
  void reject(int status, std::string_view message) override {
    queued = false;
    rejected = status;
    why = message;
  }

  // Sends the request's head to the worker; the answer is recorded, and the worker handed back.
  void send() {
    REQUIRE(conn != nullptr);
    conn->send(head.method + " " + head.target + " HTTP/1.1\r\nHost: test\r\n\r\n");
  }
  // The worker is done with it (as a proxy does once the answer is over).
  void finish(bool reusable = false) {
    REQUIRE(conn != nullptr);
    valve::UpstreamConn *c = std::exchange(conn, nullptr);
    valve::Worker *w = std::exchange(worker, nullptr);
    c->detach();
    if (pool) pool->done(*this);  // as a proxy does, before the worker is free
    w->release(*c, reusable);
  }

  // UpstreamConn::Handler
  bool websocket() const override { return false; }
  int on_upstream_head(valve::Head &h) override {
    answer_status = h.status;
    return 0;
  }
  void on_upstream_body(std::string_view) override {}
  void on_upstream_complete(bool reusable) override {
    answered = true;
    worker->note_answered();
    worker->note_request_result(true);
    finish(reusable);
  }
  void on_upstream_unfinished() override {}
  void on_upstream_failed(std::string_view reason) override {
    failure = reason;
    worker->note_request_result(false);
    finish(false);
  }
  void on_upstream_drained() override {}
  void on_upstream_switched(std::string_view) override {}
  void on_upstream_tunnel_data(std::string_view) override {}
};

// One worker of a pool, as the test sees it.
struct WorkerInfo {
  uint64_t id = 0;
  pid_t pid = -1;
  uint64_t generation = 0;
  std::string state;  // state_name(): starting, ready, retiring, unhealthy, draining, ...
  uint64_t requests = 0;
};

inline std::vector<WorkerInfo> workers_of(const valve::Pool &pool) {
  std::vector<WorkerInfo> out;
  for (const auto &w : pool.workers())
    out.push_back({w->id(), w->pid(), w->generation(), w->state_name(), w->served()});
  return out;
}

// Workers of the pool in a state ("ready", "starting", "retiring", ...).
inline size_t count_in_state(const valve::Pool &pool, std::string_view state) {
  size_t n = 0;
  for (const auto &w : workers_of(pool)) n += w.state == state;
  return n;
}

// A pool on a test loop with the backend as workers. Its workers are always ended: by finish(),
// which checks that they all exited and left no child behind, or, when a check failed on the way,
// by the destructor. Its requests (request()) outlive the pool.
class PoolHarness {
 public:
  // options: set on top of backend_config(extra_args).
  explicit PoolHarness(const Options &options = {}, const std::string &extra_args = {})
      : PoolHarness(with_options(backend_config(extra_args), options)) {}
  explicit PoolHarness(valve::Config config) : loop_(config), config_(std::move(config)) {}

  ~PoolHarness() {
    if (!pool_) return;
    end_workers();
    pool_.reset();
  }
  PoolHarness(const PoolHarness &) = delete;
  PoolHarness &operator=(const PoolHarness &) = delete;

  static valve::Config with_options(valve::Config config, const Options &options) {
    for (const auto &[key, value] : options.items) {
      auto problem = config.set(key, value);
      REQUIRE_MESSAGE(!problem, problem.value_or(""));
    }
    auto problem = config.validate();
    REQUIRE_MESSAGE(!problem, problem.value_or(""));
    return config;
  }

  // Makes the pool (its environment checked) and starts it.
  valve::Pool &start() {
    make();
    pool_->start();
    return *pool_;
  }
  valve::Pool &make() {
    pool_ = std::make_unique<valve::Pool>(loop_.ctx(), observer_, config_, "default", 1);
    auto problem = pool_->check_environment();
    REQUIRE_MESSAGE(!problem, problem.value_or(""));
    return *pool_;
  }
  // Starts the pool and waits for its first worker to be ready.
  valve::Pool &start_ready() {
    start();
    REQUIRE_MESSAGE(run_until([&] { return observer_.ready == 1; }), log_text());
    return *pool_;
  }
  // Runs until `n` workers are ready (and healthy, not retiring).
  bool until_ready(size_t n, double seconds = 10) {
    return run_until([&] { return count_in_state(*pool_, "ready") == n; }, seconds);
  }

  // Ends the pool's workers and checks that every one exited and was reaped.
  void finish() {
    REQUIRE(pool_ != nullptr);
    CHECK_MESSAGE(end_workers(), log_text());
    CHECK(pool_->all_exited());
    CHECK(observer_.terminated == 1);
    pool_.reset();
    loop_.run_for(0.01);
    CHECK_MESSAGE(children_of_self().empty(), log_text());
  }

  // A request that lives as long as the pool (a test that stops early leaves none queued behind).
  FakeRequest &request(std::string target = "/hello") {
    requests_.push_back(std::make_unique<FakeRequest>(std::move(target)));
    requests_.back()->pool = pool_.get();
    return *requests_.back();
  }

  valve::Pool &pool() { return *pool_; }
  PoolObserver &observer() { return observer_; }
  TestLoop &loop() { return loop_; }
  valve::Context &ctx() { return loop_.ctx(); }
  valve::Stats &stats() { return loop_.ctx().stats(); }
  const valve::Config &config() const { return config_; }
  // The pool's options, which it reads on each change (as the server's scale does).
  valve::Config &config_for_scaling() { return config_; }
  bool run_until(const std::function<bool()> &done, double seconds = 10) {
    return loop_.run_until(done, seconds);
  }
  void run_for(double seconds) { loop_.run_for(seconds); }
  size_t logged(const std::string &text) const { return loop_.logged(text); }
  std::string log_text() const { return loop_.log_text(); }

 private:
  bool end_workers() {
    pool_->terminate();
    return loop_.run_until([&] { return observer_.terminated > 0 && pool_->all_exited(); }, 15);
  }

  TestLoop loop_;
  valve::Config config_;
  PoolObserver observer_;
  std::deque<std::unique_ptr<FakeRequest>> requests_;  // outlive the pool
  std::unique_ptr<valve::Pool> pool_;
};

}  // namespace test
