#include "pool.hpp"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "exchange.hpp"
#include "process.hpp"
#include "server.hpp"
#include "spawn_policy.hpp"
#include "valve/valve.h"
#include "worker.hpp"

namespace valve {

namespace {
constexpr unsigned kStartupAttempts = 3;  // failed launches, none ever ready: start-up has failed
constexpr int kExitPlumberMissing = 78;   // set by the R bootstrap script
constexpr uint64_t kStableMs = 10000;     // a worker up this long after ready ends a crash loop
}  // namespace

Pool::Pool(Server &server, const Config &config)
    : server_(server),
      config_(config),
      launch_timer_(server.loop(), [this] { launch_needed(); }),
      maintenance_timer_(server.loop(), [this] { retire_idle(); }) {}

Pool::~Pool() = default;

const Logger &Pool::log() const { return server_.log(); }

std::string Pool::script_path() const { return server_.runtime_dir() + "/worker.R"; }

std::optional<std::string> Pool::check_environment() {
  if (!config_.cmd.empty()) return std::nullopt;
  auto rscript = find_executable(config_.rscript);
  if (!rscript)
    return fmt::format("rscript {}: not found (is R installed? apt-get install r-base-core)",
                       config_.rscript);
  rscript_path_ = *rscript;
  struct stat st {};
  if (stat(config_.file.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    return fmt::format("file {}: no such file", config_.file);
  if (access(config_.file.c_str(), R_OK) != 0)
    return fmt::format("file {}: not readable", config_.file);
  char resolved[PATH_MAX];
  if (!realpath(config_.file.c_str(), resolved))
    return fmt::format("file {}: cannot resolve", config_.file);
  api_file_ = resolved;
  return std::nullopt;
}

void Pool::start() {
  maintenance_timer_.start(config_.check_unused, config_.check_unused);
  launch_needed();
}

Worker *Pool::find_pid(int pid) {
  for (auto &w : workers_) {
    if (w->pid() == pid) return w.get();
  }
  return nullptr;
}

Worker *Pool::pick(const Exchange *ex) {
  Worker *best = nullptr;
  for (auto &w : workers_) {
    if (!w->accepting() || w->in_flight() >= config_.worker_concurrency) continue;
    if (ex && ex->excluded_worker() == w->id()) continue;
    // Most recently used first: spare workers fall idle and can be retired.
    if (!best || w->last_used_ms() > best->last_used_ms()) best = w.get();
  }
  return best;
}

void Pool::assign(Worker &w, Exchange &ex) { ex.dispatch(w, w.lease()); }

void Pool::submit(Exchange &ex, bool front) {
  if (terminating_) {
    ex.reject(503, "the server is shutting down");
    return;
  }
  if (Worker *w = pick(&ex)) {
    assign(*w, ex);
    return;
  }
  if (queue_.size() >= config_.queue_max) {
    log().warn("queue full ({} waiting): rejecting {} {}", queue_.size(), ex.request().method,
               ex.request().target);
    ex.reject(
        503, fmt::format("all workers are busy and the queue is full ({} waiting)", queue_.size()));
    return;
  }
  if (front) {
    queue_.push_front(&ex);
  } else {
    queue_.push_back(&ex);
  }
  ex.on_queued();
  launch_needed();
}

void Pool::cancel(Exchange &ex) {
  queue_.erase(std::remove(queue_.begin(), queue_.end(), &ex), queue_.end());
}

void Pool::drain_queue() {
  for (auto it = queue_.begin(); it != queue_.end();) {
    Worker *w = pick(*it);
    if (!w) {
      if (!pick(nullptr)) return;  // no free slot anywhere
      ++it;                        // only its excluded worker is free: let others pass
      continue;
    }
    Exchange *ex = *it;
    it = queue_.erase(it);
    assign(*w, *ex);
    it = queue_.begin();  // assign may have changed the queue
  }
}

void Pool::on_worker_ready(Worker &w) {
  (void)w;
  if (!ever_ready_) failures_ = 0;  // start-up succeeded; later crash loops count from here
  if (!ever_ready_) {
    ever_ready_ = true;
    server_.on_first_ready();
  }
  drain_queue();
  launch_needed();
}

void Pool::on_worker_free(Worker &w) {
  if (w.accepting()) drain_queue();
}

void Pool::on_worker_exit(Worker &w, int wait_status, bool never_ready) {
  bool expected = w.stop_requested();  // stopped, killed, or lost its port race
  if (never_ready && !w.lost_race() && !terminating_) {
    ++failures_;
    if (!ever_ready_ && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == kExitPlumberMissing) {
      server_.fatal(VALVE_ECONFIG,
                    fmt::format("rscript {}: the R package plumber is not installed{}",
                                config_.rscript, w.tail()));
    } else if (!ever_ready_ && failures_ >= kStartupAttempts) {
      server_.fatal(
          VALVE_ESTARTUP,
          fmt::format("no worker became ready: {} launches failed; the last {} {}. Its last "
                      "output:{}",
                      failures_, w.label(), describe_exit(wait_status), w.tail()));
    } else {
      double delay = back_off();
      log().warn("{}{} failed to start; next launch in {} s{}",
                 failures_ >= 2 ? "crash loop: " : "", w.label(), format_seconds(delay),
                 failures_ >= 2 ? fmt::format(" ({} launches in a row failed)", failures_) : "");
    }
  } else if (!expected && !terminating_) {
    // A worker that dies soon after becoming ready is part of a crash loop too.
    bool unstable = monotonic_ms() - w.ready_ms() < kStableMs;
    failures_ = unstable ? failures_ + 1 : 0;
    double delay = back_off();
    if (failures_ >= 2) {
      log().warn(
          "crash loop: {} crashed {} s after start; {} workers in a row died young; next "
          "launch in {} s",
          w.label(), (monotonic_ms() - w.started_ms()) / 1000, failures_, format_seconds(delay));
    } else {
      log().warn("{} crashed; replacing it if needed", w.label());
    }
  }
  server_.defer_erase(workers_, &w);  // forget the worker once this callback is over
  if (terminating_) {
    if (all_exited()) server_.on_pool_terminated();
    return;
  }
  launch_needed();
}

void Pool::launch_needed() {
  if (terminating_) return;
  PoolCounts c;
  c.n_min = config_.n_min;
  c.n_max = config_.n_max;
  c.concurrency = config_.worker_concurrency;
  c.waiting = queue_.size();
  for (auto &w : workers_) {
    if (w->state() == Worker::State::starting) {
      ++c.starting;
      ++c.alive;
    } else if (w->state() == Worker::State::ready) {
      ++c.alive;
      c.free_slots +=
          config_.worker_concurrency - std::min(w->in_flight(), config_.worker_concurrency);
    }
  }
  size_t n = workers_to_launch(c);
  if (n == 0) return;
  uint64_t now = monotonic_ms();
  if (failures_ > 0 && ever_ready_) {
    for (auto &w : workers_) {
      if (w->accepting() && now - w->ready_ms() >= kStableMs) failures_ = 0;
    }
  }
  if (failures_ > 0) {
    if (now < next_launch_ms_) {
      launch_timer_.start(static_cast<double>(next_launch_ms_ - now) / 1000.0);
      return;
    }
    if (c.starting > 0) return;  // in a crash loop, one launch at a time
    n = 1;
  }
  for (size_t i = 0; i < n; ++i) launch_one();
}

double Pool::back_off() {
  double delay = crash_backoff_seconds(failures_);
  next_launch_ms_ = monotonic_ms() + static_cast<uint64_t>(delay * 1000);
  return delay;
}

void Pool::launch_one() {
  auto w = std::make_unique<Worker>(*this, next_id_++);
  int rc = w->launch();
  if (rc != 0) {
    log().error("cannot launch a worker: {}", uv_message(rc));
    ++failures_;
    launch_timer_.start(back_off());
    return;
  }
  workers_.push_back(std::move(w));
}

void Pool::retire_idle() {
  if (terminating_) return;
  uint64_t now = monotonic_ms();
  auto max_idle_ms = static_cast<uint64_t>(config_.max_age * 1000);
  size_t alive = 0;
  std::vector<Worker *> idle;
  for (auto &w : workers_) {
    if (w->state() == Worker::State::starting || w->state() == Worker::State::ready) ++alive;
    if (w->accepting() && w->in_flight() == 0 && now - w->last_used_ms() >= max_idle_ms)
      idle.push_back(w.get());
  }
  std::sort(idle.begin(), idle.end(),
            [](Worker *a, Worker *b) { return a->last_used_ms() < b->last_used_ms(); });
  for (Worker *w : idle) {
    if (alive <= config_.n_min) break;
    w->stop(fmt::format("unused for {} s", (now - w->last_used_ms()) / 1000));
    --alive;
  }
}

void Pool::terminate() {
  if (terminating_) return;
  terminating_ = true;
  launch_timer_.stop();
  maintenance_timer_.stop();
  std::deque<Exchange *> waiting;
  waiting.swap(queue_);
  for (Exchange *ex : waiting) ex->reject(503, "the server is shutting down");
  std::vector<Worker *> all;
  for (auto &w : workers_) all.push_back(w.get());
  for (Worker *w : all) w->stop("shutting down");
  if (all_exited()) server_.defer([this] { server_.on_pool_terminated(); });
}

bool Pool::all_exited() const {
  return std::all_of(workers_.begin(), workers_.end(),
                     [](const auto &w) { return w->state() == Worker::State::exited; });
}

std::string Pool::workers_json() const {
  std::string out = "[";
  uint64_t now = monotonic_ms();
  for (const auto &w : workers_) {
    if (out.size() > 1) out += ",";
    out += fmt::format(
        "{{\"id\":{},\"pid\":{},\"state\":\"{}\",\"address\":\"{}\",\"requests\":{},\"in_flight\":{"
        "},"
        "\"age_s\":{:.3f},\"idle_s\":{:.3f}}}",
        w->id(), w->pid(), w->state_name(), json_escape(w->address()), w->served(), w->in_flight(),
        (now - w->started_ms()) / 1000.0,
        w->in_flight() ? 0.0 : (now - w->last_used_ms()) / 1000.0);
  }
  return out + "]";
}

}  // namespace valve
