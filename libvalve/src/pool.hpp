// The pool of workers for one app: launch policy, the pending queue, dispatch, idle retirement,
// crash handling.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config.hpp"
#include "fair_queue.hpp"
#include "preloader.hpp"
#include "reload.hpp"
#include "sandbox.hpp"
#include "spawn_policy.hpp"
#include "util.hpp"
#include "worker.hpp"

namespace valve {

class ApiSpec;
class Context;
class UpstreamConn;
struct Head;
class Logger;

class Pool final : public Worker::Owner, public Preloader::Owner {
 public:
  // What a pool tells the one that owns it.
  class Observer {
   public:
    // Its first worker is ready; its start-up cannot succeed; it ended all its workers.
    virtual void on_pool_ready(Pool &pool) = 0;
    virtual void on_pool_failed(Pool &pool, int code, std::string message) = 0;
    virtual void on_pool_terminated(Pool &pool) = 0;
    // Its reload began or ended.
    virtual void on_reload_started() = 0;
    virtual void on_reload_finished(bool ok) = 0;

   protected:
    ~Observer() = default;
  };

  // A request as the pool sees it (a proxy): what places it, and how it is handed over. It carries
  // its place in the fair queue (FairQueue::Entry).
  class Request : public FairQueue::Entry {
   public:
    virtual const Head &request() const = 0;
    // The worker a retry avoids (0: none).
    virtual uint64_t excluded_worker() const = 0;
    // The worker a Shiny session is pinned to (its affinity token), "" when none.
    virtual const std::string &affinity() const = 0;
    // Whose request it is (client_key() in fair_queue.hpp), and its priority class.
    virtual const std::string &client_key() const = 0;
    virtual Priority priority() const = 0;
    // A WebSocket handshake: it may hold its worker for long (--tunnel-workers-max).
    virtual bool websocket() const { return false; }
    // A worker takes it, over conn (leased from the worker).
    virtual void dispatch(Worker &worker, UpstreamConn &conn) = 0;
    // It waits in the queue (its queue timeout starts).
    virtual void on_queued() = 0;
    // It is refused: 503 when the queue is full or the pool is shutting down, 429 when its client
    // has client-max-queued requests waiting.
    virtual void reject(int status, std::string_view message) = 0;

   protected:
    ~Request() = default;
  };

  // name: the app's; serial: unique in the server, for the pool's files in the runtime directory.
  Pool(Context &ctx, Observer &observer, const Config &config, std::string name, uint64_t serial);
  ~Pool();
  Pool(const Pool &) = delete;
  Pool &operator=(const Pool &) = delete;

  void start();
  // Sends the request to an idle worker, queues it, or rejects it with 503.
  void submit(Request &req, bool front = false);
  void cancel(Request &req);
  // The request's worker is done with it (before the worker is released): its client counts one
  // request fewer in flight. Harmless for a request that has none.
  void done(Request &req);
  // Stop launching; end every worker (SIGTERM, then SIGKILL). done() runs when all have exited.
  void terminate();
  bool all_exited() const;

  // Starts a new generation of workers; once it is ready, traffic moves to it and the old one
  // drains. If a new worker fails before it is ready, the old generation keeps serving. done runs
  // (on the loop thread) when the reload is over; a reload asked for during another runs after it.
  void reload(ReloadDone done);
  // n-min or n-max changed: stop or drain workers above n-max, launch up to n-min.
  void on_scaled();
  uint64_t generation() const override { return generation_; }
  nlohmann::ordered_json reload_json() const;  // its last reload, for the status

  // ---- from workers
  void on_worker_ready(Worker &w) override;
  // The worker should be replaced gracefully: its replacement starts first (kind: max-requests,
  // max-rss).
  void retire(Worker &w, std::string kind, std::string_view why) override;
  // A worker turned unhealthy or healthy again.
  void on_worker_health(Worker &w) override;
  void on_worker_free(Worker &w) override;
  void on_worker_exit(Worker &w, int wait_status, bool never_ready) override;
  int plan_launch(uint64_t id, WorkerLaunch *out) const override;

  Context &context() override { return ctx_; }
  const Context &context() const { return ctx_; }
  const std::string &name() const override { return name_; }
  uint64_t serial() const override { return serial_; }
  bool terminating() const { return terminating_; }
  const Config &config() const override { return config_; }
  const Logger &log() const;
  // The resolved Rscript, and the API file's absolute path.
  const std::string &rscript_path() const { return rscript_path_; }
  const std::string &api_file() const override { return api_file_; }
  // The directory workers start in: the API file's, or a Shiny app directory itself.
  const std::string &api_dir() const { return api_dir_; }
  // Checks the environment (Rscript found, the API file readable, the workers' user and
  // environment file); a message naming the option.
  std::optional<std::string> check_environment();
  // Who workers run as, and the environment they get (re-read from --env-file on each reload).
  const Identity &identity() const { return identity_; }
  const std::vector<std::string> &worker_environment() const { return worker_env_; }
  size_t queue_depth() const override { return queue_.size(); }
  const FairQueue &queue() const { return queue_; }
  nlohmann::ordered_json workers_json() const;  // each worker, for the status
  // Its workers (an exited one until its exit has been handled), for tests.
  const std::list<std::unique_ptr<Worker>> &workers() const { return workers_; }
  Worker *find_pid(int pid) override;
  // valve reaped a child (SIGCHLD): a worker's or a template's exit. False when it was neither.
  bool on_reaped(int pid, int wait_status);
  // With --preload, the templates workers are forked from (preloader.hpp); null without.
  Preloader *preloader() { return preloader_.get(); }
  bool fork(Worker &w, const SpawnSpec &spec) override;
  void cancel_fork(Worker &w) override;
  void on_template_exit() override;
  nlohmann::ordered_json preload_json() const;  // its preloader's, or null
  void remove_runtime_files();
  // Workers by state name, for metrics.
  std::vector<std::pair<std::string, size_t>> count_states() const;
  uint64_t resident_bytes() const;
  // Whether traffic can be served now (a worker is ready and healthy); else why not.
  bool ready(std::string *why) const;
  // The API's OpenAPI spec (openapi.hpp) of the generation serving, for request checks: from
  // --openapi, else the one its plumber workers wrote as they started. Replaced when a worker of a
  // new generation is ready (at start and on a reload); a spec that cannot be read or parsed
  // keeps the one before. Null while there is none.
  const std::shared_ptr<const ApiSpec> &spec() const { return spec_; }
  // Where generation's plumber workers write the spec (empty: they write none).
  std::string openapi_path(uint64_t generation) const;

 private:
  Worker *pick(const Request *req);
  // Workers that take requests and hold a WebSocket (or a handshake): --tunnel-workers-max's count.
  size_t tunnel_workers() const;
  void assign(Worker &w, Request &req);
  void drain_queue();
  void launch_needed();
  // Tells the preloader how many spares to keep: --preload-spares, or by recent demand.
  void update_spares();
  void launch_one();
  // Delays the next launch by the crash-loop backoff for failures_; returns the delay.
  double back_off();
  void retire_idle();
  // Launches what is needed, drains replaced workers once their replacements are ready, completes
  // a reload, and hands queued requests to free workers. Called after every change.
  void rebalance();
  void begin_reload();
  void abort_reload(std::string why);
  void finish_reload(bool ok, std::string error);
  void monitor();  // resident memory, max-rss
  bool is_current(const Worker &w) const;
  // Reads generation's spec, from --openapi or its workers' file; true if it is in force.
  bool load_spec(uint64_t generation);
  // The workers' environment from the configuration, the identity and --env-file.
  std::optional<std::string> load_worker_environment();

  Context &ctx_;
  Observer &observer_;
  DeferredCalls calls_;
  const Config &config_;
  std::string name_;
  uint64_t serial_;
  std::string rscript_path_;
  std::string api_file_;
  std::string api_dir_;
  std::string openapi_file_;  // --openapi, absolute
  std::shared_ptr<const ApiSpec> spec_;
  uint64_t spec_generation_ = 0;
  std::shared_ptr<const ApiSpec> previous_spec_;  // restored if a reload fails
  uint64_t previous_spec_generation_ = 0;
  uint64_t spec_tried_ = 0;  // the last generation whose spec was read
  Identity identity_;
  std::vector<std::string> worker_env_;
  std::unique_ptr<Preloader> preloader_;  // before workers_: it outlives them
  std::list<std::unique_ptr<Worker>> workers_;
  FairQueue queue_;        // the pending queue, fair between clients
  unsigned failures_ = 0;  // launches in a row that never became ready
  bool ever_ready_ = false;
  bool terminating_ = false;
  uint64_t next_launch_ms_ = 0;  // crash-loop backoff
  LogThrottle full_queue_log_;   // "queue full" once a second at most
  uint64_t generation_ = 1;
  size_t owed_ = 0;  // replacements still to launch for workers awaiting them
  DemandWindow demand_{monotonic_ms()};  // recent peaks, for --preload-spares auto
  uint64_t affordable_at_ms_ = 0;        // when affordable_spares_ was last measured
  size_t affordable_spares_ = 0;         // spares an eighth of the available memory holds
  Reload reload_;
  uint64_t reload_generation_ = 1;         // the generation the last reload started
  uint64_t previous_generation_ = 1;       // the one serving before it, restored if it fails
  std::vector<std::string> previous_env_;  // likewise
  Timer launch_timer_;
  Timer maintenance_timer_;
  Timer monitor_timer_;
};

}  // namespace valve
