#include "worker.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <optional>
#include <random>

#include "context.hpp"
#include "error_reports.hpp"
#include "json.hpp"
#include "launch.hpp"
#include "line_reader.hpp"
#include "notify.hpp"
#include "process.hpp"
#include "sandbox.hpp"
#include "stats.hpp"
#include "upstream.hpp"

namespace valve {

namespace {
constexpr double kExitReportGrace = 0.5;  // how long a forked worker's exit status is awaited

}  // namespace

Worker::Worker(Owner &owner, uint64_t id, uint64_t generation)
    : owner_(owner),
      ctx_(owner.context()),
      id_(id),
      generation_(generation),
      health_({owner.config().health_rise, owner.config().health_fall, owner.config().max_fails}),
      calls_(owner.context().deferred()),
      startup_timer_(owner.context().loop(),
                     [this] {
                       if (state_ != State::starting) return;
                       ctx_.log().warn("{} did not answer HTTP within {} s", label(),
                                       format_seconds(owner_.config().startup_timeout));
                       kill("start-up timed out");
                     }),
      kill_timer_(owner.context().loop(),
                  [this] {
                    if (state_ == State::stopping) {
                      ctx_.log().warn("{} did not exit within {} s of SIGTERM; sending SIGKILL",
                                      label(), format_seconds(owner_.config().kill_timeout));
                      signal_group(pid_, SIGKILL);
                    }
                  }),
      exit_check_(owner.context().loop(), [this] { check_exit(); }),
      health_timer_(owner.context().loop(), [this] { check_health(); }),
      drain_timer_(owner.context().loop(), [this] {
        if (tunnels_ > 0)
          close_tunnels(fmt::format("still open {} s after the worker began draining",
                                    format_seconds(owner_.config().graceful_timeout)));
      }) {
  affinity_ = random_hex(16);
  const Config &cfg = owner.config();
  if (cfg.max_requests > 0) {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    request_limit_ =
        cfg.max_requests + std::uniform_int_distribution<uint64_t>(0, cfg.max_requests_jitter)(rng);
  }
}

Worker::~Worker() {
  if (fork_pending_) owner_.cancel_fork(*this);
  probe_.reset();
  health_probe_.reset();
  close_handles();
  if (pidfd_ >= 0) close(pidfd_);
}

std::string Worker::label() const {
  // With several apps: "worker model-v2/7", the app's name first.
  std::string name =
      ctx_.names_apps() ? fmt::format("{}/{}", owner_.name(), id_) : std::to_string(id_);
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
      return health_.unhealthy() ? "unhealthy" : retiring() ? "retiring" : "ready";
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
  const Config &cfg = owner_.config();
  WorkerLaunch plan;
  if (int rc = owner_.plan_launch(id_, &plan); rc != 0) return rc;
  SpawnSpec &spec = plan.spec;
  socket_path_ = plan.socket_path;
  port_ = plan.port;
  if (!socket_path_.empty()) unlink(socket_path_.c_str());
  make_tmpdir(spec);

  started_ms_ = monotonic_ms();
  // The template is given the spec as it is (it makes a directory of its own under the same
  // TMPDIR); the forked worker is told its directory with the fork.
  if (cfg.preload && plan.preloadable && owner_.fork(*this, spec)) {
    fork_pending_ = true;  // on_forked() or on_fork_failed() follows
    startup_timer_.start(cfg.startup_timeout);
    return 0;
  }
  tmpdir_.give_to(spec.env);
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
  ctx_.log().warn("worker {}: {}; launching it plainly", id_, why);
  startup_timer_.start(owner_.config().startup_timeout);  // the wait for a template is not its own
  SpawnSpec own = spec;
  tmpdir_.give_to(own.env);
  Spawned child;
  int rc = spawn_process(own, &child);
  if (rc != 0) {
    ctx_.log().error("cannot launch worker {}: {}", id_, uv_message(rc));
    stop_requested_ = true;
    state_ = State::stopping;
    calls_.post([this] { on_exit(kExitNeverStarted); });
    return;
  }
  attach(child);
}

void Worker::make_tmpdir(const SpawnSpec &spec) {
  std::string base = temp_base(spec.env);
  int rc = tmpdir_.make(base, fmt::format("valve-worker-{}-{}", getpid(), id_), spec.as);
  // A worker runs without one rather than not at all: its temporary files then go to the TMPDIR
  // it would have had, as without valve (where R, if it cannot write there either, says so).
  if (rc != 0)
    ctx_.log().warn(
        "worker {}: cannot make its temporary directory in {}: {}; its temporary files go to {} "
        "itself, and stay there if it is killed",
        id_, base, uv_message(rc), base);
}

void Worker::end_unstarted(std::string_view why) {
  owner_.cancel_fork(*this);
  fork_pending_ = false;
  ctx_.log().info("worker {} ends before it was forked: {}", id_, why);
  // Reported from the loop, never from inside stop() or kill(): the pool may be iterating.
  calls_.post([this] { on_exit(kExitNeverStarted); });
}

void Worker::attach(const Spawned &child) {
  Context &ctx = ctx_;
  pid_ = child.pid;
  pidfd_ = child.pidfd;
  uv_loop_t *loop = ctx.loop();
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
    ctx_.log().info("{} forked from the template in {} ms, serving on {}", label(),
                    monotonic_ms() - started_ms_, address());
  } else {
    ctx_.log().info("{} launched, serving on {}", label(), address());
  }
  if (ctx.wants_events())
    ctx.emit(json_text(
        {{"event", "worker_launched"}, {"worker", id_}, {"pid", pid_}, {"forked", forked_}}));
  probe_ = std::make_unique<ReadinessProbe>(
      ctx, worker_address(), forked_, [this] { return owner_.queue_depth() > 0; },
      [this] { on_probe_result(true); });
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
    ctx_.log().warn(
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
  ctx_.log().info("{} ready after {} ms", label(), ready_ms_ - started_ms_);
  if (ctx_.wants_events())
    ctx_.emit(json_text({{"event", "worker_ready"},
                         {"worker", id_},
                         {"pid", pid_},
                         {"startup_ms", ready_ms_ - started_ms_}}));
  ctx_.defer([p = probe_.release()] { delete p; });
  health_probe_ = std::make_unique<Probe>(
      ctx_, worker_address(),
      [this](int status, const std::string &why) { on_health_result(status, why); });
  double interval = owner_.config().health_interval;
  health_timer_.start(interval, interval);
  owner_.on_worker_ready(*this);
}

void Worker::check_health() {
  // A worker busy to its concurrency is not checked: an R worker serving a long request cannot
  // answer a check, yet is not unhealthy (--timeout covers a stuck request).
  if (state_ != State::ready || health_probe_->running()) return;
  if (in_flight_ >= owner_.config().concurrency()) return;
  health_probe_->start(owner_.config().health_path, owner_.config().health_timeout);
}

void Worker::on_health_result(int status, const std::string &why) {
  if (state_ != State::ready) return;
  const Config &cfg = owner_.config();
  bool ok = cfg.health_path.empty() ? status == 0 : status >= 200 && status < 400;
  std::string what;
  if (!ok) {
    ctx_.stats().health_check_failures++;
    what = status > 0 ? fmt::format("GET {} answered {}", cfg.health_path, status) : why;
    ctx_.log().debug("{}: health check failed: {}", label(), what);
  }
  if (auto change = health_.on_check(ok, what)) set_unhealthy(!ok, *change);
}

void Worker::note_request_result(bool ok) {
  auto change = health_.on_request(ok);
  if (change && state_ == State::ready) set_unhealthy(true, *change);
}

void Worker::set_unhealthy(bool unhealthy, std::string_view why) {
  health_.set(unhealthy);
  if (unhealthy) {
    ctx_.log().warn("{} is unhealthy: {}; it gets no new requests and is replaced", label(), why);
  } else {
    ctx_.log().info("{} is healthy again: {}", label(), why);
  }
  owner_.on_worker_health(*this);
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
  if (in_flight_ == 0) {
    request_lines_.clear();
    request_bytes_ = 0;
    output_shared_ = false;
  } else {
    output_shared_ = true;
  }
  ++in_flight_;
  if (!idle_.empty()) {
    UpstreamConn *conn = idle_.back();
    idle_.pop_back();
    return *conn;
  }
  conns_.push_back(std::make_unique<UpstreamConn>(ctx_, *this, worker_address(), id_));
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
    owner_.retire(*this, "max-requests", fmt::format("served {} requests (max-requests)", served_));
  owner_.on_worker_free(*this);
}

void Worker::drain(std::string_view why) {
  if (state_ != State::ready) return;
  state_ = State::draining;
  health_timer_.stop();
  ctx_.log().info("draining {}: {}", label(), why);
  for (UpstreamConn *c : std::vector<UpstreamConn *>(idle_)) forget_conn(*c);
  if (in_flight_ == 0) return stop(why);
  // Requests end within --timeout; WebSockets only when a side closes them: they get
  // graceful-timeout, then are closed (checked each second after, for one opened meanwhile).
  drain_timer_.start(owner_.config().graceful_timeout, 1);
}

void Worker::close_tunnels(std::string_view why) {
  ctx_.log().info("{}: closing {} WebSocket{} {}", label(), tunnels_, tunnels_ == 1 ? "" : "s",
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
  ctx_.defer_erase(conns_, &conn);
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
  ctx_.log().info("stopping {}: {}", label(), why);
  signal_group(pid_, SIGTERM);
  kill_timer_.start(owner_.config().kill_timeout);
}

void Worker::kill(std::string_view why) {
  if (state_ == State::exited) return;
  if (state_ != State::stopping) ctx_.log().warn("killing {}: {}", label(), why);
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
  ctx_.log().write(level, fmt::format("{} {}{}", label(), describe_exit(wait_status),
                                      stop_requested_ ? "" : " unexpectedly"));
  if (ctx_.wants_events())
    ctx_.emit(json_text({{"event", "worker_exited"},
                         {"worker", id_},
                         {"pid", pid_},
                         {"status", describe_exit(wait_status)},
                         {"expected", stop_requested_}}));
  fail_conns(fmt::format("worker {} {}", id_, describe_exit(wait_status)));
  if (!socket_path_.empty()) unlink(socket_path_.c_str());
  tmpdir_.remove_later(ctx_);  // however it ended: R removes its tempdir() only on a normal quit
  owner_.on_worker_exit(*this, wait_status, !was_ready());
}

void Worker::close_handles() {
  if (exit_poll_) close_handle(exit_poll_);
}

void Worker::on_line(bool is_stderr, std::string_view line) {
  ctx_.log().info("{}{}: {}", label(), is_stderr ? "" : " [stdout]", line);
  tail_.emplace_back(line);
  if (tail_.size() > kOutputTailLines) tail_.pop_front();
  // The last lines (an R error comes last): at most kRequestOutputLines, of kRequestOutputBytes.
  request_bytes_ += request_lines_.emplace_back(line.substr(0, kRequestOutputBytes / 4)).size();
  while (request_lines_.size() > kRequestOutputLines || request_bytes_ > kRequestOutputBytes) {
    request_bytes_ -= request_lines_.front().size();
    request_lines_.pop_front();
  }
}

std::vector<std::string> Worker::request_output() {
  if (out_) out_->drain();
  if (err_) err_->drain();
  if (output_shared_) return {};
  return {request_lines_.begin(), request_lines_.end()};
}

std::string Worker::tail() const {
  std::string out;
  for (const auto &l : tail_) out += "\n  " + l;
  return out;
}

}  // namespace valve
