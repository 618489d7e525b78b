// One worker process: its launch, readiness, output, connections, and end.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "context.hpp"
#include "health.hpp"
#include "tempdir.hpp"
#include "upstream.hpp"
#include "util.hpp"

namespace valve {

struct WorkerLaunch;
class LineReader;
struct SpawnSpec;
struct Spawned;

class Worker final : public UpstreamConn::Owner {
 public:
  // starting: launched, not yet answering. ready: serving (unless unhealthy; a retiring worker
  // serves only when no other can). draining: takes nothing new, stops once its requests are done.
  // stopping: SIGTERM (or SIGKILL) sent.
  enum class State { starting, ready, draining, stopping, exited };

  // The pool the worker belongs to: what the worker asks of it, and what it tells it.
  class Owner {
   public:
    virtual Context &context() = 0;
    virtual const Config &config() const = 0;
    virtual const std::string &name() const = 0;  // the app's
    // How to start worker `id`: 0, or a negative errno.
    virtual int plan_launch(uint64_t id, WorkerLaunch *out) const = 0;
    // With --preload: asks a template to fork the worker from spec; then w.on_forked() or
    // w.on_fork_failed() follows, never from inside fork(). False: launch it plainly.
    virtual bool fork(Worker &w, const SpawnSpec &spec) = 0;
    // The worker no longer wants the fork it asked for.
    virtual void cancel_fork(Worker &w) = 0;
    // Requests waiting for a worker.
    virtual size_t queue_depth() const = 0;

    virtual void on_worker_ready(Worker &w) = 0;
    // The worker should be replaced gracefully (kind: max-requests, max-rss).
    virtual void retire(Worker &w, std::string kind, std::string_view why) = 0;
    // It turned unhealthy or healthy again.
    virtual void on_worker_health(Worker &w) = 0;
    // A request on it is over: it may take another.
    virtual void on_worker_free(Worker &w) = 0;
    virtual void on_worker_exit(Worker &w, int wait_status, bool never_ready) = 0;

   protected:
    ~Owner() = default;
  };

  Worker(Owner &owner, uint64_t id, uint64_t generation);
  ~Worker();
  Worker(const Worker &) = delete;
  Worker &operator=(const Worker &) = delete;

  // Starts the process (or, with --preload, asks the template to fork it); 0 or a negative errno.
  int launch();
  // Preloading (preloader.hpp): the template forked this worker; or it could not, and the worker is
  // launched plainly from spec instead.
  void on_forked(const Spawned &child);
  void on_fork_failed(const SpawnSpec &spec, std::string_view why);
  // An idle connection, or a new one; counts one more request in flight.
  UpstreamConn &lease();
  // The request on conn is over; a reusable conn is kept for the next one.
  void release(UpstreamConn &conn, bool reusable);
  // An idle connection failed or was closed by the worker.
  void drop_idle(UpstreamConn &conn) override;
  // Asks the process to end: SIGTERM now, SIGKILL after kill-timeout.
  void stop(std::string_view why);
  // Ends the process at once (it is stuck or unwanted); its requests fail.
  void kill(std::string_view why);
  // Takes no new requests; stops once those in flight are done. WebSockets still open
  // graceful-timeout later are closed.
  void drain(std::string_view why);
  // A WebSocket to this worker opened or closed (it stays in flight while open).
  void note_tunnel(bool open) { open ? ++tunnels_ : (tunnels_ > 0 ? --tunnels_ : 0); }
  size_t tunnels() const { return tunnels_; }
  // A WebSocket handshake was sent to this worker, or its request is over (answered, or its tunnel
  // closed): the handshakes and open WebSockets it holds, which --tunnel-workers-max bounds.
  void hold_tunnel(bool held) {
    held ? ++tunnel_holds_ : (tunnel_holds_ > 0 ? --tunnel_holds_ : 0);
  }
  size_t tunnel_holds() const { return tunnel_holds_; }
  // The token that pins browser sessions to this worker (a shiny pool's cookie).
  const std::string &affinity() const { return affinity_; }
  // Marks the worker for replacement: it still serves, last of all, until the replacement is ready.
  void set_retiring(std::string reason) { retire_reason_ = std::move(reason); }
  void clear_retiring() { retire_reason_.clear(); }
  // The worker's own failure (connection error, malformed answer, 502/503/504) or a good answer.
  void note_request_result(bool ok);
  // It answered a request (any status): it works, whatever befalls it later.
  void note_answered() { ++answered_; }
  uint64_t answered() const { return answered_; }
  // Reads the resident memory from /proc; returns what max-rss compares (0 when unknown): the
  // resident size, or for a forked worker its proportional share (PSS), since the pages it shares
  // with the template and its siblings are resident once for all of them.
  uint64_t sample_rss();
  // The process has exited (status from waitpid).
  void on_exit(int wait_status);
  // Reaps the process if it has exited.
  void check_exit();

  uint64_t id() const { return id_; }
  pid_t pid() const { return pid_; }
  State state() const { return state_; }
  const char *state_name() const;
  size_t in_flight() const { return in_flight_; }
  uint64_t served() const { return served_; }
  uint64_t last_used_ms() const { return last_used_ms_; }
  uint64_t started_ms() const { return started_ms_; }
  uint64_t ready_ms() const { return ready_ms_; }
  uint64_t generation() const { return generation_; }
  // Ready and healthy: may be given requests (a retiring one only when no other can).
  bool accepting() const { return state_ == State::ready && !health_.unhealthy(); }
  bool retiring() const { return !retire_reason_.empty(); }
  const std::string &retire_reason() const { return retire_reason_; }
  bool unhealthy() const { return health_.unhealthy(); }
  // Ready but to be replaced (retiring or unhealthy), and not yet draining.
  bool awaiting_replacement() const {
    return state_ == State::ready && (retiring() || health_.unhealthy());
  }
  uint64_t rss_bytes() const { return rss_bytes_; }
  uint64_t pss_bytes() const { return pss_bytes_; }  // sampled for forked workers only
  bool forked() const { return forked_; }            // forked from a preload template
  int64_t last_used_unix_ms() const { return last_used_unix_ms_; }
  bool was_ready() const { return ready_ms_ != 0; }
  bool stop_requested() const { return stop_requested_; }
  // valve chose to stop it (scaling, idleness, a reload, shutdown), as opposed to killing it for a
  // failure: its end is no crash.
  bool stop_chosen() const { return stop_chosen_; }
  bool lost_race() const { return lost_race_; }
  const std::string &socket_path() const { return socket_path_; }
  // Its own temporary directory (its TMPDIR), removed once it has exited; empty if none was made.
  const std::string &tmpdir() const { return tmpdir_.path(); }
  int port() const { return port_; }
  std::string address() const;
  std::string tail() const;  // the last lines the process wrote, for error messages
  // The lines the process printed since its current request began (its pipes read first), at most
  // kRequestOutputLines; empty when another request was on it meanwhile (worker-concurrency > 1):
  // then no line can be told to be this request's.
  std::vector<std::string> request_output();
  Context &context() { return ctx_; }
  std::string label() const;

  void on_line(bool is_stderr, std::string_view line);

 private:
  WorkerAddress worker_address() const { return {socket_path_, port_}; }
  void make_tmpdir(const SpawnSpec &spec);
  void attach(const Spawned &child);  // the process exists: watch it, read its output, probe it
  void end_unstarted(std::string_view why);  // stopped or killed before the template forked it
  void on_probe_result(bool answered);
  void on_ready();
  void check_health();
  void on_health_result(int status, const std::string &why);
  void set_unhealthy(bool unhealthy, std::string_view why);
  void close_handles();
  void forget_conn(UpstreamConn &conn);
  void fail_conns(std::string_view why);
  void close_tunnels(std::string_view why);

  Owner &owner_;
  Context &ctx_;
  uint64_t id_;
  uint64_t generation_;
  pid_t pid_ = -1;
  State state_ = State::starting;
  std::string socket_path_;
  int port_ = 0;
  TempDir tmpdir_;
  size_t in_flight_ = 0;
  size_t tunnels_ = 0;
  size_t tunnel_holds_ = 0;
  std::string affinity_;
  uint64_t served_ = 0;
  uint64_t answered_ = 0;
  uint64_t started_ms_ = 0;
  uint64_t ready_ms_ = 0;
  uint64_t last_used_ms_ = 0;
  int64_t last_used_unix_ms_ = 0;  // 0: never served
  uint64_t request_limit_ = 0;     // max-requests plus this worker's jitter (0: none)
  uint64_t rss_bytes_ = 0;
  uint64_t pss_bytes_ = 0;
  std::string retire_reason_;
  Health health_;
  std::list<std::unique_ptr<UpstreamConn>> conns_;
  std::vector<UpstreamConn *> idle_;
  std::unique_ptr<LineReader> out_, err_;
  std::unique_ptr<ReadinessProbe> probe_;
  std::unique_ptr<Probe> health_probe_;
  uv_poll_t *exit_poll_ = nullptr;
  int pidfd_ = -1;
  bool stop_requested_ = false;
  bool stop_chosen_ = false;
  bool lost_race_ = false;
  bool fork_pending_ = false;  // the template has been asked to fork it: no process yet
  bool forked_ = false;
  bool exit_seen_ = false;  // a forked worker's pidfd said it ended; its status is awaited
  DeferredCalls calls_;
  Timer startup_timer_;
  Timer kill_timer_;
  Timer exit_check_;
  Timer health_timer_;
  Timer drain_timer_;
  std::deque<std::string> tail_;
  // The last lines since the lease that found it without requests.
  std::deque<std::string> request_lines_;
  size_t request_bytes_ = 0;
  bool output_shared_ = false;  // a second request was leased while one was on it
};

}  // namespace valve
