// The inbox through which other threads hand work to the loop thread.
#pragma once

#include <uv.h>

#include <deque>
#include <functional>
#include <mutex>

namespace valve {

class Inbox {
 public:
  explicit Inbox(uv_loop_t *loop);
  ~Inbox();
  Inbox(const Inbox &) = delete;
  Inbox &operator=(const Inbox &) = delete;

  // Queues fn to run on the loop thread; false once the inbox is closed. Wakes the loop only when
  // the queue goes from empty to non-empty: the loop drains everything, since sends merge.
  bool post(std::function<void()> fn);
  // Loop thread only: stop accepting work and release the async handle.
  void close();

 private:
  void drain();

  uv_async_t *async_;
  std::mutex mutex_;
  std::deque<std::function<void()>> queue_;
  bool open_ = true;
};

}  // namespace valve
