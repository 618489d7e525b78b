// The pool of workers for one app: launch policy, the pending queue, dispatch, idle retirement,
// crash handling.
#pragma once

#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <optional>
#include <string>

#include "config.hpp"
#include "util.hpp"

namespace valve {

class Server;
class Worker;
class Exchange;
class Logger;

class Pool {
 public:
  Pool(Server &server, const Config &config);
  ~Pool();
  Pool(const Pool &) = delete;
  Pool &operator=(const Pool &) = delete;

  void start();
  // Sends the request to an idle worker, queues it, or rejects it with 503.
  void submit(Exchange &ex, bool front = false);
  void cancel(Exchange &ex);
  // Stop launching; end every worker (SIGTERM, then SIGKILL). done() runs when all have exited.
  void terminate();
  bool all_exited() const;

  // ---- from workers
  void on_worker_ready(Worker &w);
  void on_worker_free(Worker &w);
  void on_worker_exit(Worker &w, int wait_status, bool never_ready);

  Server &server() { return server_; }
  const Config &config() const { return config_; }
  const Logger &log() const;
  // Where the R bootstrap script is, the resolved Rscript, and the API file's absolute path.
  std::string script_path() const;
  const std::string &rscript_path() const { return rscript_path_; }
  const std::string &api_file() const { return api_file_; }
  // Checks the environment (Rscript found, the API file readable); a message naming the option.
  std::optional<std::string> check_environment();
  size_t queue_depth() const { return queue_.size(); }
  std::string workers_json() const;
  Worker *find_pid(int pid);

 private:
  Worker *pick(const Exchange *ex);
  void assign(Worker &w, Exchange &ex);
  void drain_queue();
  void launch_needed();
  void launch_one();
  // Delays the next launch by the crash-loop backoff for failures_; returns the delay.
  double back_off();
  void retire_idle();
  void remove_exited();

  Server &server_;
  const Config &config_;
  std::string rscript_path_;
  std::string api_file_;
  std::list<std::unique_ptr<Worker>> workers_;
  std::deque<Exchange *> queue_;
  uint64_t next_id_ = 1;
  unsigned failures_ = 0;  // launches in a row that never became ready
  bool ever_ready_ = false;
  bool terminating_ = false;
  uint64_t next_launch_ms_ = 0;  // crash-loop backoff
  Timer launch_timer_;
  Timer maintenance_timer_;
};

}  // namespace valve
