#include "context.hpp"

#include "error_reports.hpp"
#include "util.hpp"

namespace valve {

Deferred::~Deferred() { close(); }

void Deferred::start() {
  check_ = new_handle<uv_check_t>(this);
  idle_ = new_handle<uv_idle_t>(this);
  uv_check_init(loop_, check_);
  uv_idle_init(loop_, idle_);
  uv_check_start(check_, [](uv_check_t *h) {
    if (auto *self = static_cast<Deferred *>(h->data)) self->run();
  });
}

void Deferred::close() {
  if (check_) close_handle(check_);
  if (idle_) close_handle(idle_);
}

void Deferred::post(std::function<void()> fn, const void *owner) {
  calls_.push_back({owner, std::move(fn)});
  // An active idle handle keeps the loop from blocking in poll, so the check handle runs soon.
  if (idle_ && !uv_is_active(reinterpret_cast<uv_handle_t *>(idle_)))
    uv_idle_start(idle_, [](uv_idle_t *) {});
}

void Deferred::cancel(const void *owner) {
  if (!owner) return;
  for (auto *calls : {&calls_, running_}) {
    if (!calls) continue;
    for (Call &c : *calls) {
      if (c.owner == owner) c.fn = nullptr;
    }
  }
}

void Deferred::run() {
  while (!calls_.empty()) {
    std::vector<Call> now;
    now.swap(calls_);
    running_ = &now;
    for (Call &c : now) {
      if (!c.fn) continue;
      auto fn = std::move(c.fn);
      c.fn = nullptr;
      fn();
    }
    running_ = nullptr;
  }
  if (idle_) uv_idle_stop(idle_);
}

Context::Context(uv_loop_t *loop, const Config &config, Logger log, EventSink events,
                 void *events_data)
    : loop_(loop),
      config_(config),
      log_(log),
      errors_(std::make_unique<ErrorReports>()),
      deferred_(loop),
      events_(events),
      events_data_(events_data) {
  stats_.started_unix_ms = static_cast<uint64_t>(unix_ms());
}

Context::~Context() = default;

void Context::emit(const std::string &event_json) const {
  if (events_) events_(events_data_, event_json.c_str());
}

}  // namespace valve
