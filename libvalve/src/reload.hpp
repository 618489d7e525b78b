// One reload mechanism, for a pool (a new generation of workers) and for the server (a config
// file's apps and routes): one reload at a time, its phase for the status, the callers waiting for
// it, and a reload asked for meanwhile, which begins once the one in progress is over.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace valve {

// How a reload ended.
struct ReloadResult {
  bool ok = false;
  uint64_t generation = 0;  // the generation that serves now
  size_t workers = 0;       // its ready workers
  uint64_t duration_ms = 0;
  std::string error;
};
using ReloadDone = std::function<void(const ReloadResult &)>;

class Reload {
 public:
  enum class Phase { none, in_progress, done, failed };

  // Asks for a reload; done (may be empty) hears how it ended. True when the caller is to begin
  // one now (begin(), then the work); false when one is in progress: done waits for the next.
  bool ask(ReloadDone done);
  // The reload begins: those who asked wait for it.
  void begin();
  // The reload is over: its waiters hear the result. True when another was asked for meanwhile:
  // the caller begins it.
  bool finish(const ReloadResult &result);
  // Shutting down: the callers waiting for a next reload hear that there is none.
  void drop_next(const ReloadResult &result);

  Phase phase() const { return phase_; }
  bool in_progress() const { return phase_ == Phase::in_progress; }
  const char *phase_name() const;
  // The last reload's error ("" when it succeeded).
  const std::string &error() const { return error_; }
  uint64_t elapsed_ms() const;  // since the last reload began

 private:
  Phase phase_ = Phase::none;
  uint64_t started_ms_ = 0;
  std::string error_;
  std::vector<ReloadDone> asked_;    // waiting for the reload that begins next
  std::vector<ReloadDone> waiting_;  // waiting for the one in progress
  bool again_ = false;               // another was asked for while one was in progress
};

}  // namespace valve
