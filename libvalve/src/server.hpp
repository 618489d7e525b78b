// The server, on top of everything: the host API and the lifecycle (start, serve, reload, stop), on
// one loop thread that owns the listener, the apps (each a pool of workers), the admin interface
// and the signals. It hands a Context down, and hears back as each part's host or observer.
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

#include "admin.hpp"
#include "app.hpp"
#include "config.hpp"
#include "config_file.hpp"
#include "context.hpp"
#include "error_hooks.hpp"
#include "http.hpp"
#include "inbox.hpp"
#include "job_service.hpp"
#include "listener.hpp"
#include "log.hpp"
#include "notify.hpp"
#include "pool.hpp"
#include "proxy.hpp"
#include "reload.hpp"
#include "util.hpp"

namespace valve {

// The host's callbacks; null members are unused.
struct Hooks {
  LogSink log = nullptr;
  void *log_data = nullptr;
  EventSink event = nullptr;
  void *event_data = nullptr;
};

class Server final : public Pool::Observer, public Proxy::Host, public AdminServer::Host {
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
  // Pool::Observer
  void on_pool_ready(Pool &pool) override;
  void on_pool_failed(Pool &pool, int code, std::string message) override;
  void on_pool_terminated(Pool &pool) override;
  // The service manager hears RELOADING=1, then READY=1.
  void on_reload_started() override;
  void on_reload_finished(bool ok) override;

  // Proxy::Host
  Routing route(const Head &request, std::string_view peer_ip) override;
  const std::vector<Route> &routes() const override { return layout_.routes; }
  void on_proxy_done(Proxy &proxy) override;
  JobService *jobs() override { return jobs_.get(); }
  const Config *app_config(std::string_view app) override;

  // AdminServer::Host
  std::string status_json_now() override;
  std::string metrics_text() override;
  std::string errors_json() override;
  // Whether /readyz passes: not stopping, and a worker can take a request; else why not.
  bool ready(std::string *why) override;
  // Reloads every app (and, with a config file, the apps and routes from it); done runs on the
  // loop thread when it is over.
  void reload(ReloadDone done) override { reload_all(std::move(done)); }
  std::optional<std::string> purge_cache(const std::string &app, const std::string &prefix,
                                         size_t *purged) override;
  std::optional<std::string> scale(const std::optional<std::string> &n_min,
                                   const std::optional<std::string> &n_max,
                                   const std::string &app) override;
  App *find_app(std::string_view name, std::string *why) override;

 private:
  int serve();  // run() with SIGPIPE blocked
  void reload_all(ReloadDone done);
  nlohmann::ordered_json reload_json() const;
  App &main_app();  // the first app serving: the only one without a config file
  bool all_apps_ready() const;
  void on_first_ready();
  // Start-up cannot succeed (no worker became ready, R or plumber missing): stop with this result.
  void fatal(int code, std::string message);
  int prepare();
  int listen();
  void begin_stop(double deadline_seconds);
  void maybe_terminate_pool();
  void terminate_pool();
  void finish();
  void remove_runtime_dir();
  void start_reload(std::string_view why);  // SIGHUP
  // Reads admin-token-file into the admin interface, or refuses an admin address beyond loopback
  // without one: a message naming the option.
  std::optional<std::string> load_admin_token();
  // On each reload: the file again; if it cannot be read, the token in force stays (a warning).
  void reload_admin_token();
  bool admin_token_loaded_ = false;  // by check(), else when the admin interface listens
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
  void begin_layout_reload();
  void layout_step_done(bool ok, const std::string &error);
  void finish_layout_reload(bool ok, std::string error);

  Config options_;  // as given (flags): a config file's values yield to these on every reload
  Config config_;   // the server's options, the file's included
  Layout layout_;   // the apps and routes in force
  std::string layout_error_;
  std::vector<std::unique_ptr<App>> apps_;
  uint64_t next_pool_serial_ = 1;
  int reloads_active_ = 0;  // pools reloading: the service manager hears RELOADING=1 once
  // A config file's reload: the mechanism, and what this one builds.
  Reload layout_reload_;
  struct LayoutReloadWork {
    Layout next;
    std::vector<App *> fresh;  // apps it started
    size_t steps = 0;          // pool reloads and fresh apps not over yet
    bool failed = false;
    std::string error;
  } layout_work_;
  Hooks hooks_;
  uv_loop_t loop_{};
  std::unique_ptr<Context> ctx_;
  std::unique_ptr<Inbox> inbox_;
  std::unique_ptr<Listener> listener_;
  std::unique_ptr<JobService> jobs_;  // Prefer: respond-async requests, and /_valve/jobs/
  std::unique_ptr<AdminServer> admin_;
  std::unique_ptr<ErrorHooks> error_hooks_;
  uv_signal_t *sigint_ = nullptr;
  uv_signal_t *sigterm_ = nullptr;
  uv_signal_t *sigchld_ = nullptr;
  uv_signal_t *sighup_ = nullptr;
  uv_signal_t *sigusr1_ = nullptr;
  std::unique_ptr<Timer> stop_timer_;
  Notifier notifier_;
  std::unique_ptr<Timer> notify_timer_;  // refreshes STATUS= while serving
  bool own_runtime_dir_ = false;
  std::vector<std::pair<int, struct sigaction>> saved_signals_;  // the host's, restored at the end
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
