#include "server.hpp"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>

#include "admin_auth.hpp"
#include "error_reports.hpp"
#include "json.hpp"
#include "launch.hpp"
#include "metrics.hpp"
#include "process.hpp"
#include "status.hpp"
#include "tempdir.hpp"
#include "valve/valve.h"

namespace valve {

namespace {

std::pair<int, struct sigaction> save_signal(int signum) {
  struct sigaction action {};
  sigaction(signum, nullptr, &action);
  return {signum, action};
}

// libuv installs its handlers without SA_ONSTACK, which Go (a host through cgo) requires of every
// handler that may run on one of its threads.
void add_onstack(int signum) {
  struct sigaction action {};
  if (sigaction(signum, nullptr, &action) == 0 && !(action.sa_flags & SA_ONSTACK)) {
    action.sa_flags |= SA_ONSTACK;
    sigaction(signum, &action, nullptr);
  }
}

}  // namespace

Server::Server(Config config, Hooks hooks)
    : options_(config), config_(std::move(config)), hooks_(hooks) {
  std::vector<Mistake> mistakes;
  if (auto layout = load_layout(options_, &mistakes)) {
    layout_ = std::move(*layout);
    config_ = layout_.server;
  } else {
    layout_error_ = format_mistakes(options_.config, mistakes);
  }
  Logger log(config_.log_level, hooks.log, hooks.log_data);
  log.set_json(config_.log_format == "json");
  uv_loop_init(&loop_);
  ctx_ = std::make_unique<Context>(&loop_, config_, log, hooks.event, hooks.event_data);
  ctx_->set_names_apps(layout_.from_file);
  inbox_ = std::make_unique<Inbox>(&loop_);
  for (const AppSpec &spec : layout_.apps) add_app(spec);
  listener_ = std::make_unique<Listener>(*ctx_, *this);
  jobs_ = std::make_unique<JobService>(*ctx_, *this);
  admin_ = std::make_unique<AdminServer>(*ctx_, *this);
  error_hooks_ = std::make_unique<ErrorHooks>(*ctx_);
  if (error_hooks_->enabled()) ctx_->errors().set_hooks(error_hooks_.get());
}

App &Server::add_app(const AppSpec &spec) {
  auto app = std::make_unique<App>(spec.name, spec.config);
  app->pool = std::make_unique<Pool>(*ctx_, *this, app->config, spec.name, next_pool_serial_++);
  if (app->config.cache_size > 0)
    app->cache = std::make_unique<Cache>(app->config.cache_size, app->config.cache_entry_max,
                                         &ctx_->stats().cache);
  apps_.push_back(std::move(app));
  return *apps_.back();
}

App *Server::app_for(Pool &pool) {
  for (auto &a : apps_) {
    if (a->pool.get() == &pool) return a.get();
  }
  return nullptr;
}

App &Server::main_app() {
  for (auto &a : apps_) {
    if (!a->pending && !a->retiring) return *a;
  }
  return *apps_.front();
}

std::string Server::app_message(const App &app, std::string_view message) const {
  if (!layout_.from_file) return std::string(message);
  return fmt::format("app {}: {}", app.name, message);
}

Server::~Server() {
  if (thread_.joinable()) {
    stop(0);
    thread_.join();
  }
  admin_.reset();
  listener_.reset();
  apps_.clear();
  jobs_.reset();  // its timer, and any job's proxy still there, before the loop closes
  ctx_->errors().set_hooks(nullptr);
  error_hooks_.reset();  // ends its deliveries: its handles close in the loop run below
  inbox_.reset();
  ctx_->deferred().run();
  ctx_->deferred().close();
  uv_run(&loop_, UV_RUN_DEFAULT);
  ctx_.reset();
  uv_loop_close(&loop_);
}

std::optional<std::string> Server::check() {
  if (!layout_error_.empty()) return layout_error_;
  if (auto err = load_admin_token()) return err;
  std::string errors;
  for (auto &app : apps_) {
    if (auto err = app->pool->check_environment())
      errors += (errors.empty() ? "" : "\n") + app_message(*app, *err);
  }
  if (!errors.empty()) return errors;
  return std::nullopt;
}

std::optional<std::string> Server::load_admin_token() {
  if (config_.admin.empty()) return std::nullopt;
  const std::string &file = config_.admin_token_file;
  if (file.empty()) {
    // The token itself from the environment, as valvectl status/reload/scale take it (a
    // Kubernetes Secret as a variable); never passed on to workers, which get an explicit
    // environment.
    if (const char *value = std::getenv(kAdminTokenVariable); value && *value) {
      if (std::string problem = admin_token_problem(value); !problem.empty())
        return fmt::format("{}: {}", kAdminTokenVariable, problem);
      admin_->set_token(value);
      admin_token_loaded_ = true;
      return std::nullopt;
    }
    auto address = parse_listen_address(config_.admin);
    if (address && !address->is_unix() && !is_loopback(*address))
      return fmt::format(
          "admin {}: beyond loopback the admin interface needs a bearer token: set "
          "admin-token-file to a file holding one, or {} to the token",
          config_.admin, kAdminTokenVariable);
    return std::nullopt;
  }
  std::string why;
  auto token = read_admin_token(file, &why);
  if (!token) return fmt::format("admin-token-file {}: {}", file, why);
  if (!token->warning.empty()) ctx_->log().warn("admin-token-file {}: {}", file, token->warning);
  admin_->set_token(std::move(token->token));
  admin_token_loaded_ = true;
  return std::nullopt;
}

void Server::reload_admin_token() {
  const std::string &file = config_.admin_token_file;
  if (config_.admin.empty() || file.empty()) return;
  std::string why;
  auto token = read_admin_token(file, &why);
  if (!token) {
    ctx_->log().warn("reload: admin-token-file {}: {}; the admin token stays as it was", file, why);
    return;
  }
  if (!token->warning.empty()) ctx_->log().warn("admin-token-file {}: {}", file, token->warning);
  admin_->set_token(std::move(token->token));
}

void Server::set_result(int code, std::string message) {
  std::lock_guard lock(mutex_);
  if (result_ == 0) {
    result_ = code;
    last_error_ = std::move(message);
  }
}

int Server::run() {
  {
    std::lock_guard lock(mutex_);
    if (running_ || done_) return VALVE_ESTATE;
    running_ = true;
    loop_thread_ = std::this_thread::get_id();
  }
  // A write to a closed socket raises SIGPIPE in the writing thread. Whatever the host does with
  // SIGPIPE (R installs a handler that raises an R error), it must not run on valve's loop: block
  // it here, and drop any left pending before the host's mask comes back.
  sigset_t pipe_only, host_mask;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_only, &host_mask);
  int rc = serve();
  timespec no_wait{};
  while (sigtimedwait(&pipe_only, nullptr, &no_wait) == SIGPIPE) {
  }
  pthread_sigmask(SIG_SETMASK, &host_mask, nullptr);
  return rc;
}

int Server::serve() {
  int rc = prepare();
  if (rc == 0) {
    for (auto &app : apps_) {
      app->pool->start();
      if (app->config.n_min == 0) app->ready = true;
    }
    if (all_apps_ready()) on_first_ready();
    uv_run(&loop_, UV_RUN_DEFAULT);
  } else {
    finish();
  }
  while (!ctx_->deferred().empty()) ctx_->deferred().run();
  uv_run(&loop_, UV_RUN_NOWAIT);
  for (const auto &[signum, action] : saved_signals_) sigaction(signum, &action, nullptr);
  remove_runtime_dir();
  std::lock_guard lock(mutex_);
  done_ = true;
  running_ = false;
  cv_.notify_all();
  return result_;
}

int Server::start_background() {
  std::unique_lock lock(mutex_);
  if (running_ || done_ || thread_.joinable()) return VALVE_ESTATE;
  thread_ = std::thread([this] { run(); });
  cv_.wait(lock, [this] { return started_ || done_; });
  if (!done_) return 0;
  if (result_ == 0) last_error_ = "the server was stopped before a worker became ready";
  return result_ != 0 ? result_ : VALVE_ESTATE;
}

int Server::wait() {
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  std::unique_lock lock(mutex_);
  // Serving through run() on another thread: wait for that to end (not from the loop thread).
  if (std::this_thread::get_id() != loop_thread_) cv_.wait(lock, [this] { return !running_; });
  return result_;
}

void Server::stop(double deadline_seconds) {
  {
    // Never started: it is over now, and a later start is refused rather than stopping at once.
    std::lock_guard lock(mutex_);
    if (!running_ && !done_ && !thread_.joinable()) {
      done_ = true;
      cv_.notify_all();
      return;
    }
  }
  inbox_->post([this, deadline_seconds] { begin_stop(deadline_seconds); });
}

std::string Server::address() {
  std::lock_guard lock(mutex_);
  return address_;
}

std::string Server::last_error() {
  std::lock_guard lock(mutex_);
  return last_error_;
}

template <typename T, typename F>
std::optional<T> Server::wait_on_loop(F start) {
  auto promise = std::make_shared<std::promise<T>>();
  auto future = promise->get_future();
  if (!inbox_->post([start, promise] { start(promise); })) return std::nullopt;
  try {
    return future.get();
  } catch (const std::future_error &) {
    return std::nullopt;  // the loop ended before it got to it
  }
}

std::string Server::status_json() {
  std::string not_running;
  if (on_running_loop(&not_running)) return status_json_now();
  if (not_running.empty()) {
    auto json =
        wait_on_loop<std::string>([this](auto done) { done->set_value(status_json_now()); });
    if (json) return *json;
  }
  return idle_status_json();
}

std::string Server::idle_status_json() {
  bool done;
  {
    std::lock_guard lock(mutex_);
    done = done_;
  }
  Json doc = Json::object();
  doc["version"] = VALVE_VERSION_STRING;
  doc["state"] = done ? "stopped" : "created";
  doc["workers"] = Json::array();
  doc["queue"] = 0;
  doc["config"] = config_.to_json_value();
  return json_text(doc);
}

std::string Server::status_json_now() {
  const char *state = finished_          ? "stopped"
                      : ctx_->stopping() ? "stopping"
                      : started_         ? "running"
                                         : "starting";
  return valve::status_json(StatusView{state, address_, admin_->address(), ctx_->stats(), apps_,
                                       layout_.routes, main_app(), reload_json(),
                                       listener_->requests_in_progress(), listener_->connections(),
                                       config_, jobs_->json()});
}

std::string Server::errors_json() { return json_text(ctx_->errors().json()) + "\n"; }

std::string Server::metrics_text() {
  return valve::metrics_text(ctx_->stats(), apps_, listener_->requests_in_progress(),
                             listener_->connections());
}

Json Server::reload_json() const {
  if (!layout_.from_file) return apps_.front()->pool->reload_json();
  Json doc = Json::object();
  doc["state"] = layout_reload_.phase_name();
  doc["error"] = layout_reload_.error();
  return doc;
}

bool Server::ready(std::string *why) {
  if (ctx_->stopping()) {
    *why = "the server is shutting down";
    return false;
  }
  for (auto &app : apps_) {
    if (app->pending || app->retiring) continue;
    std::string not_ready;
    if (!app->pool->ready(&not_ready)) {
      *why = app_message(*app, not_ready);
      return false;
    }
  }
  return true;
}

bool Server::all_apps_ready() const {
  return std::all_of(apps_.begin(), apps_.end(),
                     [](const auto &a) { return a->ready || a->pending || a->retiring; });
}

App *Server::find_app(std::string_view name, std::string *why) {
  App *found = nullptr;
  size_t serving = 0;
  for (auto &a : apps_) {
    if (a->pending || a->retiring) continue;
    ++serving;
    if (name.empty() || a->name == name) found = a.get();
  }
  if (name.empty() && serving > 1) {
    *why = "there are several apps: name one (app=NAME)";
    return nullptr;
  }
  if (!found) *why = fmt::format("app {}: no such app", name);
  return found;
}

std::optional<std::string> Server::purge_cache(const std::string &app_name,
                                               const std::string &prefix, size_t *purged) {
  *purged = 0;
  bool any = false;
  // Every App of that name (a reload's old and new), or of every name.
  for (auto &a : apps_) {
    if (!app_name.empty() && a->name != app_name) continue;
    if (!a->cache) continue;
    any = true;
    *purged += a->cache->purge(prefix);
  }
  if (any) return std::nullopt;
  if (!app_name.empty() &&
      std::none_of(apps_.begin(), apps_.end(), [&](const auto &a) { return a->name == app_name; }))
    return fmt::format("app {}: no such app", app_name);
  return app_name.empty() ? std::string("no app has a cache (cache-size is 0)")
                          : fmt::format("app {}: it has no cache (cache-size is 0)", app_name);
}

std::optional<std::string> Server::scale(const std::optional<std::string> &n_min,
                                         const std::optional<std::string> &n_max,
                                         const std::string &app_name) {
  std::string why;
  App *app = find_app(app_name, &why);
  if (!app) return why;
  Config &config = app->config;
  Config trial = config;
  if (n_min) {
    if (auto err = trial.set("n-min", *n_min)) return err;
  }
  if (n_max) {
    if (auto err = trial.set("n-max", *n_max)) return err;
  }
  if (trial.n_min > trial.n_max) {
    return n_min ? fmt::format("n-min {}: must be at most n-max ({})", trial.n_min, trial.n_max)
                 : fmt::format("n-max {}: must be at least n-min ({})", trial.n_max, trial.n_min);
  }
  if (ctx_->stopping()) return std::string("the server is shutting down");
  config.n_min = trial.n_min;
  config.n_max = trial.n_max;
  if (!layout_.from_file) config_.n_min = trial.n_min, config_.n_max = trial.n_max;
  ctx_->log().info("{}", app_message(*app, fmt::format("scaled: n-min {}, n-max {}", config.n_min,
                                                       config.n_max)));
  app->pool->on_scaled();
  return std::nullopt;
}

int Server::scale(std::optional<uint64_t> n_min, std::optional<uint64_t> n_max, std::string *error,
                  const std::string &app) {
  auto text = [](std::optional<uint64_t> v) {
    return v ? std::optional<std::string>(std::to_string(*v)) : std::nullopt;
  };
  auto work = [this, a = text(n_min), b = text(n_max), app] { return scale(a, b, app); };
  std::optional<std::optional<std::string>> err;  // absent: the loop did not run it
  if (on_running_loop(error)) {
    err = work();
  } else if (error->empty()) {
    err = wait_on_loop<std::optional<std::string>>([work](auto done) { done->set_value(work()); });
  }
  if (!err) return not_running(error);
  if (!*err) return 0;
  *error = **err;
  return VALVE_EINVALID;
}

int Server::not_running(std::string *error) {
  *error = "the server is not running";
  return VALVE_ESTATE;
}

bool Server::on_running_loop(std::string *error) {
  std::lock_guard lock(mutex_);
  error->clear();
  if (!running_ || done_) *error = "the server is not running";
  return running_ && std::this_thread::get_id() == loop_thread_;
}

int Server::reload(std::string *error) {
  if (on_running_loop(error)) {
    start_reload("asked by the host");
    return 0;
  }
  std::optional<ReloadResult> r;
  if (error->empty()) {
    r = wait_on_loop<ReloadResult>([this](auto done) {
      reload_all([done](const ReloadResult &result) { done->set_value(result); });
    });
  }
  if (!r) return not_running(error);
  if (r->ok) return 0;
  *error = r->error;
  return VALVE_ESTARTUP;
}

void Server::start_reload(std::string_view why) {
  ctx_->log().info("reload ({})", why);
  reload_all(nullptr);
}

int Server::prepare() {
  ctx_->deferred().start();
  std::string runtime_dir;
  if (config_.runtime_dir.empty()) {
    const char *tmp = getenv("TMPDIR");
    std::string templ = fmt::format("{}/valve-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(templ.data())) {
      int e = errno;
      set_result(-e, fmt::format("runtime-dir {}: cannot create: {}", templ, strerror(e)));
      return -e;
    }
    runtime_dir = templ;
    own_runtime_dir_ = true;
  } else {
    runtime_dir = config_.runtime_dir;
    if (mkdir(runtime_dir.c_str(), 0700) != 0 && errno != EEXIST) {
      int e = errno;
      set_result(VALVE_EINVALID,
                 fmt::format("runtime-dir {}: cannot create: {}", runtime_dir, strerror(e)));
      return VALVE_EINVALID;
    }
    chmod(runtime_dir.c_str(), 0700);
  }
  ctx_->set_runtime_dir(runtime_dir);
  // Any app may run R: a config file may add one on reload.
  if (!write_worker_script(runtime_dir)) {
    set_result(VALVE_EINVALID, fmt::format("runtime-dir {}: cannot write there", runtime_dir));
    return VALVE_EINVALID;
  }
  if (const auto &as = main_app().pool->identity().credentials) {
    // Workers of another user make their sockets here: the directory becomes theirs, still 0700,
    // and valve, as root, keeps its way in.
    if (chown(ctx_->runtime_dir().c_str(), as->uid, as->gid) != 0) {
      int e = errno;
      set_result(VALVE_EINVALID, fmt::format("runtime-dir {}: cannot give it to user {}: {}",
                                             ctx_->runtime_dir(), config_.user, strerror(e)));
      return VALVE_EINVALID;
    }
  }

  if (config_.handle_signals) {
    // libuv resets a signal to SIG_DFL when its last watcher closes: keep the host's to restore.
    saved_signals_.push_back(save_signal(SIGINT));
    saved_signals_.push_back(save_signal(SIGTERM));
    auto on_signal = [](uv_signal_t *h, int signum) {
      auto *self = static_cast<Server *>(h->data);
      if (!self) return;
      if (self->ctx_->stopping()) {
        self->ctx_->log().warn("{} again: stopping now", signum == SIGINT ? "SIGINT" : "SIGTERM");
        self->begin_stop(0);
      } else {
        self->ctx_->log().info("{}: shutting down gracefully",
                               signum == SIGINT ? "SIGINT" : "SIGTERM");
        self->begin_stop(-1);
      }
    };
    sigint_ = new_handle<uv_signal_t>(this);
    sigterm_ = new_handle<uv_signal_t>(this);
    uv_signal_init(&loop_, sigint_);
    uv_signal_init(&loop_, sigterm_);
    uv_signal_start(sigint_, on_signal, SIGINT);
    uv_signal_start(sigterm_, on_signal, SIGTERM);
    add_onstack(SIGINT);
    add_onstack(SIGTERM);
  }
  if (config_.handle_signals) {
    saved_signals_.push_back(save_signal(SIGHUP));
    saved_signals_.push_back(save_signal(SIGUSR1));
    sighup_ = new_handle<uv_signal_t>(this);
    sigusr1_ = new_handle<uv_signal_t>(this);
    uv_signal_init(&loop_, sighup_);
    uv_signal_init(&loop_, sigusr1_);
    uv_signal_start(
        sighup_,
        [](uv_signal_t *h, int) {
          if (auto *self = static_cast<Server *>(h->data)) self->start_reload("SIGHUP");
        },
        SIGHUP);
    uv_signal_start(
        sigusr1_,
        [](uv_signal_t *h, int) {
          auto *self = static_cast<Server *>(h->data);
          if (!self) return;
          if (auto err = self->ctx_->access_log().reopen()) {
            self->ctx_->log().error("SIGUSR1: {}", *err);
          } else {
            self->ctx_->log().info("SIGUSR1: log files reopened");
          }
        },
        SIGUSR1);
    add_onstack(SIGHUP);
    add_onstack(SIGUSR1);
  }
  if (auto err = ctx_->access_log().open(config_.access_log, config_.access_log_format == "json")) {
    set_result(VALVE_EINVALID, *err);
    return VALVE_EINVALID;
  }
  if (config_.reap_orphans) {
    saved_signals_.push_back(save_signal(SIGCHLD));
    become_subreaper();
    sigchld_ = new_handle<uv_signal_t>(this);
    uv_signal_init(&loop_, sigchld_);
    uv_signal_start(
        sigchld_,
        [](uv_signal_t *h, int) {
          auto *self = static_cast<Server *>(h->data);
          int status = 0;
          pid_t pid;
          while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            if (!self) continue;
            bool ours = self->error_hooks_->on_reaped(pid, status);
            for (auto &app : self->apps_) ours = ours || app->pool->on_reaped(pid, status);
            if (!ours) {
              self->ctx_->log().debug("reaped orphan process {} ({})", pid, describe_exit(status));
            }
          }
        },
        SIGCHLD);
    add_onstack(SIGCHLD);
  }
  if (config_.notify) {
    if (auto why = notifier_.open_from_environment())
      ctx_->log().warn("{}: not telling it anything", *why);
  }
  if (int rc = listen(); rc != 0) return rc;
  if (!config_.admin.empty()) {
    // check() read it, unless a host skipped check(): never listen without the token.
    if (auto err = admin_token_loaded_ ? std::nullopt : load_admin_token()) {
      set_result(VALVE_EINVALID, *err);
      return VALVE_EINVALID;
    }
    std::string why;
    if (int rc = admin_->listen(config_.admin, &why); rc != 0) {
      set_result(rc, fmt::format("admin {}: {}", config_.admin, why));
      return rc;
    }
    ctx_->log().info("admin interface on {}{}",
                     admin_->address().starts_with("unix:") ? "" : "http://", admin_->address());
  }
  return 0;
}

int Server::listen() {
  std::string address, why;
  if (int rc = listener_->listen(&address, &why); rc != 0) {
    set_result(rc, why);
    return rc;
  }
  {
    std::lock_guard lock(mutex_);
    address_ = address;
  }
  ctx_->log().info("listening on http://{}", address);
  return 0;
}

void Server::on_first_ready() {
  {
    std::lock_guard lock(mutex_);
    if (started_) return;
    started_ = true;
    cv_.notify_all();
  }
  if (notifier_.active() && !ctx_->stopping()) {
    notifier_.send("READY=1");
    notifier_.status(service_status());
    notify_timer_ = std::make_unique<Timer>(&loop_, [this] { notifier_.status(service_status()); });
    notify_timer_->start(1, 1);
  }
}

void Server::on_reload_started() {
  if (reloads_active_++ > 0) return;   // several apps reload together: one RELOADING=1
  uint64_t usec = uv_hrtime() / 1000;  // CLOCK_MONOTONIC, as systemd wants it
  notifier_.send(
      fmt::format("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading: starting "
                  "generation {}",
                  usec, main_app().pool->generation()));
}

void Server::on_reload_finished(bool ok) {
  if (reloads_active_ > 0) --reloads_active_;
  if (ctx_->stopping() || reloads_active_ > 0) return;
  notifier_.send("READY=1");
  notifier_.status(ok ? service_status() : "the last reload failed; " + service_status());
}

std::string Server::service_status() {
  size_t ready = 0, starting = 0;
  size_t queue = 0;
  for (const auto &app : apps_) {
    queue += app->pool->queue_depth();
    for (const auto &[state, n] : app->pool->count_states()) {
      if (state == "ready") ready += n;
      if (state == "starting") starting += n;
    }
  }
  return fmt::format("{} worker{} ready, {} starting, {} queued; generation {}; serving http://{}",
                     ready, ready == 1 ? "" : "s", starting, queue, main_app().pool->generation(),
                     address());
}

void Server::on_pool_ready(Pool &pool) {
  App *app = app_for(pool);
  if (!app || app->ready) return;
  app->ready = true;
  if (app->pending) {
    ctx_->log().info("{}", app_message(*app, "ready: it takes requests once the reload completes"));
    layout_step_done(true, {});
  } else if (all_apps_ready()) {
    on_first_ready();
  }
}

void Server::on_pool_failed(Pool &pool, int code, std::string message) {
  App *app = app_for(pool);
  if (app && app->pending) {
    ctx_->log().error("{}", app_message(*app, message));
    app->pending = false;  // not taken in by the reload: it ends
    retire_app(*app, "its start-up failed");
    layout_step_done(false, app_message(*app, message));
    return;
  }
  fatal(code, app ? app_message(*app, message) : std::move(message));
}

Routing Server::route(const Head &request, std::string_view peer_ip) {
  Routing out;
  const std::string *host = request.find("host");
  out.route = match_route(layout_.routes, host ? *host : std::string_view(), request.target);
  if (!out.route) return out;
  const Route &r = *out.route;
  size_t i = r.backends.size() == 1 ? 0 : pick_backend(r, sticky_key(r, request, peer_ip));
  for (auto &a : apps_) {
    if (a->name == r.backends[i].app && !a->pending && !a->retiring) out.app = a.get();
  }
  if (out.app) ++out.app->in_progress;
  return out;
}

const Config *Server::app_config(std::string_view name) {
  const Config *found = nullptr;
  for (auto &a : apps_) {
    if (a->name != name || a->pending) continue;
    if (!a->retiring) return &a->config;
    found = &a->config;  // leaving: only when no app of that name serves
  }
  return found;
}

void Server::on_proxy_done(Proxy &proxy) {
  if (App *app = proxy.app()) {
    if (app->in_progress > 0) --app->in_progress;
    if (app->retiring) maybe_end_app(*app);
  }
  listener_->close_proxy(proxy);
  if (ctx_->stopping()) maybe_terminate_pool();
}

void Server::retire_app(App &app, std::string_view why) {
  if (app.retiring) return;
  app.retiring = true;
  if (app.in_progress > 0) {
    ctx_->log().info("{}",
                     app_message(app, fmt::format("leaves ({}) once its {} requests in progress "
                                                  "are over (at most {} s)",
                                                  why, app.in_progress,
                                                  format_seconds(config_.graceful_timeout))));
  } else {
    ctx_->log().info("{}", app_message(app, fmt::format("leaves ({})", why)));
  }
  app.retire_timer = std::make_unique<Timer>(&loop_, [this, &app] {
    ctx_->log().warn("{}", app_message(app, fmt::format("graceful timeout: {} requests still in "
                                                        "progress are cut off",
                                                        app.in_progress)));
    app.pool->terminate();
  });
  app.retire_timer->start(config_.graceful_timeout);
  maybe_end_app(app);
}

void Server::maybe_end_app(App &app) {
  if (!app.retiring || terminating_) return;
  if (!app.pool->terminating()) {
    if (app.in_progress == 0) app.pool->terminate();  // reports back through on_pool_terminated
    return;
  }
  if (!app.terminated || app.in_progress > 0) return;
  app.retire_timer.reset();
  app.pool->remove_runtime_files();
  for (auto it = apps_.begin(); it != apps_.end(); ++it) {
    if (it->get() == &app) {
      ctx_->log().info("{}", app_message(app, "ended"));
      ctx_->stats().by_app[app.name] += app.counts;  // its counts outlive it, in /metrics
      ctx_->defer_delete(it->release());
      apps_.erase(it);
      return;
    }
  }
}

void Server::reload_all(ReloadDone done) {
  if (ctx_->stopping()) {
    if (done) done(ReloadResult{false, 0, 0, 0, "the server is shutting down"});
    return;
  }
  reload_admin_token();  // a rotated Secret takes effect without a restart
  if (!layout_.from_file) {
    main_app().pool->reload(std::move(done));
    return;
  }
  if (layout_reload_.ask(std::move(done))) return begin_layout_reload();
  ctx_->log().info("a reload is in progress: the new one runs after it");
}

void Server::begin_layout_reload() {
  layout_reload_.begin();
  LayoutReloadWork &r = layout_work_;
  r = LayoutReloadWork{};
  r.steps = 1;  // this function's own, so no step completes the reload before all have begun
  on_reload_started();
  std::vector<Mistake> mistakes;
  auto next = load_layout(options_, &mistakes);
  if (!next) {
    layout_step_done(false, "the config file has mistakes; nothing changed:\n" +
                                format_mistakes(options_.config, mistakes));
    return;
  }
  r.next = std::move(*next);
  for (size_t i = 0; const char *key = option_key(i); ++i) {
    if (is_server_option(key) && config_.get(key) != r.next.server.get(key) &&
        std::string_view(key) != "config")
      ctx_->log().warn("reload: {} changed in {}; it takes effect when valve restarts", key,
                       options_.config);
  }
  // Each app the file names: one serving with the same options reloads its workers; any other
  // (new, or with options changed) starts beside the old, which leaves once the reload is done.
  std::vector<Pool *> reloading;
  for (const AppSpec &spec : r.next.apps) {
    App *same = nullptr;
    for (auto &a : apps_) {
      if (a->name == spec.name && !a->pending && !a->retiring &&
          a->config.to_json() == spec.config.to_json())
        same = a.get();
    }
    if (same) {
      reloading.push_back(same->pool.get());
      continue;
    }
    App &fresh = add_app(spec);
    fresh.pending = true;
    r.fresh.push_back(&fresh);
    if (auto err = fresh.pool->check_environment()) {
      r.failed = true;
      r.error = app_message(fresh, *err);
      break;
    }
  }
  if (r.failed) {
    for (App *a : r.fresh) a->pending = false, retire_app(*a, "the reload failed");
    r.fresh.clear();
    layout_step_done(false, r.error);
    return;
  }
  r.steps += reloading.size() + r.fresh.size();
  for (App *a : r.fresh) {
    ctx_->log().info("{}", app_message(*a, "starting"));
    a->pool->start();
    if (a->config.n_min == 0) on_pool_ready(*a->pool);
  }
  for (Pool *p : reloading) {
    p->reload([this](const ReloadResult &result) { layout_step_done(result.ok, result.error); });
  }
  layout_step_done(true, {});
}

void Server::layout_step_done(bool ok, const std::string &error) {
  LayoutReloadWork &r = layout_work_;
  if (!layout_reload_.in_progress()) return;
  if (!ok && !r.failed) {
    r.failed = true;
    r.error = error;
  }
  if (r.steps > 0 && --r.steps > 0) return;
  finish_layout_reload(!r.failed, r.error);
}

void Server::finish_layout_reload(bool ok, std::string error) {
  LayoutReloadWork &r = layout_work_;
  if (ok) {
    // The new routes take every request from here on; apps no longer named, or replaced by a
    // fresh one of the same name, finish what they have and end.
    std::vector<App *> leaving;
    for (auto &a : apps_) {
      if (a->pending || a->retiring) continue;
      bool kept = false;
      for (const AppSpec &spec : r.next.apps) kept = kept || spec.name == a->name;
      for (App *f : r.fresh) kept = kept && f->name != a->name;
      if (!kept) leaving.push_back(a.get());
    }
    for (App *f : r.fresh) f->pending = false;
    r.next.server = layout_.server;  // the server's own options wait for a restart
    layout_ = std::move(r.next);
    for (App *a : leaving) retire_app(*a, "the reload removed or replaced it");
  } else {
    for (App *f : r.fresh) {
      if (f->pending) f->pending = false, retire_app(*f, "the reload failed");
    }
  }
  ReloadResult result;
  result.ok = ok;
  result.error = ok ? std::string() : error;
  result.generation = main_app().pool->generation();
  result.duration_ms = layout_reload_.elapsed_ms();
  for (auto &a : apps_) {
    if (a->pending || a->retiring) continue;
    for (const auto &[state, n] : a->pool->count_states()) {
      if (state == "ready") result.workers += n;
    }
  }
  r.fresh.clear();
  if (ok) {
    ctx_->log().info("reload: {} apps serve, {} ms after the reload began", layout_.apps.size(),
                     result.duration_ms);
  } else {
    ctx_->log().error("reload failed; what served goes on serving: {}", error);
  }
  ctx_->stats().reloads[ok ? "ok" : "failed"]++;
  on_reload_finished(ok);
  if (!layout_reload_.finish(result)) return;
  if (!ctx_->stopping()) return begin_layout_reload();
  layout_reload_.drop_next(ReloadResult{false, 0, 0, 0, "the server is shutting down"});
}

void Server::fatal(int code, std::string message) {
  ctx_->log().error("{}", message);
  set_result(code, std::move(message));
  begin_stop(0);
}

void Server::begin_stop(double deadline_seconds) {
  if (finished_) return;
  if (deadline_seconds < 0) deadline_seconds = config_.graceful_timeout;
  if (!ctx_->stopping()) {
    ctx_->set_stopping();
    notify_timer_.reset();
    notifier_.send(fmt::format("STOPPING=1\nSTATUS=shutting down: {} requests in progress",
                               listener_->requests_in_progress()));
    listener_->drain();
    jobs_->stop();  // jobs are kept in memory only: a restart loses them all
    if (listener_->requests_in_progress() > 0 && deadline_seconds > 0)
      ctx_->log().info("waiting up to {} s for {} requests in progress",
                       format_seconds(deadline_seconds), listener_->requests_in_progress());
  }
  if (deadline_seconds <= 0) {
    terminate_pool();
    return;
  }
  stop_timer_ = std::make_unique<Timer>(&loop_, [this] {
    ctx_->log().warn("graceful timeout: {} requests still in progress are cut off",
                     listener_->requests_in_progress());
    terminate_pool();
  });
  stop_timer_->start(deadline_seconds);
  maybe_terminate_pool();
}

void Server::maybe_terminate_pool() {
  if (ctx_->stopping() && !terminating_ && listener_->requests_in_progress() == 0) terminate_pool();
}

void Server::terminate_pool() {
  if (terminating_) return;
  terminating_ = true;
  if (stop_timer_) stop_timer_->stop();
  for (auto &app : apps_) app->pool->terminate();
}

void Server::on_pool_terminated(Pool &pool) {
  App *app = app_for(pool);
  if (app) app->terminated = true;
  if (!terminating_) {
    if (app) maybe_end_app(*app);
    return;
  }
  for (auto &a : apps_) {
    if (!a->terminated) return;
  }
  // Requests still open lost their workers: their clients are closed with them.
  listener_->close_clients();
  finish();
}

void Server::finish() {
  if (finished_) return;
  finished_ = true;
  ctx_->set_stopping();
  listener_->close();
  jobs_->stop();
  if (sigint_) close_handle(sigint_);
  if (sigterm_) close_handle(sigterm_);
  if (sigchld_) close_handle(sigchld_);
  if (sighup_) close_handle(sighup_);
  if (sigusr1_) close_handle(sigusr1_);
  admin_->close();
  ctx_->errors().set_hooks(nullptr);
  error_hooks_->close();
  ctx_->access_log().flush();
  stop_timer_.reset();
  notify_timer_.reset();
  inbox_->close();
  ctx_->deferred().close();
  if (result_ == 0) ctx_->log().info("stopped");
}

void Server::remove_runtime_dir() {
  const std::string &dir = ctx_->runtime_dir();
  if (dir.empty()) return;
  if (apps_.empty()) return;
  unlink(worker_script_path(dir).c_str());
  for (auto &app : apps_) app->pool->remove_runtime_files();
  // valve made it: all in it goes (a --user worker's too, which may have put links there).
  if (own_runtime_dir_) {
    if (int rc = remove_tree(dir); rc != 0)
      ctx_->log().warn("cannot remove the runtime directory {}: {}", dir, uv_message(rc));
  }
}

}  // namespace valve
