#include "reload.hpp"

#include <utility>

#include "util.hpp"

namespace valve {

bool Reload::ask(ReloadDone done) {
  if (done) asked_.push_back(std::move(done));
  if (phase_ != Phase::in_progress) return true;
  again_ = true;
  return false;
}

void Reload::begin() {
  phase_ = Phase::in_progress;
  started_ms_ = monotonic_ms();
  error_.clear();
  again_ = false;
  waiting_ = std::exchange(asked_, {});
}

bool Reload::finish(const ReloadResult &result) {
  phase_ = result.ok ? Phase::done : Phase::failed;
  error_ = result.ok ? std::string() : result.error;
  for (auto &done : std::exchange(waiting_, {})) done(result);
  return std::exchange(again_, false);
}

void Reload::drop_next(const ReloadResult &result) {
  again_ = false;
  for (auto &done : std::exchange(asked_, {})) done(result);
}

uint64_t Reload::elapsed_ms() const { return monotonic_ms() - started_ms_; }

const char *Reload::phase_name() const {
  switch (phase_) {
    case Phase::none:
      return "none";
    case Phase::in_progress:
      return "in_progress";
    case Phase::done:
      return "done";
    case Phase::failed:
      return "failed";
  }
  return "none";
}

}  // namespace valve
