#include "worker.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <optional>
#include <random>

#include "line_reader.hpp"
#include "notify.hpp"
#include "pool.hpp"
#include "process.hpp"
#include "sandbox.hpp"
#include "server.hpp"
#include "stats.hpp"
#include "preloader.hpp"
#include "upstream.hpp"

namespace valve {

namespace {
constexpr size_t kTailLines = 20;
constexpr double kExitReportGrace = 0.5;  // how long a forked worker's exit status is awaited

std::string replace_all(std::string s, std::string_view from, std::string_view to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size()))
    s.replace(at, from.size(), to);
  return s;
}
}  // namespace

// One check of a worker over a connection of its own: connect and, when a path is given, GET it
// and read the status line. done(status, why) runs once: the HTTP status, 0 when only the connect
// was asked for, or -1 with the reason. It may destroy the probe.
class Probe {
 public:
  using Done = std::function<void(int status, std::string why)>;
  Probe(Worker &worker, uv_loop_t *loop, Done done)
      : worker_(worker),
        loop_(loop),
        done_(std::move(done)),
        timer_(loop, [this] { finish(-1, "no answer in time"); }) {}
  ~Probe() {
    *alive_ = false;
    stream_.close();
  }

  bool running() const { return running_; }

  void start(std::string path, double timeout) {
    stream_.close();
    seen_.clear();
    path_ = std::move(path);
    running_ = true;
    if (timeout > 0) timer_.start(timeout);
    int rc = stream_.connect(
        loop_, this, worker_.socket_path(), worker_.port(),
        [](void *self, int status) { static_cast<Probe *>(self)->on_connect(status); });
    if (rc != 0) {
      // Reported from the loop, never from inside start().
      worker_.pool().server().defer([alive = alive_, this, rc] {
        if (*alive) finish(-1, uv_message(rc));
      });
    }
  }

 private:
  void finish(int status, std::string why) {
    if (!running_) return;
    running_ = false;
    timer_.stop();
    stream_.close();
    done_(status, std::move(why));  // may destroy this probe: nothing after it
  }

  void on_connect(int status) {
    if (status != 0) return finish(-1, uv_message(status));
    if (path_.empty()) return finish(0, {});
    write_string(stream_.get(), fmt::format("GET {} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: "
                                            "valve-probe\r\nConnection: close\r\n\r\n",
                                            path_));
    uv_read_start(stream_.get(), alloc_read_buffer,
                  [](uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
                    if (auto *self = static_cast<Probe *>(s->data)) self->on_read(n, buf);
                  });
  }

  void on_read(ssize_t n, const uv_buf_t *buf) {
    if (n < 0) return finish(-1, "the connection closed before an answer");
    seen_.append(buf->base, static_cast<size_t>(n));
    size_t eol = seen_.find('\n');
    if (eol == std::string::npos) {
      if (seen_.size() > 1024) finish(-1, "not an HTTP answer");
      return;
    }
    // "HTTP/1.1 200 OK"
    int status = 0;
    if (seen_.starts_with("HTTP/1.") && seen_.size() >= 12) {
      auto code = parse_uint(std::string_view(seen_).substr(9, 3));
      if (code && *code >= 100 && *code <= 999) status = static_cast<int>(*code);
    }
    if (status == 0) return finish(-1, "not an HTTP answer");
    finish(status, {});
  }

  Worker &worker_;
  uv_loop_t *loop_;
  Done done_;
  Timer timer_;
  WorkerStream stream_;
  std::string path_;
  std::string seen_;
  bool running_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

 public:
  Probe(const Probe &) = delete;
  Probe &operator=(const Probe &) = delete;
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
  ReadinessProbe(Worker &worker, uv_loop_t *loop, bool forked)
      : worker_(worker),
        probe_(worker, loop, [this](int status, const std::string &) { on_result(status); }),
        retry_(loop, [this] { attempt(); }),
        delay_(forked ? 0.005 : 0.02),
        growth_(forked ? 1.2 : 1.5) {}

  void attempt() { probe_.start("/__valve/ready", 0); }

 private:
  void on_result(int status) {
    if (status > 0 && (++answers_ >= kWarmupAnswers || worker_.pool().queue_depth() > 0))
      return worker_.on_probe_result(true);  // may destroy this probe
    if (status > 0) return retry_.start(0);  // the warm-up request, at once
    retry_.start(delay_);
    delay_ = std::min(0.25, delay_ * growth_);
  }

  static constexpr int kWarmupAnswers = 2;
  Worker &worker_;
  Probe probe_;
  Timer retry_;
  double delay_;
  double growth_;
  int answers_ = 0;
};

Worker::Worker(Pool &pool, uint64_t id, uint64_t generation)
    : pool_(pool),
      id_(id),
      generation_(generation),
      startup_timer_(pool.server().loop(),
                     [this] {
                       if (state_ != State::starting) return;
                       pool_.log().warn("{} did not answer HTTP within {} s", label(),
                                        format_seconds(pool_.config().startup_timeout));
                       kill("start-up timed out");
                     }),
      kill_timer_(pool.server().loop(),
                  [this] {
                    if (state_ == State::stopping) {
                      pool_.log().warn("{} did not exit within {} s of SIGTERM; sending SIGKILL",
                                       label(), format_seconds(pool_.config().kill_timeout));
                      signal_group(pid_, SIGKILL);
                    }
                  }),
      exit_check_(pool.server().loop(), [this] { check_exit(); }),
      health_timer_(pool.server().loop(), [this] { check_health(); }),
      drain_timer_(pool.server().loop(), [this] {
        if (tunnels_ > 0)
          close_tunnels(fmt::format("still open {} s after the worker began draining",
                                    format_seconds(pool_.config().graceful_timeout)));
      }) {
  affinity_ = random_hex(16);
  const Config &cfg = pool.config();
  if (cfg.max_requests > 0) {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    request_limit_ =
        cfg.max_requests + std::uniform_int_distribution<uint64_t>(0, cfg.max_requests_jitter)(rng);
  }
}

Worker::~Worker() {
  *alive_ = false;
  if (fork_pending_) pool_.preloader()->cancel(*this);
  probe_.reset();
  health_probe_.reset();
  close_handles();
  if (pidfd_ >= 0) close(pidfd_);
}

std::string Worker::label() const {
  // With several apps: "worker model-v2/7", the app's name first.
  std::string name = pool_.server().names_apps() ? fmt::format("{}/{}", pool_.name(), id_)
                                                 : std::to_string(id_);
  if (pid_ <= 0) return fmt::format("worker {} (not forked yet)", name);
  return fmt::format("worker {} (pid {})", name, pid_);
}

std::string Worker::address() const {
  return socket_path_.empty() ? fmt::format("127.0.0.1:{}", port_) : "unix:" + socket_path_;
}

const char *Worker::state_name() const {
  switch (state_) {
    case State::starting:
      return "starting";
    case State::ready:
      return unhealthy_ ? "unhealthy" : retiring() ? "retiring" : "ready";
    case State::draining:
      return "draining";
    case State::stopping:
      return "stopping";
    case State::exited:
      return "exited";
  }
  return "unknown";
}

int Worker::launch() {
  const Config &cfg = pool_.config();
  Server &server = pool_.server();
  SpawnSpec spec;
  spec.env = pool_.worker_environment();
  spec.as = pool_.identity().credentials;
  spec.nice = static_cast<int>(cfg.worker_nice);
  set_variable(spec.env, "VALVE_WORKER_ID", std::to_string(id_));
  // The service manager's socket is valve's to speak on: a worker must not report for it, even
  // when --env names it.
  unset_variable(spec.env, kNotifySocketVariable);
  if (cfg.cmd.empty()) {
    socket_path_ = fmt::format("{}/w{}.sock", server.runtime_dir(), id_);
    spec.path = pool_.rscript_path();
    spec.argv = {spec.path, "--no-echo", "--no-restore", pool_.script_path()};
    set_variable(spec.env, "VALVE_FILE", pool_.api_file());
    set_variable(spec.env, "VALVE_SOCKET", socket_path_);
    set_variable(spec.env, "VALVE_TYPE", cfg.type);
    // The API's own directory, as plumber (or shiny) reads it: its relative paths mean the same
    // while it serves, and a worker of another user is not left in a directory it may not enter.
    spec.cwd = pool_.api_dir();
  } else {
    std::string command = cfg.cmd;
    if (command.find("{socket}") != std::string::npos) {
      socket_path_ = fmt::format("{}/w{}.sock", server.runtime_dir(), id_);
      command = replace_all(command, "{socket}", socket_path_);
      set_variable(spec.env, "VALVE_SOCKET", socket_path_);
    }
    if (command.find("{port}") != std::string::npos) {
      int port = pick_free_port();
      if (port < 0) return port;
      port_ = port;
      command = replace_all(command, "{port}", std::to_string(port));
      set_variable(spec.env, "VALVE_PORT", std::to_string(port_));
      if (!socket_path_.empty()) socket_path_.clear();  // both given: traffic goes to the port
    }
    // A simple command is exec'd directly so that it, not a shell, is valve's child: only a child
    // gets the parent-death signal. Shell syntax runs under /bin/sh (exec its last program).
    auto words = split_command(command);
    std::optional<std::string> program = words ? find_executable(words->front()) : std::nullopt;
    if (program) {
      spec.path = *program;
      spec.argv = std::move(*words);
    } else {
      spec.path = "/bin/sh";
      spec.argv = {"/bin/sh", "-c", command};
    }
  }
  if (!socket_path_.empty()) unlink(socket_path_.c_str());

  started_ms_ = monotonic_ms();
  if (cfg.preload && cfg.cmd.empty() && pool_.preloader()->fork(*this, spec)) {
    fork_pending_ = true;  // on_forked() or on_fork_failed() follows
    startup_timer_.start(cfg.startup_timeout);
    return 0;
  }
  Spawned child;
  int rc = spawn_process(spec, &child);
  if (rc != 0) return rc;
  startup_timer_.start(cfg.startup_timeout);
  attach(child);
  return 0;
}

void Worker::on_forked(const Spawned &child) {
  fork_pending_ = false;
  forked_ = true;
  attach(child);
}

void Worker::on_fork_failed(const SpawnSpec &spec, std::string_view why) {
  fork_pending_ = false;
  pool_.log().warn("worker {}: {}; launching it plainly", id_, why);
  startup_timer_.start(pool_.config().startup_timeout);  // the wait for a template is not its own
  Spawned child;
  int rc = spawn_process(spec, &child);
  if (rc != 0) {
    pool_.log().error("cannot launch worker {}: {}", id_, uv_message(rc));
    stop_requested_ = true;
    state_ = State::stopping;
    pool_.server().defer([this, alive = alive_] {
      if (*alive) on_exit(kExitNeverStarted);
    });
    return;
  }
  attach(child);
}

void Worker::end_unstarted(std::string_view why) {
  pool_.preloader()->cancel(*this);
  fork_pending_ = false;
  pool_.log().info("worker {} ends before it was forked: {}", id_, why);
  // Reported from the loop, never from inside stop() or kill(): the pool may be iterating.
  pool_.server().defer([this, alive = alive_] {
    if (*alive) on_exit(kExitNeverStarted);
  });
}

void Worker::attach(const Spawned &child) {
  Server &server = pool_.server();
  pid_ = child.pid;
  pidfd_ = child.pidfd;
  uv_loop_t *loop = server.loop();
  out_ = std::make_unique<LineReader>(loop, child.out_fd,
                                      [this](std::string_view line) { on_line(false, line); });
  err_ = std::make_unique<LineReader>(loop, child.err_fd,
                                      [this](std::string_view line) { on_line(true, line); });
  if (pidfd_ >= 0) {
    exit_poll_ = new_handle<uv_poll_t>(this);
    uv_poll_init(loop, exit_poll_, pidfd_);
    uv_poll_start(exit_poll_, UV_READABLE, [](uv_poll_t *p, int, int) {
      if (auto *self = static_cast<Worker *>(p->data)) self->check_exit();
    });
  } else if (!forked_) {
    exit_check_.start(0.05, 0.05);  // no pidfd on this kernel: poll waitpid
  }
  if (forked_) {
    pool_.log().info("{} forked from the template in {} ms, serving on {}", label(),
                     monotonic_ms() - started_ms_, address());
  } else {
    pool_.log().info("{} launched, serving on {}", label(), address());
  }
  if (server.wants_events())
    server.emit(fmt::format(R"({{"event":"worker_launched","worker":{},"pid":{},"forked":{}}})",
                            id_, pid_, forked_ ? "true" : "false"));
  probe_ = std::make_unique<ReadinessProbe>(*this, loop, forked_);
  probe_->attempt();
}

void Worker::check_exit() {
  if (state_ == State::exited || pid_ <= 0) return;
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) return on_exit(status);
  if (forked_ && r < 0 && errno == ECHILD) {
    // Not valve's child: the template reaps it and reports how it ended. Without a report soon
    // (the template is gone too, and another process reaped the worker), the status is unknown.
    if (exit_seen_) return on_exit(kExitUnknown);
    exit_seen_ = true;
    if (exit_poll_) uv_poll_stop(exit_poll_);  // level-triggered: it would fire again at once
    exit_check_.start(kExitReportGrace);
  }
}

void Worker::on_probe_result(bool answered) {
  if (!answered || state_ != State::starting) return;
  if (port_ != 0 && !port_listener_in_group(port_, pid_)) {
    pool_.log().warn(
        "{} lost the race for port {}: another process answers there; relaunching it "
        "on another port",
        label(), port_);
    lost_race_ = true;
    kill("lost its port");
    return;
  }
  on_ready();
}

void Worker::on_ready() {
  state_ = State::ready;
  ready_ms_ = last_used_ms_ = monotonic_ms();
  sample_rss();
  startup_timer_.stop();
  pool_.log().info("{} ready after {} ms", label(), ready_ms_ - started_ms_);
  if (pool_.server().wants_events())
    pool_.server().emit(
        fmt::format(R"({{"event":"worker_ready","worker":{},"pid":{},"startup_ms":{}}})", id_, pid_,
                    ready_ms_ - started_ms_));
  pool_.server().defer([p = probe_.release()] { delete p; });
  health_probe_ = std::make_unique<Probe>(
      *this, pool_.server().loop(),
      [this](int status, const std::string &why) { on_health_result(status, why); });
  double interval = pool_.config().health_interval;
  health_timer_.start(interval, interval);
  pool_.on_worker_ready(*this);
}

void Worker::check_health() {
  // A worker busy to its concurrency is not checked: an R worker serving a long request cannot
  // answer a check, yet is not unhealthy (--timeout covers a stuck request).
  if (state_ != State::ready || health_probe_->running()) return;
  if (in_flight_ >= pool_.config().concurrency()) return;
  health_probe_->start(pool_.config().health_path, pool_.config().health_timeout);
}

void Worker::on_health_result(int status, const std::string &why) {
  if (state_ != State::ready) return;
  const Config &cfg = pool_.config();
  bool ok = cfg.health_path.empty() ? status == 0 : status >= 200 && status < 400;
  if (ok) {
    health_fails_ = 0;
    ++health_passes_;
    if (unhealthy_ && health_passes_ >= cfg.health_rise)
      set_unhealthy(false, fmt::format("{} health checks in a row passed", health_passes_));
    return;
  }
  health_passes_ = 0;
  ++health_fails_;
  pool_.server().stats().health_check_failures++;
  std::string what = status > 0 ? fmt::format("GET {} answered {}", cfg.health_path, status)
                                : fmt::format("{}", why);
  pool_.log().debug("{}: health check failed: {}", label(), what);
  if (!unhealthy_ && health_fails_ >= cfg.health_fall)
    set_unhealthy(true,
                  fmt::format("{} health checks in a row failed (last: {})", health_fails_, what));
}

void Worker::note_request_result(bool ok) {
  if (ok) {
    request_fails_ = 0;
    return;
  }
  uint64_t limit = pool_.config().max_fails;
  if (++request_fails_ >= limit && limit > 0 && state_ == State::ready && !unhealthy_)
    set_unhealthy(true, fmt::format("{} requests in a row failed", request_fails_));
}

void Worker::set_unhealthy(bool unhealthy, std::string_view why) {
  unhealthy_ = unhealthy;
  health_passes_ = health_fails_ = request_fails_ = 0;
  if (unhealthy) {
    pool_.log().warn("{} is unhealthy: {}; it gets no new requests and is replaced", label(), why);
  } else {
    pool_.log().info("{} is healthy again: {}", label(), why);
  }
  pool_.on_worker_health(*this);
}

uint64_t Worker::sample_rss() {
  if (pid_ <= 0 || state_ == State::exited) return rss_bytes_ = pss_bytes_ = 0;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/statm", static_cast<int>(pid_));
  FILE *f = std::fopen(path, "r");
  if (!f) return rss_bytes_;
  unsigned long size = 0, resident = 0;
  if (std::fscanf(f, "%lu %lu", &size, &resident) == 2)
    rss_bytes_ = static_cast<uint64_t>(resident) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  std::fclose(f);
  if (!forked_) return rss_bytes_;
  if (auto pss = read_pss_bytes(pid_)) pss_bytes_ = *pss;
  return pss_bytes_;
}

UpstreamConn &Worker::lease() {
  ++in_flight_;
  if (!idle_.empty()) {
    UpstreamConn *conn = idle_.back();
    idle_.pop_back();
    return *conn;
  }
  conns_.push_back(std::make_unique<UpstreamConn>(*this));
  UpstreamConn &conn = *conns_.back();
  conn.connect();
  return conn;
}

void Worker::release(UpstreamConn &conn, bool reusable) {
  if (in_flight_ > 0) --in_flight_;
  ++served_;
  last_used_ms_ = monotonic_ms();
  last_used_unix_ms_ = unix_ms();
  if (reusable && state_ == State::ready && !conn.broken()) {
    idle_.push_back(&conn);
  } else {
    forget_conn(conn);
  }
  if (state_ == State::draining && in_flight_ == 0) {
    stop("its last request is done");
    return;
  }
  if (request_limit_ > 0 && served_ >= request_limit_ && state_ == State::ready && !retiring())
    pool_.retire(*this, "max-requests", fmt::format("served {} requests (max-requests)", served_));
  pool_.on_worker_free(*this);
}

void Worker::drain(std::string_view why) {
  if (state_ != State::ready) return;
  state_ = State::draining;
  health_timer_.stop();
  pool_.log().info("draining {}: {}", label(), why);
  for (UpstreamConn *c : std::vector<UpstreamConn *>(idle_)) forget_conn(*c);
  if (in_flight_ == 0) return stop(why);
  // Requests end within --timeout; WebSockets only when a side closes them: they get
  // graceful-timeout, then are closed (checked each second after, for one opened meanwhile).
  drain_timer_.start(pool_.config().graceful_timeout, 1);
}

void Worker::close_tunnels(std::string_view why) {
  pool_.log().info("{}: closing {} WebSocket{} {}", label(), tunnels_, tunnels_ == 1 ? "" : "s",
                   why);
  std::vector<UpstreamConn *> open;
  for (auto &c : conns_) {
    if (c->tunneling()) open.push_back(c.get());
  }
  for (UpstreamConn *c : open) c->fail(std::string(why));
}

void Worker::drop_idle(UpstreamConn &conn) { forget_conn(conn); }

void Worker::forget_conn(UpstreamConn &conn) {
  idle_.erase(std::remove(idle_.begin(), idle_.end(), &conn), idle_.end());
  pool_.server().defer_erase(conns_, &conn);
}

void Worker::fail_conns(std::string_view why) {
  std::vector<UpstreamConn *> all;
  for (auto &c : conns_) all.push_back(c.get());
  for (UpstreamConn *c : all) c->fail(std::string(why));
}

void Worker::stop(std::string_view why) {
  if (state_ == State::stopping || state_ == State::exited) return;
  state_ = State::stopping;
  stop_requested_ = true;
  stop_chosen_ = true;
  health_timer_.stop();
  drain_timer_.stop();
  if (fork_pending_) return end_unstarted(why);
  pool_.log().info("stopping {}: {}", label(), why);
  signal_group(pid_, SIGTERM);
  kill_timer_.start(pool_.config().kill_timeout);
}

void Worker::kill(std::string_view why) {
  if (state_ == State::exited) return;
  if (state_ != State::stopping) pool_.log().warn("killing {}: {}", label(), why);
  state_ = State::stopping;
  stop_requested_ = true;
  if (fork_pending_) return end_unstarted(why);
  signal_group(pid_, SIGKILL);
}

void Worker::on_exit(int wait_status) {
  if (state_ == State::exited) return;
  state_ = State::exited;
  startup_timer_.stop();
  kill_timer_.stop();
  exit_check_.stop();
  health_timer_.stop();
  drain_timer_.stop();
  probe_.reset();
  close_handles();
  // Anything else left in its process group goes with it.
  signal_group(pid_, SIGKILL);
  auto level = stop_requested_ ? LogLevel::info : LogLevel::warn;
  pool_.log().write(level, fmt::format("{} {}{}", label(), describe_exit(wait_status),
                                       stop_requested_ ? "" : " unexpectedly"));
  if (pool_.server().wants_events())
    pool_.server().emit(fmt::format(
        R"({{"event":"worker_exited","worker":{},"pid":{},"status":"{}","expected":{}}})", id_,
        pid_, json_escape(describe_exit(wait_status)), stop_requested_ ? "true" : "false"));
  fail_conns(fmt::format("worker {} {}", id_, describe_exit(wait_status)));
  if (!socket_path_.empty()) unlink(socket_path_.c_str());
  pool_.on_worker_exit(*this, wait_status, !was_ready());
}

void Worker::close_handles() {
  if (exit_poll_) close_handle(exit_poll_);
}

void Worker::on_line(bool is_stderr, std::string_view line) {
  pool_.log().info("{}{}: {}", label(), is_stderr ? "" : " [stdout]", line);
  tail_.emplace_back(line);
  if (tail_.size() > kTailLines) tail_.pop_front();
}

std::string Worker::tail() const {
  std::string out;
  for (const auto &l : tail_) out += "\n  " + l;
  return out;
}

}  // namespace valve
