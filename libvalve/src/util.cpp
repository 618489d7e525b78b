#include "util.hpp"

#include <fmt/format.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cctype>
#include <ctime>
#include <random>

namespace valve {

Timer::Timer(uv_loop_t *loop, std::function<void()> cb) : loop_(loop), cb_(std::move(cb)) {}

Timer::~Timer() { close_handle(handle_); }

void Timer::start(double seconds, double repeat_seconds) {
  auto ms = [](double s) { return s <= 0 ? uint64_t{0} : static_cast<uint64_t>(s * 1000.0 + 0.5); };
  uint64_t repeat = repeat_seconds > 0 ? std::max<uint64_t>(1, ms(repeat_seconds)) : 0;
  if (!handle_) {
    handle_ = new_handle<uv_timer_t>(this);
    uv_timer_init(loop_, handle_);
  }
  uv_timer_start(
      handle_,
      [](uv_timer_t *t) {
        if (auto *self = static_cast<Timer *>(t->data)) self->cb_();
      },
      ms(seconds), repeat);
}

void Timer::stop() {
  if (handle_) uv_timer_stop(handle_);
}

bool Timer::active() const {
  return handle_ && uv_is_active(reinterpret_cast<const uv_handle_t *>(handle_));
}

namespace {
struct ConnectReq {
  uv_connect_t req;
  WorkerStream::ConnectDone done;
};

void on_connected(uv_connect_t *r, int status) {
  auto *req = reinterpret_cast<ConnectReq *>(r);
  void *owner = r->handle->data;
  WorkerStream::ConnectDone done = req->done;
  delete req;
  if (owner) done(owner, status);
}
}  // namespace

int WorkerStream::connect(uv_loop_t *loop, void *owner, const std::string &socket_path, int port,
                          ConnectDone done) {
  close();
  auto *req = new ConnectReq{{}, done};
  if (!socket_path.empty()) {
    pipe_ = new_handle<uv_pipe_t>(owner);
    uv_pipe_init(loop, pipe_, 0);
    uv_pipe_connect(&req->req, pipe_, socket_path.c_str(), on_connected);
    return 0;
  }
  tcp_ = new_handle<uv_tcp_t>(owner);
  uv_tcp_init(loop, tcp_);
  uv_tcp_nodelay(tcp_, 1);
  sockaddr_in addr{};
  uv_ip4_addr("127.0.0.1", port, &addr);
  int rc = uv_tcp_connect(&req->req, tcp_, reinterpret_cast<const sockaddr *>(&addr), on_connected);
  if (rc != 0) delete req;
  return rc;
}

uv_stream_t *WorkerStream::get() const {
  return pipe_ ? reinterpret_cast<uv_stream_t *>(pipe_) : reinterpret_cast<uv_stream_t *>(tcp_);
}

void WorkerStream::quickack() const {
  uv_os_fd_t fd;
  if (!tcp_ || uv_fileno(reinterpret_cast<const uv_handle_t *>(tcp_), &fd) != 0) return;
  int on = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &on, sizeof on);
}

void WorkerStream::close() {
  if (pipe_) close_handle(pipe_);
  if (tcp_) close_handle(tcp_);
}

namespace {
struct WriteReq {
  uv_write_t req;
  std::string data;
  WriteDone done;
};
}  // namespace

int write_string(uv_stream_t *stream, std::string data, WriteDone done) {
  if (data.empty()) return 0;
  auto *w = new WriteReq{{}, std::move(data), done};
  uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
  int rc = uv_write(&w->req, stream, &buf, 1, [](uv_write_t *req, int status) {
    auto *wr = reinterpret_cast<WriteReq *>(req);
    WriteDone cb = wr->done;
    uv_stream_t *s = req->handle;
    delete wr;
    if (cb && s->data) cb(s, status);
  });
  if (rc != 0) delete w;
  return rc;
}

int write_now(uv_stream_t *stream, std::initializer_list<std::string_view> pieces, WriteDone done) {
  uv_buf_t bufs[4];
  unsigned n = 0;
  size_t total = 0;
  for (std::string_view p : pieces) {
    if (p.empty()) continue;
    if (n == std::size(bufs)) return UV_EINVAL;
    bufs[n++] = uv_buf_init(const_cast<char *>(p.data()), static_cast<unsigned>(p.size()));
    total += p.size();
  }
  if (total == 0) return 0;
  // uv_write would make a request, and its completion an epoll_ctl call, for every write.
  int sent = uv_try_write(stream, bufs, n);
  if (sent < 0) sent = 0;  // EAGAIN (or an error, which the queued write reports as before)
  if (static_cast<size_t>(sent) == total) return 0;
  std::string rest;
  rest.reserve(total - static_cast<size_t>(sent));
  size_t skip = static_cast<size_t>(sent);
  for (unsigned i = 0; i < n; ++i) {
    if (skip >= bufs[i].len) {
      skip -= bufs[i].len;
      continue;
    }
    rest.append(bufs[i].base + skip, bufs[i].len - skip);
    skip = 0;
  }
  return write_string(stream, std::move(rest), done);
}

size_t write_queue_size(const uv_stream_t *stream) {
  return uv_stream_get_write_queue_size(stream);
}

void alloc_read_buffer(uv_handle_t *handle, size_t, uv_buf_t *buf) {
  static thread_local char storage[64 * 1024];
  (void)handle;
  *buf = uv_buf_init(storage, sizeof storage);
}

uint64_t monotonic_ms() { return uv_hrtime() / 1000000u; }

int64_t unix_ms() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

std::string format_utc(int64_t ms) {
  // Every access-log line asks for the time: the date and time to the second are formatted once
  // per second (per thread), and only the milliseconds each call.
  thread_local int64_t cached_secs = -1;
  thread_local char cached[24];  // "2026-11-23T10:00:00."
  if (ms < 0) ms = 0;  // before 1970: never a time valve reads
  int64_t secs = ms / 1000;
  if (secs != cached_secs) {
    time_t t = static_cast<time_t>(secs);
    tm parts{};
    gmtime_r(&t, &parts);
    auto end = fmt::format_to_n(cached, sizeof cached - 1, "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
                                parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
                                parts.tm_hour, parts.tm_min, parts.tm_sec);
    *end.out = '\0';
    cached_secs = secs;
  }
  int frac = static_cast<int>(ms % 1000);
  std::string out(cached);
  out += static_cast<char>('0' + frac / 100);
  out += static_cast<char>('0' + frac / 10 % 10);
  out += static_cast<char>('0' + frac % 10);
  out += 'Z';
  return out;
}

std::string escape_for_log(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c <= ' ' || c == '"' || c == '\\' || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s) {
    if (std::isalnum(c) ||
        std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos)
      continue;
    return false;
  }
  return true;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  // ASCII only, as HTTP's names and tokens are: no locale lookup per byte (a profiled hot spot),
  // and no locale an embedding program set can make other bytes equal.
  auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + ('a' - 'A')) : c; };
  for (size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::string random_hex(size_t bytes) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  // Digits by hand: every request gets an id, and two fmt::format calls cost it 2,000
  // instructions (callgrind), a twentieth of all valve spends on a 503.
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(bytes * 2, '0');
  uint64_t word = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (i % 16 == 0) word = rng();
    out[i] = kDigits[(word >> (60 - 4 * (i % 16))) & 0xf];
  }
  return out;
}

std::string format_seconds(double s) { return fmt::format("{}", s); }  // shortest round trip

std::string uv_message(int err) {
  return fmt::format("{} ({})", uv_strerror(err), uv_err_name(err));
}

bool is_loopback_ip(std::string_view ip) {
  char text[INET6_ADDRSTRLEN] = {};
  if (ip.size() >= sizeof text) return false;
  ip.copy(text, ip.size());
  in_addr v4{};
  if (inet_pton(AF_INET, text, &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (inet_pton(AF_INET6, text, &v6) != 1) return false;
  if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
  return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
}

}  // namespace valve
