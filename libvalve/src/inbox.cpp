#include "inbox.hpp"

#include "util.hpp"

namespace valve {

Inbox::Inbox(uv_loop_t *loop) : async_(new_handle<uv_async_t>(this)) {
  uv_async_init(loop, async_, [](uv_async_t *a) {
    if (auto *self = static_cast<Inbox *>(a->data)) self->drain();
  });
}

Inbox::~Inbox() { close(); }

bool Inbox::post(std::function<void()> fn) {
  std::lock_guard lock(mutex_);
  if (!open_) return false;
  bool was_empty = queue_.empty();
  queue_.push_back(std::move(fn));
  if (was_empty) uv_async_send(async_);
  return true;
}

void Inbox::close() {
  {
    std::lock_guard lock(mutex_);
    if (!open_) return;
    open_ = false;
    queue_.clear();
  }
  close_handle(async_);
}

void Inbox::drain() {
  std::deque<std::function<void()>> work;
  {
    std::lock_guard lock(mutex_);
    work.swap(queue_);
  }
  for (auto &fn : work) fn();
}

}  // namespace valve
