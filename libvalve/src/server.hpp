// The server: one loop thread owning a listener, client connections, proxies and the pool.
#pragma once

#include <signal.h>
#include <uv.h>

#include <condition_variable>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "config.hpp"
#include "http.hpp"
#include "config_file.hpp"
#include "log.hpp"
#include "inbox.hpp"
#include "notify.hpp"
#include "stats.hpp"
#include "util.hpp"

namespace valve {

class Pool;
struct ReloadResult;
using ReloadDone = std::function<void(const ReloadResult &)>;
class ClientConn;
class Proxy;
class AdminServer;

using EventSink = void (*)(void *user_data, const char *event_json);

// One app: a pool of workers with its own settings, reached through the routes.
struct App {
  App(std::string app_name, Config app_config);
  ~App();
  std::string name;
  Config config;  // the pool reads it by reference: an App never moves
  std::unique_ptr<Pool> pool;
  size_t in_progress = 0;  // requests routed here and not over yet
  bool ready = false;    // a worker of it was ready once (or it needs none: n-min 0)
  bool pending = false;  // started by a reload in progress: not routed to yet
  bool retiring = false;  // out of the routes: it ends once its requests have
  bool terminated = false;  // its pool ended all its workers
  std::unique_ptr<Timer> retire_timer;  // cuts its requests off at graceful-timeout
  uint64_t requests = 0;
  uint64_t by_class[6] = {};  // answers by status / 100
};

// The app a request goes to, and the route that chose it.
struct Routing {
  App *app = nullptr;
  const Route *route = nullptr;
};

// The host's callbacks; null members are unused.
struct Hooks {
  LogSink log = nullptr;
  void *log_data = nullptr;
  EventSink event = nullptr;
  void *event_data = nullptr;
};

class Server {
 public:
  Server(Config config, Hooks hooks);
  ~Server();
  Server(const Server &) = delete;
  Server &operator=(const Server &) = delete;

  // Checks the config file, then the environment (R found, the API files readable); a message
  // naming the option (or the file and line).
  std::optional<std::string> check();

  // ---- any thread
  int run();               // blocks until the server stops
  int start_background();  // returns once the first worker is ready, or start-up failed
  int wait();              // joins the background thread
  void stop(double deadline_seconds);
  std::string status_json();
  std::string address();
  std::string last_error();
  // Reloads (see Pool::reload) and waits for the outcome: 0, or VALVE_ESTARTUP with *error saying
  // why (the old generation keeps serving). From the loop thread it starts the reload and returns
  // 0 at once.
  int reload(std::string *error);
  // Sets n-min and n-max (either may be absent) of the running pool: 0, or VALVE_EINVALID with
  // *error naming the option. With several apps, the app must be named.
  int scale(std::optional<uint64_t> n_min, std::optional<uint64_t> n_max, std::string *error,
            const std::string &app = {});

  // ---- loop thread
  uv_loop_t *loop() { return &loop_; }
  const Config &config() const { return config_; }
  const Logger &log() const { return log_; }
  Stats &stats() { return stats_; }
  AccessLog &access_log() { return access_log_; }
  std::string status_json_now();
  // Whether /readyz passes: not stopping, and a worker can take a request; else why not.
  bool ready(std::string *why);
  // Sets n-min and/or n-max of an app (the only one when app is empty) from their text: a
  // message naming the option, or nullopt.
  std::optional<std::string> scale(const std::optional<std::string> &n_min,
                                   const std::optional<std::string> &n_max,
                                   const std::string &app = {});
  // The app an app-specific admin command means: the named one, or the only one.
  App *find_app(std::string_view name, std::string *why);
  size_t requests_in_progress() const { return proxies_.size(); }
  size_t client_connections() const { return clients_.size(); }
  // Every app, those leaving and arriving included.
  const std::vector<std::unique_ptr<App>> &apps() const { return apps_; }
  // The first app serving: the only one without a config file.
  App &main_app();
  // Whether answers name their app (a Valve-App header): when a config file defines the apps.
  bool names_apps() const { return layout_.from_file; }
  const std::vector<Route> &routes() const { return layout_.routes; }
  // The app for a request; app is null when no route matches.
  Routing route(const Head &request, std::string_view peer_ip);
  // A request routed to app is over.
  void on_proxy_done(App &app);
  uint64_t next_worker_id() { return next_worker_id_++; }
  // Reloads every app (and, with a config file, the apps and routes from it); done runs on the
  // loop thread when it is over.
  void reload_all(ReloadDone done);
  std::string reload_json() const;
  const std::string &runtime_dir() const { return runtime_dir_; }
  bool stopping() const { return stopping_; }

  // Start-up cannot succeed (no worker became ready, R or plumber missing): stop with this result.
  void fatal(int code, std::string message);
  void on_first_ready();
  // A pool's first worker is ready; its start-up failed; it ended all its workers.
  void on_pool_ready(Pool &pool);
  void on_pool_failed(Pool &pool, int code, std::string message);
  void on_pool_terminated(Pool &pool);
  // The pool's reload began or ended (the service manager hears RELOADING=1, then READY=1).
  void on_reload_started();
  void on_reload_finished(bool ok);
  bool wants_events() const { return hooks_.event != nullptr; }
  // Hands one event (a JSON object) to the host, if it asked for events.
  void emit(const std::string &event_json) const;

  Proxy &open_proxy(ClientConn &client, Head head);
  void close_proxy(Proxy &ex);
  void close_client(ClientConn &client);
  // Runs fn on the loop thread soon, after the current callback has returned.
  void defer(std::function<void()> fn);
  template <typename T>
  void defer_delete(T *p) {
    defer([p] { delete p; });
  }
  // Takes p out of the list that owns it, deleting it after the current callback has returned.
  template <typename T>
  void defer_erase(std::list<std::unique_ptr<T>> &owners, T *p) {
    for (auto it = owners.begin(); it != owners.end(); ++it) {
      if (it->get() == p) {
        defer_delete(it->release());
        owners.erase(it);
        return;
      }
    }
  }

 private:
  int serve();  // run() with SIGPIPE blocked
  int prepare();
  int listen();
  void on_connection();
  void begin_stop(double deadline_seconds);
  void maybe_terminate_pool();
  void terminate_pool();
  void finish();
  void remove_runtime_dir();
  void run_deferred();
  void start_reload(std::string_view why);  // SIGHUP
  // Whether the caller is the loop thread of a running server; *error says if it is not running.
  bool on_running_loop(std::string *error);
  int not_running(std::string *error);
  // From a host thread: posts start(promise) to the loop and waits for the promise, which start
  // fulfils at once or later. nullopt if the loop ended before running it.
  template <typename T, typename F>
  std::optional<T> wait_on_loop(F start);
  std::string idle_status_json();  // before run() and after it ended
  void set_result(int code, std::string message);
  std::string service_status();  // one line for the service manager's STATUS=
  App &add_app(const AppSpec &spec);
  App *app_for(Pool &pool);
  std::string app_message(const App &app, std::string_view message) const;
  void retire_app(App &app, std::string_view why);
  void maybe_end_app(App &app);
  void begin_layout_reload(std::vector<ReloadDone> waiters);
  void layout_step_done(bool ok, const std::string &error);
  void finish_layout_reload(bool ok, std::string error);
  bool all_apps_ready() const;

  Config options_;  // as given (flags): a config file's values yield to these on every reload
  Config config_;   // the server's options, the file's included
  Layout layout_;   // the apps and routes in force
  std::string layout_error_;
  std::vector<std::unique_ptr<App>> apps_;
  uint64_t next_worker_id_ = 1;
  uint64_t next_pool_serial_ = 1;
  int reloads_active_ = 0;  // pools reloading: the service manager hears RELOADING=1 once
  struct LayoutReload {
    bool active = false;
    Layout next;
    std::vector<App *> fresh;  // apps it started
    size_t steps = 0;          // pool reloads and fresh apps not over yet
    bool failed = false;
    std::string error;
    uint64_t started_ms = 0;
    std::vector<ReloadDone> waiters;
    std::vector<ReloadDone> again;  // asked for meanwhile: run after it
    bool run_again = false;
    std::string state = "none";  // for the status: none, in_progress, done, failed
    std::string last_error;
  } layout_reload_;
  Hooks hooks_;
  Logger log_;
  Stats stats_;
  AccessLog access_log_;
  uv_loop_t loop_{};
  std::unique_ptr<Inbox> inbox_;
  std::unique_ptr<AdminServer> admin_;
  uv_tcp_t *listener_ = nullptr;
  uv_check_t *deferred_check_ = nullptr;
  uv_idle_t *deferred_idle_ = nullptr;
  uv_signal_t *sigint_ = nullptr;
  uv_signal_t *sigterm_ = nullptr;
  uv_signal_t *sigchld_ = nullptr;
  uv_signal_t *sighup_ = nullptr;
  uv_signal_t *sigusr1_ = nullptr;
  std::unique_ptr<Timer> stop_timer_;
  Notifier notifier_;
  std::unique_ptr<Timer> notify_timer_;  // refreshes STATUS= while serving
  std::unordered_set<ClientConn *> clients_;
  std::unordered_set<Proxy *> proxies_;
  std::vector<std::function<void()>> deferred_;
  std::string runtime_dir_;
  bool own_runtime_dir_ = false;
  std::vector<std::pair<int, struct sigaction>> saved_signals_;  // the host's, restored at the end
  bool stopping_ = false;
  bool terminating_ = false;
  bool finished_ = false;

  std::mutex mutex_;  // guards what other threads read: the fields below
  std::condition_variable cv_;
  std::string address_;
  std::string last_error_;
  int result_ = 0;
  bool started_ = false;  // first worker ready
  bool running_ = false;
  bool done_ = false;
  std::thread thread_;
  std::thread::id loop_thread_;
};

}  // namespace valve
