// Small shared helpers: libuv handle ownership, timers, writes, strings.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>

namespace valve {

// Every libuv handle is heap-allocated and points at its owner through handle->data. The owner may
// be destroyed at once: close_handle() clears data (so late callbacks find no owner) and frees the
// handle in its close callback.
template <typename H>
H *new_handle(void *owner) {
  H *h = new H{};
  h->data = owner;
  return h;
}

template <typename H>
void close_handle(H *&h) {
  if (!h) return;
  auto *base = reinterpret_cast<uv_handle_t *>(h);
  base->data = nullptr;
  if (!uv_is_closing(base)) uv_close(base, [](uv_handle_t *x) { delete reinterpret_cast<H *>(x); });
  h = nullptr;
}

// A one-shot or repeating timer owned by one object; the callback never runs after destruction.
// Its libuv handle is made on the first start(): an object may own timers it seldom needs.
class Timer {
 public:
  Timer(uv_loop_t *loop, std::function<void()> cb);
  ~Timer();
  Timer(const Timer &) = delete;
  Timer &operator=(const Timer &) = delete;

  void start(double seconds, double repeat_seconds = 0);
  void stop();
  bool active() const;

 private:
  uv_loop_t *loop_;
  uv_timer_t *handle_ = nullptr;
  std::function<void()> cb_;
};

// Where a worker serves: a Unix socket, or 127.0.0.1:port when socket_path is empty.
struct WorkerAddress {
  std::string socket_path;
  int port = 0;
};

// A connection to a worker, over a Unix socket or loopback TCP, owned by one object. The handle
// is closed (and freed) by close() or the destructor; callbacks never outlive the owner.
class WorkerStream {
 public:
  using ConnectDone = void (*)(void *owner, int status);

  WorkerStream() = default;
  ~WorkerStream() { close(); }
  WorkerStream(const WorkerStream &) = delete;
  WorkerStream &operator=(const WorkerStream &) = delete;

  // Starts connecting to socket_path (when not empty) or to 127.0.0.1:port. done(owner, status)
  // runs once, unless the stream is closed first; an immediate failure is returned instead.
  int connect(uv_loop_t *loop, void *owner, const std::string &socket_path, int port,
              ConnectDone done);
  uv_stream_t *get() const;
  explicit operator bool() const { return pipe_ || tcp_; }
  // TCP only: acknowledge at once instead of delaying (re-armed after every read).
  void quickack() const;
  void close();

 private:
  uv_pipe_t *pipe_ = nullptr;
  uv_tcp_t *tcp_ = nullptr;
};

// Writes data to the stream. done(stream, status) runs when the write finished, unless the stream's
// owner is gone by then (handle->data is null).
using WriteDone = void (*)(uv_stream_t *stream, int status);

// Backpressure for every stream valve writes: past the high mark the source stops being read;
// below the low mark it is read again.
inline constexpr size_t kWriteHighWater = 256 * 1024;
inline constexpr size_t kWriteLowWater = 64 * 1024;
int write_string(uv_stream_t *stream, std::string data, WriteDone done = nullptr);
// The proxy's writes: the pieces (at most 4) go to the socket at once when nothing is queued before
// them, without a copy or a write request; only what the socket does not take is copied and queued
// with write_string (done then runs when it is written). Errors are reported as write_string does.
int write_now(uv_stream_t *stream, std::initializer_list<std::string_view> pieces,
              WriteDone done = nullptr);
size_t write_queue_size(const uv_stream_t *stream);

// One read buffer per loop: data is parsed before the next read, so it can be reused.
void alloc_read_buffer(uv_handle_t *handle, size_t suggested, uv_buf_t *buf);

uint64_t monotonic_ms();
int64_t unix_ms();  // wall-clock time
// A wall-clock time in UTC as 2026-11-23T10:00:00.123Z.
std::string format_utc(int64_t unix_ms);
// For a text log line: quotes, backslashes, spaces and control bytes as \xNN.
std::string escape_for_log(std::string_view s);
bool iequals(std::string_view a, std::string_view b);
// True for an HTTP token (RFC 9110 5.6.2: a method, a header name).
bool is_token(std::string_view s);
std::string_view trim(std::string_view s);
std::string random_hex(size_t bytes);

// An IP address (text, as uv_ip4_name/uv_ip6_name or a listen address write it) of this machine's
// loopback: 127.0.0.0/8, ::1, or 127.x mapped into IPv6 (::ffff:127.0.0.1).
bool is_loopback_ip(std::string_view ip);

// FNV-1a, 64 bits, over text's bytes, continuing from h (the offset basis, to start afresh).
inline constexpr uint64_t kFnv1aBasis = 0xcbf29ce484222325ull;
constexpr uint64_t fnv1a64(std::string_view text, uint64_t h = kFnv1aBasis) {
  for (unsigned char c : text) h = (h ^ c) * 0x100000001b3ull;
  return h;
}
std::string format_seconds(double s);
std::string uv_message(int err);  // "address already in use (EADDRINUSE)"

}  // namespace valve
