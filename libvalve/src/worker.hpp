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

#include "util.hpp"

namespace valve {

class Pool;
class UpstreamConn;
class LineReader;
class ReadinessProbe;

class Worker {
 public:
  enum class State { starting, ready, stopping, exited };

  Worker(Pool &pool, uint64_t id);
  ~Worker();
  Worker(const Worker &) = delete;
  Worker &operator=(const Worker &) = delete;

  // Starts the process; 0 or a negative errno.
  int launch();
  // An idle connection, or a new one; counts one more request in flight.
  UpstreamConn &lease();
  // The request on conn is over; a reusable conn is kept for the next one.
  void release(UpstreamConn &conn, bool reusable);
  // An idle connection failed or was closed by the worker.
  void drop_idle(UpstreamConn &conn);
  // Asks the process to end: SIGTERM now, SIGKILL after kill-timeout.
  void stop(std::string_view why);
  // Ends the process at once (it is stuck or unwanted); its requests fail.
  void kill(std::string_view why);
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
  bool accepting() const { return state_ == State::ready; }
  bool was_ready() const { return ready_ms_ != 0; }
  bool stop_requested() const { return stop_requested_; }
  bool lost_race() const { return lost_race_; }
  const std::string &socket_path() const { return socket_path_; }
  int port() const { return port_; }
  std::string address() const;
  std::string tail() const;  // the last lines the process wrote, for error messages
  Pool &pool() { return pool_; }
  std::string label() const;

  void on_line(bool is_stderr, std::string_view line);

 private:
  friend class ReadinessProbe;
  void on_probe_result(bool answered);
  void on_ready();
  void close_handles();
  void forget_conn(UpstreamConn &conn);
  void fail_conns(std::string_view why);

  Pool &pool_;
  uint64_t id_;
  pid_t pid_ = -1;
  State state_ = State::starting;
  std::string socket_path_;
  int port_ = 0;
  size_t in_flight_ = 0;
  uint64_t served_ = 0;
  uint64_t started_ms_ = 0;
  uint64_t ready_ms_ = 0;
  uint64_t last_used_ms_ = 0;
  std::list<std::unique_ptr<UpstreamConn>> conns_;
  std::vector<UpstreamConn *> idle_;
  std::unique_ptr<LineReader> out_, err_;
  std::unique_ptr<ReadinessProbe> probe_;
  uv_poll_t *exit_poll_ = nullptr;
  int pidfd_ = -1;
  bool stop_requested_ = false;
  bool lost_race_ = false;
  Timer startup_timer_;
  Timer kill_timer_;
  Timer exit_check_;
  std::deque<std::string> tail_;
};

}  // namespace valve
