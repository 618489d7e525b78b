// The server: one loop thread owning a listener, client connections, exchanges and the pool.
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
#include "log.hpp"
#include "loop.hpp"
#include "notify.hpp"
#include "stats.hpp"
#include "util.hpp"

namespace valve {

class Pool;
class ClientConn;
class Exchange;
class AdminServer;

using EventSink = void (*)(void *user_data, const char *event_json);

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

  // Checks the environment (R found, the API file readable); a message naming the option.
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
  // *error naming the option.
  int scale(std::optional<uint64_t> n_min, std::optional<uint64_t> n_max, std::string *error);

  // ---- loop thread
  uv_loop_t *loop() { return &loop_; }
  const Config &config() const { return config_; }
  const Logger &log() const { return log_; }
  Stats &stats() { return stats_; }
  AccessLog &access_log() { return access_log_; }
  std::string status_json_now();
  // Whether /readyz passes: not stopping, and a worker can take a request; else why not.
  bool ready(std::string *why);
  // Sets n-min and/or n-max from their text: a message naming the option, or nullopt.
  std::optional<std::string> scale(const std::optional<std::string> &n_min,
                                   const std::optional<std::string> &n_max);
  size_t requests_in_progress() const { return exchanges_.size(); }
  size_t client_connections() const { return clients_.size(); }
  Pool &pool() { return *pool_; }
  const std::string &runtime_dir() const { return runtime_dir_; }
  bool stopping() const { return stopping_; }

  // Start-up cannot succeed (no worker became ready, R or plumber missing): stop with this result.
  void fatal(int code, std::string message);
  void on_first_ready();
  // The pool's reload began or ended (the service manager hears RELOADING=1, then READY=1).
  void on_reload_started();
  void on_reload_finished(bool ok);
  bool wants_events() const { return hooks_.event != nullptr; }
  // Hands one event (a JSON object) to the host, if it asked for events.
  void emit(const std::string &event_json) const;
  void on_pool_terminated();

  Exchange &open_exchange(ClientConn &client, Head head);
  void close_exchange(Exchange &ex);
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

  Config config_;
  Hooks hooks_;
  Logger log_;
  Stats stats_;
  AccessLog access_log_;
  uv_loop_t loop_{};
  std::unique_ptr<Inbox> inbox_;
  std::unique_ptr<Pool> pool_;
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
  std::unordered_set<Exchange *> exchanges_;
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
