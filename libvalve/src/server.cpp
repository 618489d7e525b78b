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

#include "admin.hpp"
#include "client.hpp"
#include "proxy.hpp"
#include "pool.hpp"
#include "process.hpp"
#include "valve/valve.h"
#include "worker.hpp"

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

// Run by every plumber or shiny worker: load the API or app, serve it on the Unix socket valve
// assigned. httpuv's pipe server has no Nagle/delayed-ACK stall on kept-alive connections, unlike
// plumber over TCP. Shiny serves a pipe itself when its port is a path with a "mask" attribute
// (how Shiny Server runs apps).
constexpr const char *kWorkerScript =
    R"R(# Written by valve. Serves one plumber API or Shiny app on the Unix socket valve assigns.
local({
  file <- Sys.getenv("VALVE_FILE")
  socket <- Sys.getenv("VALVE_SOCKET")
  type <- Sys.getenv("VALVE_TYPE", "plumber")
  if (!requireNamespace(type, quietly = TRUE) || !requireNamespace("httpuv", quietly = TRUE)) {
    message("valve: the R package '", type, "' is not installed (library paths: ",
            paste(.libPaths(), collapse = ", "), ")")
    quit(save = "no", status = 78)
  }
  if (type == "shiny") {
    shiny::runApp(file, port = structure(socket, mask = strtoi("077", 8L)),
                  launch.browser = FALSE)
    quit(save = "no", status = 0)
  }
  router <- tryCatch(plumber::pr(file), error = function(e) {
    message("valve: cannot load ", file, ": ", conditionMessage(e))
    quit(save = "no", status = 1)
  })
  httpuv::startPipeServer(socket, strtoi("077", 8L), router)
  repeat httpuv::service(1000)
})
)R";

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
  log_ = Logger(config_.log_level, hooks.log, hooks.log_data);
  log_.set_json(config_.log_format == "json");
  stats_.started_unix_ms = static_cast<uint64_t>(unix_ms());
  uv_loop_init(&loop_);
  inbox_ = std::make_unique<Inbox>(&loop_);
  for (const AppSpec &spec : layout_.apps) add_app(spec);
  admin_ = std::make_unique<AdminServer>(*this);
}

App::App(std::string app_name, Config app_config)
    : name(std::move(app_name)), config(std::move(app_config)) {}
App::~App() = default;

App &Server::add_app(const AppSpec &spec) {
  auto app = std::make_unique<App>(spec.name, spec.config);
  app->pool = std::make_unique<Pool>(*this, app->config, spec.name, next_pool_serial_++);
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
  apps_.clear();
  inbox_.reset();
  run_deferred();
  if (deferred_check_) close_handle(deferred_check_);
  if (deferred_idle_) close_handle(deferred_idle_);
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

std::optional<std::string> Server::check() {
  if (!layout_error_.empty()) return layout_error_;
  std::string errors;
  for (auto &app : apps_) {
    if (auto err = app->pool->check_environment())
      errors += (errors.empty() ? "" : "\n") + app_message(*app, *err);
  }
  if (!errors.empty()) return errors;
  return std::nullopt;
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
  while (!deferred_.empty()) run_deferred();
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
  return fmt::format(R"({{"version":"{}","state":"{}","workers":[],"queue":0,"config":{}}})",
                     VALVE_VERSION_STRING, done ? "stopped" : "created", config_.to_json());
}

std::string Server::status_json_now() {
  const char *state = finished_   ? "stopped"
                      : stopping_ ? "stopping"
                      : started_  ? "running"
                                  : "starting";
  const Stats &st = stats_;
  auto count = [](const std::map<std::string, uint64_t> &m) {
    uint64_t n = 0;
    for (const auto &[k, v] : m) n += v;
    return n;
  };
  std::string totals = fmt::format(
      R"({{"requests":{},"latency_sum_s":{:.6f},"queue_wait_sum_s":{:.6f},"2xx":{},"3xx":{},)"
      R"("4xx":{},"5xx":{},"rejected":{},"timeouts":{},"retries":{},"launches":{},"exits":{},)"
      R"("crashes":{},"recycles":{},"health_check_failures":{},"template_launches":{},)"
      R"("forks":{},"fork_fallbacks":{},"websockets":{},"websockets_open":{}}})",
      st.requests, st.latency.sum(), st.queue_wait.sum(), st.by_class[2], st.by_class[3],
      st.by_class[4], st.by_class[5], st.rejected, st.timeouts, st.retries, st.launches, st.exits,
      st.crashes, count(st.recycles), st.health_check_failures, st.template_launches, st.forks,
      st.fork_fallbacks, st.websockets, st.websockets_open);
  // Every app's workers in one list (each names its app), and each app on its own.
  std::string workers = "[", apps = "[";
  size_t queue = 0;
  for (const auto &app : apps_) {
    const Pool &pool = *app->pool;
    std::string list = pool.workers_json();
    if (list.size() > 2) workers += (workers.size() > 1 ? "," : "") + list.substr(1, list.size() - 2);
    queue += pool.queue_depth();
    size_t count = 0;
    for (const auto &[s, n] : pool.count_states()) count += n;
    apps += fmt::format(
        R"({}{{"name":"{}","state":"{}","generation":{},"reload":{},"queue":{},)"
        R"("requests_in_progress":{},"requests":{},"2xx":{},"3xx":{},"4xx":{},"5xx":{},)"
        R"("workers":{},"config":{}}})",
        apps.size() > 1 ? "," : "", json_escape(app->name),
        app->retiring ? "retiring" : app->pending ? "starting" : "serving", pool.generation(),
        pool.reload_json(), pool.queue_depth(), app->in_progress, app->requests, app->by_class[2],
        app->by_class[3], app->by_class[4], app->by_class[5], count, app->config.to_json());
  }
  workers += "]";
  apps += "]";
  std::string routes = "[";
  for (const Route &r : layout_.routes) {
    std::string backends;
    for (const Backend &b : r.backends)
      backends += fmt::format(R"({}{{"app":"{}","weight":{}}})", backends.empty() ? "" : ",",
                              json_escape(b.app), b.weight);
    routes += fmt::format(
        R"({}{{"hostname":"{}","prefix":"{}","strip_prefix":{},"sticky":"{}","apps":[{}]}})",
        routes.size() > 1 ? "," : "", json_escape(r.hostname), json_escape(r.prefix),
        r.strip_prefix ? "true" : "false", json_escape(r.sticky.describe()), backends);
  }
  routes += "]";
  Pool &main = *main_app().pool;
  return fmt::format(
      R"({{"version":"{}","state":"{}","address":"{}","admin":"{}","pid":{},"uptime_s":{:.3f},)"
      R"("generation":{},"reload":{},"queue":{},"requests_in_progress":{},"connections":{},)"
      R"("totals":{},"workers":{},"apps":{},"routes":{},"preload":{},"config":{}}})",
      VALVE_VERSION_STRING, state, json_escape(address_), json_escape(admin_->address()), getpid(),
      (unix_ms() - static_cast<int64_t>(st.started_unix_ms)) / 1000.0, main.generation(),
      reload_json(), queue, proxies_.size(), clients_.size(), totals, workers, apps, routes,
      main.preload_json(), config_.to_json());
}

std::string Server::reload_json() const {
  if (!layout_.from_file) return apps_.front()->pool->reload_json();
  const auto &r = layout_reload_;
  return fmt::format(R"({{"state":"{}","error":"{}"}})", r.state, json_escape(r.last_error));
}

bool Server::ready(std::string *why) {
  if (stopping_) {
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
  if (stopping_) return std::string("the server is shutting down");
  config.n_min = trial.n_min;
  config.n_max = trial.n_max;
  if (!layout_.from_file) config_.n_min = trial.n_min, config_.n_max = trial.n_max;
  log_.info("{}", app_message(*app, fmt::format("scaled: n-min {}, n-max {}", config.n_min,
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
  log_.info("reload ({})", why);
  reload_all(nullptr);
}

int Server::prepare() {
  deferred_check_ = new_handle<uv_check_t>(this);
  deferred_idle_ = new_handle<uv_idle_t>(this);
  uv_check_init(&loop_, deferred_check_);
  uv_idle_init(&loop_, deferred_idle_);
  uv_check_start(deferred_check_, [](uv_check_t *h) {
    if (auto *self = static_cast<Server *>(h->data)) self->run_deferred();
  });

  if (config_.runtime_dir.empty()) {
    const char *tmp = getenv("TMPDIR");
    std::string templ = fmt::format("{}/valve-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(templ.data())) {
      int e = errno;
      set_result(-e, fmt::format("runtime-dir {}: cannot create: {}", templ, strerror(e)));
      return -e;
    }
    runtime_dir_ = templ;
    own_runtime_dir_ = true;
  } else {
    runtime_dir_ = config_.runtime_dir;
    if (mkdir(runtime_dir_.c_str(), 0700) != 0 && errno != EEXIST) {
      int e = errno;
      set_result(VALVE_EINVALID,
                 fmt::format("runtime-dir {}: cannot create: {}", runtime_dir_, strerror(e)));
      return VALVE_EINVALID;
    }
    chmod(runtime_dir_.c_str(), 0700);
  }
  {  // any app may run R: a config file may add one on reload
    std::ofstream script(main_app().pool->script_path());
    script << kWorkerScript;
    script.close();
    if (!script) {
      set_result(VALVE_EINVALID, fmt::format("runtime-dir {}: cannot write there", runtime_dir_));
      return VALVE_EINVALID;
    }
    chmod(main_app().pool->script_path().c_str(), 0644);
  }
  if (const auto &as = main_app().pool->identity().credentials) {
    // Workers of another user make their sockets here: the directory becomes theirs, still 0700,
    // and valve, as root, keeps its way in.
    if (chown(runtime_dir_.c_str(), as->uid, as->gid) != 0) {
      int e = errno;
      set_result(VALVE_EINVALID, fmt::format("runtime-dir {}: cannot give it to user {}: {}",
                                             runtime_dir_, config_.user, strerror(e)));
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
      if (self->stopping_) {
        self->log_.warn("{} again: stopping now", signum == SIGINT ? "SIGINT" : "SIGTERM");
        self->begin_stop(0);
      } else {
        self->log_.info("{}: shutting down gracefully", signum == SIGINT ? "SIGINT" : "SIGTERM");
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
          if (auto err = self->access_log_.reopen()) {
            self->log_.error("SIGUSR1: {}", *err);
          } else {
            self->log_.info("SIGUSR1: log files reopened");
          }
        },
        SIGUSR1);
    add_onstack(SIGHUP);
    add_onstack(SIGUSR1);
  }
  if (auto err = access_log_.open(config_.access_log, config_.access_log_format == "json")) {
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
            bool ours = false;
            for (auto &app : self->apps_) ours = ours || app->pool->on_reaped(pid, status);
            if (!ours) {
              self->log_.debug("reaped orphan process {} ({})", pid, describe_exit(status));
            }
          }
        },
        SIGCHLD);
    add_onstack(SIGCHLD);
  }
  if (config_.notify) {
    if (auto why = notifier_.open_from_environment())
      log_.warn("{}: not telling it anything", *why);
  }
  if (int rc = listen(); rc != 0) return rc;
  if (!config_.admin.empty()) {
    std::string why;
    if (int rc = admin_->listen(config_.admin, &why); rc != 0) {
      set_result(rc, fmt::format("admin {}: {}", config_.admin, why));
      return rc;
    }
    log_.info("admin interface on {}{}", admin_->address().starts_with("unix:") ? "" : "http://",
              admin_->address());
  }
  return 0;
}

int Server::listen() {
  std::string host = config_.host == "localhost" ? "127.0.0.1" : config_.host;
  sockaddr_storage addr{};
  bool v6 = false;
  if (uv_ip4_addr(host.c_str(), static_cast<int>(config_.port),
                  reinterpret_cast<sockaddr_in *>(&addr)) != 0) {
    if (uv_ip6_addr(host.c_str(), static_cast<int>(config_.port),
                    reinterpret_cast<sockaddr_in6 *>(&addr)) != 0) {
      set_result(VALVE_EINVALID, fmt::format("host {}: not an IPv4 or IPv6 address", config_.host));
      return VALVE_EINVALID;
    }
    v6 = true;
  }
  listener_ = new_handle<uv_tcp_t>(this);
  uv_tcp_init(&loop_, listener_);
  int rc = uv_tcp_bind(listener_, reinterpret_cast<const sockaddr *>(&addr), 0);
  if (rc == 0) {
    rc =
        uv_listen(reinterpret_cast<uv_stream_t *>(listener_), 1024, [](uv_stream_t *s, int status) {
          auto *self = static_cast<Server *>(s->data);
          if (self && status == 0) self->on_connection();
        });
  }
  if (rc != 0) {
    bool host_problem = rc == UV_EADDRNOTAVAIL;
    set_result(rc, host_problem ? fmt::format("host {}: cannot listen there: {}", config_.host,
                                              uv_message(rc))
                                : fmt::format("port {}: cannot listen on {}: {}", config_.port,
                                              config_.host, uv_message(rc)));
    close_handle(listener_);
    return rc;
  }
  sockaddr_storage bound{};
  int len = sizeof bound;
  uv_tcp_getsockname(listener_, reinterpret_cast<sockaddr *>(&bound), &len);
  int port = ntohs(v6 ? reinterpret_cast<sockaddr_in6 *>(&bound)->sin6_port
                      : reinterpret_cast<sockaddr_in *>(&bound)->sin_port);
  {
    std::lock_guard lock(mutex_);
    address_ = v6 ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
  }
  log_.info("listening on http://{}", address_);
  return 0;
}

void Server::on_connection() {
  auto *client = new ClientConn(*this);
  if (client->accept(reinterpret_cast<uv_stream_t *>(listener_)) != 0) {
    delete client;
    return;
  }
  clients_.insert(client);
  if (clients_.size() > config_.max_connections) {
    ++stats_.rejected;
    log_.debug("refusing a connection: {} are open (max-connections)", clients_.size() - 1);
    client->fail(503, fmt::format("too many connections: {} are open (max-connections)",
                                  clients_.size() - 1));
  }
}

Proxy &Server::open_proxy(ClientConn &client, Head head) {
  auto *ex = new Proxy(*this, client, std::move(head));
  proxies_.insert(ex);
  return *ex;
}

void Server::close_proxy(Proxy &ex) {
  proxies_.erase(&ex);
  defer_delete(&ex);
  if (stopping_) maybe_terminate_pool();
}

void Server::close_client(ClientConn &client) {
  if (clients_.erase(&client)) defer_delete(&client);
}

void Server::defer(std::function<void()> fn) {
  deferred_.push_back(std::move(fn));
  // An active idle handle keeps the loop from blocking in poll, so the check handle runs soon.
  if (deferred_idle_ && !uv_is_active(reinterpret_cast<uv_handle_t *>(deferred_idle_)))
    uv_idle_start(deferred_idle_, [](uv_idle_t *) {});
}

void Server::run_deferred() {
  while (!deferred_.empty()) {
    std::vector<std::function<void()>> now;
    now.swap(deferred_);
    for (auto &fn : now) fn();
  }
  if (deferred_idle_) uv_idle_stop(deferred_idle_);
}

void Server::emit(const std::string &event_json) const {
  if (hooks_.event) hooks_.event(hooks_.event_data, event_json.c_str());
}

void Server::on_first_ready() {
  {
    std::lock_guard lock(mutex_);
    if (started_) return;
    started_ = true;
    cv_.notify_all();
  }
  if (notifier_.active() && !stopping_) {
    notifier_.send("READY=1");
    notifier_.status(service_status());
    notify_timer_ = std::make_unique<Timer>(&loop_, [this] { notifier_.status(service_status()); });
    notify_timer_->start(1, 1);
  }
}

void Server::on_reload_started() {
  if (reloads_active_++ > 0) return;  // several apps reload together: one RELOADING=1
  uint64_t usec = uv_hrtime() / 1000;  // CLOCK_MONOTONIC, as systemd wants it
  notifier_.send(
      fmt::format("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading: starting "
                  "generation {}",
                  usec, main_app().pool->generation()));
}

void Server::on_reload_finished(bool ok) {
  if (reloads_active_ > 0) --reloads_active_;
  if (stopping_ || reloads_active_ > 0) return;
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
                     ready, ready == 1 ? "" : "s", starting, queue,
                     main_app().pool->generation(), address());
}

void Server::on_pool_ready(Pool &pool) {
  App *app = app_for(pool);
  if (!app || app->ready) return;
  app->ready = true;
  if (app->pending) {
    log_.info("{}", app_message(*app, "ready: it takes requests once the reload completes"));
    layout_step_done(true, {});
  } else if (all_apps_ready()) {
    on_first_ready();
  }
}

void Server::on_pool_failed(Pool &pool, int code, std::string message) {
  App *app = app_for(pool);
  if (app && app->pending) {
    log_.error("{}", app_message(*app, message));
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

void Server::on_proxy_done(App &app) {
  if (app.in_progress > 0) --app.in_progress;
  if (app.retiring) maybe_end_app(app);
}

void Server::retire_app(App &app, std::string_view why) {
  if (app.retiring) return;
  app.retiring = true;
  if (app.in_progress > 0) {
    log_.info("{}", app_message(app, fmt::format("leaves ({}) once its {} requests in progress "
                                                 "are over (at most {} s)",
                                                 why, app.in_progress,
                                                 format_seconds(config_.graceful_timeout))));
  } else {
    log_.info("{}", app_message(app, fmt::format("leaves ({})", why)));
  }
  app.retire_timer = std::make_unique<Timer>(&loop_, [this, &app] {
    log_.warn("{}", app_message(app, fmt::format("graceful timeout: {} requests still in "
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
      log_.info("{}", app_message(app, "ended"));
      defer_delete(it->release());
      apps_.erase(it);
      return;
    }
  }
}

void Server::reload_all(ReloadDone done) {
  if (stopping_) {
    if (done) done(ReloadResult{false, 0, 0, 0, "the server is shutting down"});
    return;
  }
  if (!layout_.from_file) {
    main_app().pool->reload(std::move(done));
    return;
  }
  LayoutReload &r = layout_reload_;
  if (r.active) {
    log_.info("a reload is in progress: the new one runs after it");
    r.run_again = true;
    if (done) r.again.push_back(std::move(done));
    return;
  }
  std::vector<ReloadDone> waiters;
  if (done) waiters.push_back(std::move(done));
  begin_layout_reload(std::move(waiters));
}

void Server::begin_layout_reload(std::vector<ReloadDone> waiters) {
  LayoutReload &r = layout_reload_;
  r.active = true;
  r.state = "in_progress";
  r.failed = false;
  r.error.clear();
  r.fresh.clear();
  r.steps = 1;  // this function's own, so no step completes the reload before all have begun
  r.started_ms = monotonic_ms();
  r.waiters = std::move(waiters);
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
      log_.warn("reload: {} changed in {}; it takes effect when valve restarts", key,
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
    log_.info("{}", app_message(*a, "starting"));
    a->pool->start();
    if (a->config.n_min == 0) on_pool_ready(*a->pool);
  }
  for (Pool *p : reloading) {
    p->reload([this](const ReloadResult &result) { layout_step_done(result.ok, result.error); });
  }
  layout_step_done(true, {});
}

void Server::layout_step_done(bool ok, const std::string &error) {
  LayoutReload &r = layout_reload_;
  if (!r.active) return;
  if (!ok && !r.failed) {
    r.failed = true;
    r.error = error;
  }
  if (r.steps > 0 && --r.steps > 0) return;
  finish_layout_reload(!r.failed, r.error);
}

void Server::finish_layout_reload(bool ok, std::string error) {
  LayoutReload &r = layout_reload_;
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
  result.duration_ms = monotonic_ms() - r.started_ms;
  for (auto &a : apps_) {
    if (a->pending || a->retiring) continue;
    for (const auto &[state, n] : a->pool->count_states()) {
      if (state == "ready") result.workers += n;
    }
  }
  r.active = false;
  r.fresh.clear();
  r.state = ok ? "done" : "failed";
  r.last_error = result.error;
  if (ok) {
    log_.info("reload: {} apps serve, {} ms after the reload began", layout_.apps.size(),
              result.duration_ms);
  } else {
    log_.error("reload failed; what served goes on serving: {}", error);
  }
  stats_.reloads[ok ? "ok" : "failed"]++;
  on_reload_finished(ok);
  auto waiters = std::move(r.waiters);
  r.waiters.clear();
  for (auto &w : waiters) w(result);
  if (r.run_again && !stopping_) {
    r.run_again = false;
    begin_layout_reload(std::exchange(r.again, {}));
  }
}

void Server::fatal(int code, std::string message) {
  log_.error("{}", message);
  set_result(code, std::move(message));
  begin_stop(0);
}

void Server::begin_stop(double deadline_seconds) {
  if (finished_) return;
  if (deadline_seconds < 0) deadline_seconds = config_.graceful_timeout;
  if (!stopping_) {
    stopping_ = true;
    notify_timer_.reset();
    notifier_.send(fmt::format("STOPPING=1\nSTATUS=shutting down: {} requests in progress",
                               proxies_.size()));
    if (listener_) close_handle(listener_);
    std::vector<ClientConn *> clients(clients_.begin(), clients_.end());
    for (ClientConn *c : clients) c->drain();
    if (!proxies_.empty() && deadline_seconds > 0)
      log_.info("waiting up to {} s for {} requests in progress", format_seconds(deadline_seconds),
                proxies_.size());
  }
  if (deadline_seconds <= 0) {
    terminate_pool();
    return;
  }
  stop_timer_ = std::make_unique<Timer>(&loop_, [this] {
    log_.warn("graceful timeout: {} requests still in progress are cut off", proxies_.size());
    terminate_pool();
  });
  stop_timer_->start(deadline_seconds);
  maybe_terminate_pool();
}

void Server::maybe_terminate_pool() {
  if (stopping_ && !terminating_ && proxies_.empty()) terminate_pool();
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
  std::vector<ClientConn *> clients(clients_.begin(), clients_.end());
  for (ClientConn *c : clients) c->close();
  finish();
}

void Server::finish() {
  if (finished_) return;
  finished_ = true;
  stopping_ = true;
  if (listener_) close_handle(listener_);
  if (sigint_) close_handle(sigint_);
  if (sigterm_) close_handle(sigterm_);
  if (sigchld_) close_handle(sigchld_);
  if (sighup_) close_handle(sighup_);
  if (sigusr1_) close_handle(sigusr1_);
  admin_->close();
  access_log_.flush();
  stop_timer_.reset();
  notify_timer_.reset();
  inbox_->close();
  if (deferred_check_) close_handle(deferred_check_);
  if (deferred_idle_) close_handle(deferred_idle_);
  if (result_ == 0) log_.info("stopped");
}

void Server::remove_runtime_dir() {
  if (runtime_dir_.empty()) return;
  if (apps_.empty()) return;
  unlink(main_app().pool->script_path().c_str());
  for (auto &app : apps_) app->pool->remove_runtime_files();
  if (own_runtime_dir_) {
    if (DIR *d = opendir(runtime_dir_.c_str())) {
      while (dirent *e = readdir(d)) {
        std::string name = e->d_name;
        if (name.ends_with(".sock")) unlink((runtime_dir_ + "/" + name).c_str());
      }
      closedir(d);
    }
    rmdir(runtime_dir_.c_str());
  }
}

}  // namespace valve
