#include "pool.hpp"

#include <dirent.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "context.hpp"
#include "http.hpp"
#include "json.hpp"
#include "launch.hpp"
#include "openapi.hpp"
#include "preloader.hpp"
#include "process.hpp"
#include "spawn_policy.hpp"
#include "stats.hpp"
#include "valve/valve.h"

namespace valve {

namespace {
constexpr unsigned kStartupAttempts = 3;  // failed launches, none ever ready: start-up has failed
constexpr int kExitPlumberMissing = 78;   // set by the R bootstrap script
constexpr uint64_t kStableMs = 10000;     // a worker up this long after ready ends a crash loop
constexpr double kMonitorSeconds = 1;     // how often resident memory is read
constexpr uint64_t kSpareBytes = 16 << 20;  // what a spare may cost (about 12 MB: it wrote that)

bool read_file(const std::string &path, std::string *text, std::string *why) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *why = fmt::format("cannot open {}: {}", path, strerror(errno));
    return false;
  }
  std::ostringstream all;
  all << in.rdbuf();
  *text = std::move(all).str();
  return true;
}
}  // namespace

Pool::Pool(Context &ctx, Observer &observer, const Config &config, std::string name,
           uint64_t serial)
    : ctx_(ctx),
      observer_(observer),
      calls_(ctx.deferred()),
      config_(config),
      name_(std::move(name)),
      serial_(serial),
      queue_(config.client_max_in_flight, config.client_max_queued),
      launch_timer_(ctx.loop(), [this] { rebalance(); }),
      maintenance_timer_(ctx.loop(), [this] { retire_idle(); }),
      monitor_timer_(ctx.loop(), [this] { monitor(); }) {
  if (config.preload) preloader_ = std::make_unique<Preloader>(*this);
}

Pool::~Pool() = default;

const Logger &Pool::log() const { return ctx_.log(); }

int Pool::plan_launch(uint64_t id, WorkerLaunch *out) const {
  LaunchSettings settings{config_,  ctx_.runtime_dir(), rscript_path_,        api_file_,
                          api_dir_, worker_env_,        identity_.credentials};
  // A new worker is of the current generation (launch_one lists it once launched); a relaunch
  // keeps its own.
  uint64_t generation = generation_;
  for (auto &w : workers_)
    if (w->id() == id) generation = w->generation();
  settings.openapi_path = openapi_path(generation);
  return plan_worker_launch(settings, id, out);
}

bool Pool::fork(Worker &w, const SpawnSpec &spec) {
  return preloader_ && preloader_->fork(w, spec);
}

void Pool::cancel_fork(Worker &w) {
  if (preloader_) preloader_->cancel(w);
}

std::optional<std::string> Pool::check_environment() {
  std::string error;
  auto identity = resolve_identity(config_, &error);
  if (!identity) return error;
  identity_ = std::move(*identity);
  if (auto err = load_worker_environment()) return err;
  if (!config_.openapi.empty()) {
    char resolved[PATH_MAX];
    std::string text, why;
    if (!realpath(config_.openapi.c_str(), resolved) || !read_file(resolved, &text, &why))
      return fmt::format("openapi {}: cannot read: {}", config_.openapi,
                         why.empty() ? strerror(errno) : why);
    if (!ApiSpec::parse(text, &why))
      return fmt::format("openapi {}: not an OpenAPI document: {}", config_.openapi, why);
    openapi_file_ = resolved;
  }
  if (!config_.cmd.empty()) return std::nullopt;
  auto rscript = find_executable(config_.rscript);
  if (!rscript)
    return fmt::format("rscript {}: not found (is R installed? apt-get install r-base-core)",
                       config_.rscript);
  rscript_path_ = *rscript;
  struct stat st {};
  bool app_dir = config_.shiny() && stat(config_.file.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  if (app_dir) {
    // What shiny::runApp() serves: app.R, or server.R with ui.R (or www/index.html).
    std::string dir = config_.file;
    if (access((dir + "/app.R").c_str(), R_OK) != 0 &&
        access((dir + "/server.R").c_str(), R_OK) != 0)
      return fmt::format(
          "file {}: not a Shiny app directory (it has no readable app.R or server.R)",
          config_.file);
  } else if (stat(config_.file.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return fmt::format("file {}: no such {}", config_.file,
                       config_.shiny() ? "Shiny app directory or file" : "file");
  }
  if (access(config_.file.c_str(), R_OK) != 0)
    return fmt::format("file {}: not readable", config_.file);
  char resolved[PATH_MAX];
  if (!realpath(config_.file.c_str(), resolved))
    return fmt::format("file {}: cannot resolve", config_.file);
  api_file_ = resolved;
  api_dir_ = app_dir ? api_file_ : api_file_.substr(0, api_file_.rfind('/') + 1);
  return std::nullopt;
}

std::optional<std::string> Pool::load_worker_environment() {
  std::vector<std::string> from_file;
  if (!config_.env_file.empty()) {
    std::string error;
    auto entries = read_env_file(config_.env_file, &error);
    if (!entries) return error;
    from_file = std::move(*entries);
  }
  worker_env_ = valve::worker_environment(config_, identity_, from_file, current_environment());
  return std::nullopt;
}

void Pool::start() {
  maintenance_timer_.start(config_.check_unused, config_.check_unused);
  monitor_timer_.start(kMonitorSeconds, kMonitorSeconds);
  rebalance();
}

bool Pool::is_current(const Worker &w) const {
  return w.generation() == generation_ && !w.retiring() && !w.unhealthy();
}

bool Pool::on_reaped(int pid, int wait_status) {
  if (Worker *w = find_pid(pid)) {
    w->on_exit(wait_status);
    return true;
  }
  return preloader_ && preloader_->on_reaped(pid, wait_status);
}

void Pool::on_template_exit() {
  if (terminating_ && all_exited()) observer_.on_pool_terminated(*this);
}

Json Pool::preload_json() const { return preloader_ ? preloader_->json() : Json(); }

void Pool::remove_runtime_files() {
  if (preloader_) preloader_->remove_files();
  // Each generation's spec, and a worker's half-written one.
  std::string prefix = fmt::format("openapi-{}-", serial_);
  const std::string &dir = ctx_.runtime_dir();
  if (DIR *d = opendir(dir.c_str())) {
    while (dirent *e = readdir(d)) {
      if (std::string_view(e->d_name).starts_with(prefix)) unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
  }
}

std::string Pool::openapi_path(uint64_t generation) const {
  if (!config_.cmd.empty() || config_.shiny() || !openapi_file_.empty()) return {};
  return fmt::format("{}/openapi-{}-{}.json", ctx_.runtime_dir(), serial_, generation);
}

bool Pool::load_spec(uint64_t generation) {
  std::string path = openapi_file_.empty() ? openapi_path(generation) : openapi_file_;
  if (path.empty()) return false;
  std::string text, why;
  if (!read_file(path, &text, &why)) {
    log().warn("openapi: generation {} gave no spec ({}): its requests are not checked{}",
               generation, why, spec_ ? " but against the last one" : "");
    return false;
  }
  auto spec = ApiSpec::parse(text, &why);
  if (!spec) {
    log().warn("openapi: {}: cannot parse it ({}); {}", path, why,
               spec_ ? "the last spec stays in force" : "requests are not checked");
    return false;
  }
  log().info("openapi: generation {}: {} operations, {} with checked parameters{}", generation,
             spec->operations().size(), spec->checked_operations(),
             openapi_file_.empty() ? "" : fmt::format(" (from {})", openapi_file_));
  previous_spec_ = std::move(spec_);
  previous_spec_generation_ = spec_generation_;
  spec_ = std::move(spec);
  spec_generation_ = generation;
  return true;
}

Worker *Pool::find_pid(int pid) {
  for (auto &w : workers_) {
    if (w->pid() == pid) return w.get();
  }
  return nullptr;
}

Worker *Pool::pick(const Request *req) {
  // A Shiny session lives in one worker's memory: its requests go there while that worker takes
  // requests, even past its concurrency, which only decides where new sessions go. A session
  // whose worker is gone starts over on another (and gets a new cookie).
  // A WebSocket goes to a worker that holds none only while fewer than --tunnel-workers-max do.
  bool tunnels_full = req && req->websocket() && tunnel_workers() >= config_.tunnel_workers();
  if (req && config_.shiny() && !req->affinity().empty()) {
    for (auto &w : workers_) {
      if (w->affinity() == req->affinity() && w->accepting() && req->excluded_worker() != w->id() &&
          !(tunnels_full && w->tunnel_holds() == 0))
        return w.get();
    }
  }
  // A retry avoids the worker that failed it, while another worker exists or can be launched; a
  // pool that can only ever have that one tries it again rather than wait for none.
  bool avoid_excluded = workers_.size() > 1 || workers_.size() < config_.n_max;
  Worker *best = nullptr;
  for (auto &w : workers_) {
    if (!w->accepting() || w->in_flight() >= config_.concurrency()) continue;
    if (req && req->excluded_worker() == w->id() && avoid_excluded) continue;
    if (tunnels_full && w->tunnel_holds() == 0) continue;
    // A worker being replaced serves only when no other can. Then the most recently used first:
    // spare workers fall idle and can be retired.
    if (!best || (best->retiring() && !w->retiring()) ||
        (best->retiring() == w->retiring() && w->last_used_ms() > best->last_used_ms()))
      best = w.get();
  }
  return best;
}

size_t Pool::tunnel_workers() const {
  size_t held = 0;
  for (const auto &w : workers_) held += w->accepting() && w->tunnel_holds() > 0;
  return held;
}

void Pool::assign(Worker &w, Request &req) { req.dispatch(w, w.lease()); }

void Pool::submit(Request &req, bool front) {
  if (terminating_) {
    req.reject(503, "the server is shutting down");
    return;
  }
  const std::string &key = req.client_key();
  // A client at its in-flight limit waits even when a worker is free.
  if (queue_.may_dispatch(key)) {
    if (Worker *w = pick(&req)) {
      queue_.start(req, key, req.priority());
      assign(*w, req);
      return;
    }
  }
  // A retry was taken in once: only a new request counts against its client's limit.
  if (!front && !queue_.may_queue(key)) {
    log().debug("client {} has {} requests waiting: refusing {} {} with 429", key,
                config_.client_max_queued, req.request().method, req.request().target);
    req.reject(429, fmt::format("too many requests from this client are waiting ({}, the limit "
                                "of client-max-queued)",
                                config_.client_max_queued));
    return;
  }
  // A WebSocket past the bound would wait for another to close, which may take hours: refused now.
  if (req.websocket() && tunnel_workers() >= config_.tunnel_workers()) {
    ++ctx_.stats().tunnels_refused;
    log().warn("WebSockets hold {} workers (tunnel-workers-max): refusing {} {}", tunnel_workers(),
               req.request().method, req.request().target);
    req.reject(503, fmt::format("WebSockets hold {} workers, the most they may "
                                "(tunnel-workers-max); try again when one closes",
                                tunnel_workers()));
    return;
  }
  if (queue_.size() >= config_.queue_max) {
    uint64_t suppressed = 0;
    if (full_queue_log_.allow(uv_now(ctx_.loop()), suppressed))
      log().warn("queue full ({} waiting): rejecting {} {}{}", queue_.size(), req.request().method,
                 req.request().target,
                 suppressed ? fmt::format(" ({} more refused since the last such line)", suppressed)
                            : std::string());
    req.reject(
        503, fmt::format("all workers are busy and the queue is full ({} waiting)", queue_.size()));
    return;
  }
  queue_.push(req, key, req.priority(), front);
  req.on_queued();
  rebalance();
}

void Pool::cancel(Request &req) { queue_.remove(req); }

void Pool::done(Request &req) {
  // The client's next request may now go to a worker that is already free.
  if (queue_.done(req) && !terminating_) drain_queue();
}

void Pool::drain_queue() {
  // In fair order (fair_queue.hpp): the first request a worker can take. A retry whose only free
  // worker is the one it avoids lets the others pass.
  while (queue_.takeable() > 0 && pick(nullptr)) {
    Worker *w = nullptr;
    FairQueue::Entry *e = queue_.find([&](FairQueue::Entry &entry) {
      w = pick(&static_cast<Request &>(entry));
      return w != nullptr;
    });
    if (!e) return;
    auto &req = static_cast<Request &>(*e);
    queue_.take(req);
    assign(*w, req);
  }
}

void Pool::on_worker_ready(Worker &w) {
  if (w.generation() == generation_ && w.generation() > spec_tried_) {
    spec_tried_ = w.generation();  // once a generation: its first ready worker wrote the spec
    load_spec(w.generation());
  }
  if (!ever_ready_) failures_ = 0;  // start-up succeeded; later crash loops count from here
  if (!ever_ready_) {
    ever_ready_ = true;
    observer_.on_pool_ready(*this);
  }
  rebalance();
}

void Pool::retire(Worker &w, std::string kind, std::string_view why) {
  if (w.state() != Worker::State::ready || w.retiring() || terminating_) return;
  log().info("{} retires: {}; its replacement starts first", w.label(), why);
  w.set_retiring(std::move(kind));
  ++owed_;
  rebalance();
}

void Pool::on_worker_health(Worker &w) {
  if (w.unhealthy() && !w.retiring()) ++owed_;
  rebalance();
}

void Pool::on_worker_free(Worker &w) {
  if (w.accepting()) drain_queue();
}

void Pool::on_worker_exit(Worker &w, int wait_status, bool never_ready) {
  bool expected = w.stop_requested();  // stopped, killed, or lost its port race
  Stats &stats = ctx_.stats();
  ++stats.exits;
  if (!expected && !terminating_) ++stats.crashes;
  bool failed_start = never_ready && !w.lost_race() && !w.stop_chosen() && !terminating_;
  if (failed_start && reload_.in_progress() && w.generation() == reload_generation_) {
    abort_reload(fmt::format("new {} {} before it was ready. Its last output:{}", w.label(),
                             describe_exit(wait_status), w.tail()));
  } else if (failed_start) {
    ++failures_;
    if (!ever_ready_ && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == kExitPlumberMissing) {
      observer_.on_pool_failed(*this, VALVE_ECONFIG,
                               fmt::format("rscript {}: the R package {} is not installed{}",
                                           config_.rscript, config_.type, w.tail()));
    } else if (!ever_ready_ && failures_ >= kStartupAttempts) {
      observer_.on_pool_failed(
          *this, VALVE_ESTARTUP,
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
    // A worker that answered requests works: its death (the OOM killer, an operator's kill, a
    // crash on some input) is replaced at once. One that died young without answering is not.
    bool unstable = monotonic_ms() - w.ready_ms() < kStableMs && w.answered() == 0;
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
  ctx_.defer_erase(workers_, &w);  // forget the worker once this callback is over
  if (terminating_) {
    if (all_exited()) observer_.on_pool_terminated(*this);
    return;
  }
  rebalance();
}

void Pool::rebalance() {
  if (terminating_) return;
  launch_needed();
  size_t starting = 0, ready = 0, replaced = 0;
  for (auto &w : workers_) {
    if (is_current(*w)) {
      starting += w->state() == Worker::State::starting;
      ready += w->state() == Worker::State::ready;
    }
    replaced += w->awaiting_replacement();
  }
  // Replacements are all up (or none was needed): those they replace drain and exit.
  if (starting == 0 && (ready > 0 || replaced == 0)) {
    std::vector<Worker *> going;
    for (auto &w : workers_) {
      if (w->awaiting_replacement()) going.push_back(w.get());
    }
    for (Worker *w : going) {
      std::string kind = w->unhealthy() ? "unhealthy" : w->retire_reason();
      ctx_.stats().recycles[kind]++;
      w->drain(fmt::format("replaced ({})", kind));
    }
    if (reload_.in_progress()) finish_reload(true, {});
  }
  drain_queue();
}

void Pool::reload(ReloadDone done) {
  if (terminating_) {
    if (done) done(ReloadResult{false, generation_, 0, 0, "the server is shutting down"});
    return;
  }
  if (reload_.ask(std::move(done))) return begin_reload();
  log().info("a reload to generation {} is in progress: the new one runs after it",
             reload_generation_);
}

void Pool::begin_reload() {
  reload_.begin();
  previous_generation_ = generation_;
  // A failed reload's number is not used again: each generation has one set of workers.
  reload_generation_ = std::max(generation_, reload_generation_) + 1;
  generation_ = reload_generation_;
  // The env-file is read again: a reload is how workers get new settings or secrets.
  previous_env_ = worker_env_;
  if (auto err = load_worker_environment()) {
    abort_reload(std::move(*err));
    return;
  }
  // The new code gets a fresh start: no crash-loop delay carried over.
  failures_ = 0;
  next_launch_ms_ = 0;
  launch_timer_.stop();
  log().info("reload: starting generation {}", generation_);
  observer_.on_reload_started();
  std::vector<Worker *> old;
  for (auto &w : workers_) {
    if (w->generation() < generation_) old.push_back(w.get());
  }
  for (Worker *w : old) {
    if (w->state() == Worker::State::starting) {
      w->stop("a reload replaces it");
    } else if (w->state() == Worker::State::ready && !w->retiring()) {
      w->set_retiring("reload");
      if (!w->unhealthy()) ++owed_;
    }
  }
  rebalance();
}

void Pool::abort_reload(std::string why) {
  uint64_t failed = reload_generation_;
  generation_ = previous_generation_;
  std::vector<Worker *> fresh;
  for (auto &w : workers_) {
    if (w->generation() == failed) {
      fresh.push_back(w.get());
    } else if (w->retire_reason() == "reload" && w->state() == Worker::State::ready) {
      w->clear_retiring();
    }
  }
  for (Worker *w : fresh) w->stop("its reload failed");
  worker_env_ = std::move(previous_env_);
  if (spec_generation_ == failed) {
    spec_ = std::move(previous_spec_);
    spec_generation_ = previous_spec_generation_;
  }
  failures_ = 0;
  next_launch_ms_ = 0;
  finish_reload(
      false, fmt::format("reload to generation {} failed; generation {} keeps serving: {}", failed,
                         generation_, why));
}

void Pool::finish_reload(bool ok, std::string error) {
  ReloadResult result;
  result.ok = ok;
  result.generation = generation_;
  result.duration_ms = reload_.elapsed_ms();
  result.error = std::move(error);
  for (auto &w : workers_) result.workers += is_current(*w) && w->accepting();
  // With a config file the server counts each reload once, whatever its apps did.
  if (!ctx_.names_apps()) ctx_.stats().reloads[ok ? "ok" : "failed"]++;
  if (ok) {
    log().info("reload: generation {} serves with {} workers, {} ms after the reload began",
               generation_, result.workers, result.duration_ms);
  } else {
    log().error("{}", result.error);
  }
  if (ctx_.wants_events())
    ctx_.emit(json_text(
        {{"event", "reload"}, {"ok", ok}, {"generation", generation_}, {"error", result.error}}));
  // Only the serving generation's template stays (a failed reload's ends too).
  if (preloader_) preloader_->keep_only(generation_);
  observer_.on_reload_finished(ok);
  if (reload_.finish(result) && !terminating_) begin_reload();
}

Json Pool::reload_json() const {
  Json doc = Json::object();
  doc["state"] = reload_.phase_name();
  doc["generation"] = reload_generation_;
  doc["error"] = reload_.error();
  return doc;
}

void Pool::on_scaled() {
  if (terminating_) return;
  // Above n-max: starting workers go first, then idle ones (least recently used), then busy ones
  // drain.
  std::vector<Worker *> current;
  for (auto &w : workers_) {
    auto st = w->state();
    if (is_current(*w) && (st == Worker::State::starting || st == Worker::State::ready))
      current.push_back(w.get());
  }
  auto rank = [](const Worker *w) {
    if (w->state() == Worker::State::starting) return 0;
    return w->in_flight() == 0 ? 1 : 2;
  };
  std::sort(current.begin(), current.end(), [&](Worker *a, Worker *b) {
    if (rank(a) != rank(b)) return rank(a) < rank(b);
    return a->last_used_ms() < b->last_used_ms();
  });
  size_t excess = current.size() > config_.n_max ? current.size() - config_.n_max : 0;
  for (size_t i = 0; i < excess; ++i) {
    Worker *w = current[i];
    std::string why = fmt::format("scaled down to n-max {}", config_.n_max);
    if (w->state() == Worker::State::starting) {
      w->stop(why);
    } else {
      w->drain(why);
    }
  }
  rebalance();
}

void Pool::monitor() {
  uint64_t limit = config_.max_rss * 1024 * 1024;
  std::vector<Worker *> over;
  for (auto &w : workers_) {
    if (w->state() == Worker::State::exited || w->state() == Worker::State::starting) continue;
    uint64_t rss = w->sample_rss();
    if (limit > 0 && rss > limit && w->state() == Worker::State::ready && !w->retiring())
      over.push_back(w.get());
  }
  for (Worker *w : over) {
    retire(*w, "max-rss",
           w->forked() ? fmt::format("its proportional memory (PSS) {} MB passed max-rss {} MB",
                                     w->pss_bytes() >> 20, config_.max_rss)
                       : fmt::format("resident memory {} MB passed max-rss {} MB",
                                     w->rss_bytes() >> 20, config_.max_rss));
  }
}

std::vector<std::pair<std::string, size_t>> Pool::count_states() const {
  std::vector<std::pair<std::string, size_t>> out;
  for (const char *name : {"starting", "ready", "retiring", "unhealthy", "draining", "stopping"})
    out.emplace_back(name, 0);
  for (const auto &w : workers_) {
    for (auto &[name, n] : out) {
      if (name == w->state_name()) ++n;
    }
  }
  return out;
}

void Pool::launch_needed() {
  if (terminating_) return;
  update_spares();
  PoolCounts c;
  c.n_max = config_.n_max;
  c.concurrency = config_.concurrency();
  // Requests of a client at its in-flight limit wait for its own, not for a new worker.
  c.waiting = queue_.takeable();
  // A retry that avoids the only free worker waits for another, which may have to be launched.
  // With every worker busy (a full queue under overload), nothing is stranded: skip the walk.
  if (queue_.takeable() > 0 && pick(nullptr)) {
    for (FairQueue::Entry *e : queue_.entries(true)) {
      auto *req = static_cast<Request *>(e);
      c.stranded += req->excluded_worker() != 0 && !pick(req);
    }
  }
  size_t replaced = 0;
  for (auto &w : workers_) {
    replaced += w->awaiting_replacement();
    if (!is_current(*w)) continue;
    if (w->state() == Worker::State::starting) {
      ++c.starting;
      ++c.alive;
    } else if (w->state() == Worker::State::ready) {
      ++c.alive;
      c.free_slots += config_.concurrency() - std::min(w->in_flight(), config_.concurrency());
    }
  }
  // Each worker to be replaced (a reload, recycling, ill health) is owed one new worker, up to
  // n-max, even when demand alone would not launch it.
  owed_ = std::min(owed_, replaced);
  c.n_min = std::max<size_t>(config_.n_min, std::min<size_t>(config_.n_max, c.alive + owed_));
  size_t n = workers_to_launch(c);
  if (n == 0) return;
  uint64_t now = monotonic_ms();
  if (failures_ > 0 && ever_ready_) {
    for (auto &w : workers_) {
      if (w->accepting() && (now - w->ready_ms() >= kStableMs || w->answered() > 0)) failures_ = 0;
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
  owed_ -= std::min(owed_, n);
  for (size_t i = 0; i < n; ++i) launch_one();
}

double Pool::back_off() {
  double delay = crash_backoff_seconds(failures_);
  next_launch_ms_ = monotonic_ms() + static_cast<uint64_t>(delay * 1000);
  return delay;
}

void Pool::launch_one() {
  auto w = std::make_unique<Worker>(*this, ctx_.next_worker_id(), generation_);
  int rc = w->launch();
  if (rc != 0) {
    log().error("cannot launch a worker: {}", uv_message(rc));
    if (reload_.in_progress()) {
      abort_reload(fmt::format("cannot launch a worker: {}", uv_message(rc)));
      return;
    }
    ++failures_;
    launch_timer_.start(back_off());
    return;
  }
  ++ctx_.stats().launches;
  workers_.push_back(std::move(w));
}

void Pool::update_spares() {
  if (!preloader_ || terminating_) return;
  size_t alive = 0, demand = queue_.size();
  for (auto &w : workers_) {
    demand += w->in_flight();
    alive += is_current(*w) && (w->state() == Worker::State::starting ||
                                w->state() == Worker::State::ready);
  }
  uint64_t now = monotonic_ms();
  demand_.observe(now, demand);
  if (auto fixed = config_.fixed_preload_spares()) return preloader_->set_spares(*fixed);
  if (affordable_at_ms_ == 0 || now - affordable_at_ms_ >= DemandWindow::kBucketMs) {
    affordable_at_ms_ = now;
    affordable_spares_ = kMaxPreloadSpares;
    if (auto bytes = available_memory_bytes())
      affordable_spares_ = std::min<size_t>(affordable_spares_, *bytes / 8 / kSpareBytes);
  }
  preloader_->set_spares(
      spare_target(config_.n_max, alive, demand_.peak(now), affordable_spares_));
}

void Pool::retire_idle() {
  if (terminating_) return;
  uint64_t now = monotonic_ms();
  auto max_idle_ms = static_cast<uint64_t>(config_.max_age * 1000);
  size_t alive = 0;
  std::vector<Worker *> idle;
  for (auto &w : workers_) {
    if (!is_current(*w)) continue;
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
  update_spares();  // demand seen long enough ago no longer counts
}

void Pool::terminate() {
  if (terminating_) return;
  terminating_ = true;
  launch_timer_.stop();
  maintenance_timer_.stop();
  monitor_timer_.stop();
  reload_.drop_next(ReloadResult{false, generation_, 0, 0, "the server is shutting down"});
  if (reload_.in_progress()) finish_reload(false, "the server is shutting down");
  std::vector<FairQueue::Entry *> waiting = queue_.entries(false);
  for (FairQueue::Entry *e : waiting) queue_.remove(*e);
  for (FairQueue::Entry *e : waiting)
    static_cast<Request *>(e)->reject(503, "the server is shutting down");
  std::vector<Worker *> all;
  for (auto &w : workers_) all.push_back(w.get());
  for (Worker *w : all) w->stop("shutting down");
  if (preloader_) preloader_->terminate();
  if (all_exited()) calls_.post([this] { observer_.on_pool_terminated(*this); });
}

bool Pool::all_exited() const {
  return std::all_of(workers_.begin(), workers_.end(),
                     [](const auto &w) { return w->state() == Worker::State::exited; }) &&
         (!preloader_ || preloader_->all_exited());
}

Json Pool::workers_json() const {
  Json out = Json::array();
  uint64_t now = monotonic_ms();
  for (const auto &w : workers_) {
    int64_t used = w->last_used_unix_ms();
    Json &entry = out.emplace_back(Json::object());
    entry["id"] = w->id();
    entry["app"] = name_;
    entry["pid"] = w->pid();
    entry["generation"] = w->generation();
    entry["state"] = w->state_name();
    entry["address"] = w->address();
    entry["requests"] = w->served();
    entry["in_flight"] = w->in_flight();
    entry["websockets"] = w->tunnels();
    entry["rss_bytes"] = w->rss_bytes();
    entry["forked"] = w->forked();
    entry["pss_bytes"] = w->pss_bytes();
    entry["age_s"] = json_rounded((now - w->started_ms()) / 1000.0, 3);
    entry["idle_s"] = json_rounded(
        w->in_flight() || !w->was_ready() ? 0.0 : (now - w->last_used_ms()) / 1000.0, 3);
    entry["last_used"] = used ? Json(format_utc(used)) : Json();
  }
  return out;
}

uint64_t Pool::resident_bytes() const {
  uint64_t total = 0;
  for (const auto &w : workers_) total += w->rss_bytes();
  return total;
}

bool Pool::ready(std::string *why) const {
  if (terminating_) {
    *why = "the server is shutting down";
    return false;
  }
  for (const auto &w : workers_) {
    if (w->accepting()) return true;
  }
  // Scaled to zero: a request launches a worker, unless launches keep failing.
  if (config_.n_min == 0 && failures_ == 0) return true;
  *why = failures_ > 0 ? fmt::format("no worker is ready: {} launches in a row failed", failures_)
                       : std::string("no worker is ready yet");
  return false;
}

}  // namespace valve
