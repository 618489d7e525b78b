// libFuzzer harness for the worker's answer: a real valve server (through the C ABI, with a config
// file of two apps, one mounted at /a with its prefix stripped, the other at /) proxies one or two
// requests of a kind the input chooses to fake workers, which answer with the input's bytes,
// written in pieces at the input's split points; a client, slow when the input says so, reads
// valve's answers and checks them.
//
// Why the whole path rather than HttpParser alone: llhttp (under valve's parser) is fuzzed
// upstream, and what valve does with an answer lives in UpstreamConn and Proxy, which need a
// server, a loop, a pool and a client connection: the framing decisions, the head rebuilt with
// hop-by-hop headers dropped, HEAD/204/304, interim answers, the 101 switch to a tunnel, the
// hold-back of a retryable answer (released by size, by time or at its end), the zero-copy write
// from the read buffer when the client keeps up and the copy when it lags, and the reuse of a
// worker's connection for the next answer. Bugs there are only reachable this way, and every
// answer can be checked where it counts, at the client. This costs speed (hundreds of inputs a
// second, not tens of thousands), which the input format makes up for: the request kinds and
// the split points are a few bytes, so the fuzzer spends its time on the answers' bytes.
//
// Input: byte 0 and byte 1 choose the requests and behaviours, the rest is the workers' answers.
//   byte 0, bits 0-2: the first request's kind (see Kind); bit 3: it goes to app a (else b);
//           bits 4-6: the second request's kind; bit 7: it goes to app a.
//   byte 1, bit 0: a second request on the same connection; bit 1: pipelined (sent at once, not
//           after the first answer); bit 2: the workers keep their connections open after an
//           answer but the input's last (else they close them after each); bit 3: a slow client (a
//           small receive buffer, read in small pieces); bit 4: after a 101 the client sends a
//           WebSocket frame.
//   The answers: "\xf6\xf6" separates the answer to each proxied request, in the order valve
//   sends them (a retry gets the next one; none left: the worker closes the connection). Within
//   an answer, "\xf5\xf5" is a split point (a separate write after 0.3 ms), "\xf7\xf7" one after
//   120 ms (past valve's 100 ms hold-back; two per input at most, later ones are short), and
//   "\xf4\xf4" followed by a byte N stands for N * 512 bytes of "x" (bodies past the hold-back's
//   64 KiB and the sockets' buffers).
//
// Fails (abort) on a crash or sanitizer report, and when the client sees:
//   - no end within 10 s (valve neither answered nor closed);
//   - an answer that does not parse (with valve's own parser, strict: llhttp plus token header
//     names and no obs-fold), whose status line is not HTTP/1.1 or whose status is not three
//     digits;
//   - an answer with no request left to answer (two answers for one request, or bytes after a
//     HEAD answer's head or after a 204/304's), or any answer after one that said it closes;
//   - an interim answer other than valve's own 100 Continue to a request that expected it, or a
//     101 to a request that asked for no WebSocket;
//   - in a final answer: a hop-by-hop header other than valve's one Connection and, for an
//     HTTP/1.1 client, Transfer-Encoding: chunked (then with no Content-Length); no X-Request-Id;
//     not exactly one Valve-App naming the app the request was routed to; a Content-Length in a
//     204 (RFC 9110 8.6: a client's llhttp would wait for that body).
// and when valve still has an exchange or a client connection 5 s after the client and the workers
// closed theirs (a leak).
//
// Workers are `sleep` processes whose Unix sockets this harness binds when valve reports them
// launched, as in fuzz_request.cpp; valve's probes (no X-Forwarded-For) get a plain 200.
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <valve/valve.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "http.hpp"
#include "util.hpp"

#include "fuzz_support.hpp"

const char *const fuzz::kName = "fuzz_response";

namespace {

using fuzz::die;
using fuzz::LogRing;
using fuzz::now_ms;
using fuzz::set;
using fuzz::wait_for;
using fuzz::write_all;

constexpr int kAnswerDeadlineMs = 10000;
constexpr int kQuietDeadlineMs = 5000;
constexpr std::string_view kReadyAnswer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
constexpr int kShortPauseUs = 300;
constexpr int kLongPauseUs = 120000;
constexpr int kMaxLongPauses = 2;
constexpr size_t kFillUnit = 512;

void pause_us(int us) {
  if (us > 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
}

// One answer of a worker: pieces written one after the other, each after its pause.
struct Piece {
  std::string bytes;
  int pause_us = 0;
};
using Answer = std::vector<Piece>;

std::vector<Answer> parse_answers(std::string_view in) {
  std::vector<Answer> answers(1, Answer(1));
  int long_pauses = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    auto c = static_cast<unsigned char>(in[i]);
    if (c < 0xf4 || c > 0xf7 || i + 1 == in.size() || in[i + 1] != in[i]) {
      answers.back().back().bytes += in[i];
      continue;
    }
    ++i;
    if (c == 0xf6) {
      answers.push_back(Answer(1));
    } else if (c == 0xf5) {
      answers.back().push_back({{}, kShortPauseUs});
    } else if (c == 0xf7) {
      answers.back().push_back({{}, long_pauses++ < kMaxLongPauses ? kLongPauseUs : kShortPauseUs});
    } else if (i + 1 < in.size()) {  // 0xf4: filler
      answers.back().back().bytes.append(static_cast<unsigned char>(in[++i]) * kFillUnit, 'x');
    }
  }
  return answers;
}

// The fake workers: one thread polls every worker socket and every connection valve opened.
// A connection whose first request is a probe gets a plain 200 and is closed; on one whose first
// request was proxied, each proxied request gets the next of the input's answers.
class FakeWorkers {
 public:
  FakeWorkers() {
    if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) die("pipe2");
    thread_ = std::thread([this] { serve(); });
    thread_.detach();  // lives as long as the process
  }

  void set_input(std::vector<Answer> answers, bool keep_open) {
    std::lock_guard lock(mutex_);
    answers_ = std::move(answers);
    next_ = 0;
    keep_open_ = keep_open;
  }

  // Closes every connection valve made to the workers (the end of an input), and waits for it.
  void close_connections() {
    std::unique_lock lock(mutex_);
    uint64_t asked = ++resets_asked_;
    wake();
    done_.wait(lock, [&] { return resets_done_ >= asked; });
  }

  // Called from valve's event callback: a worker was launched, or has exited.
  void on_event(std::string_view json, const std::string &runtime_dir) {
    std::optional<fuzz::WorkerEvent> event = fuzz::worker_event(json, runtime_dir);
    if (!event) return;
    std::lock_guard lock(mutex_);
    if (event->launched) {
      listeners_[event->id] = fuzz::listen_unix(event->path);
    } else if (auto it = listeners_.find(event->id); it != listeners_.end()) {
      closing_.push_back(it->second);
      listeners_.erase(it);
    }
    wake();
  }

  std::string state() const {
    return "proxied requests this input: " + std::to_string(proxied_.load()) +
           "; connections open: " + std::to_string(open_.load());
  }

 private:
  enum class Role { unknown, probe, proxied };
  struct Conn {
    int fd;
    std::string in;
    size_t scanned = 0;
    Role role = Role::unknown;
  };

  void wake() {
    char one = 1;
    (void)!write(wake_[1], &one, 1);
  }

  void serve() {
    std::vector<Conn> conns;
    for (;;) {
      std::vector<pollfd> fds{{wake_[0], POLLIN, 0}};
      size_t listeners = 0;
      {
        std::lock_guard lock(mutex_);
        for (int fd : closing_) close(fd);
        closing_.clear();
        for (auto [id, fd] : listeners_) fds.push_back({fd, POLLIN, 0});
        listeners = listeners_.size();
        if (resets_done_ < resets_asked_) {
          for (Conn &c : conns) close(c.fd);
          conns.clear();
          resets_done_ = resets_asked_;
          proxied_ = 0;
          done_.notify_all();
        }
      }
      for (const Conn &c : conns) fds.push_back({c.fd, POLLIN, 0});
      open_ = conns.size();
      if (poll(fds.data(), fds.size(), -1) < 0) continue;
      if (fds[0].revents) {
        char buf[64];
        while (read(wake_[0], buf, sizeof buf) > 0) {
        }
      }
      // Connections first (their indexes shift as accepted ones are added and closed ones go).
      std::vector<Conn> kept;
      for (size_t i = 0; i < conns.size(); ++i) {
        if (fds[1 + listeners + i].revents == 0 || serve_conn(conns[i])) {
          kept.push_back(std::move(conns[i]));
        } else {
          close(conns[i].fd);
        }
      }
      conns = std::move(kept);
      for (size_t i = 1; i <= listeners; ++i) {
        if (!(fds[i].revents & POLLIN)) continue;
        int fd = accept4(fds[i].fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0) conns.push_back(Conn{fd, {}, 0, Role::unknown});
      }
    }
  }

  // Reads what valve sent on c and answers each request in it; false to close c.
  bool serve_conn(Conn &c) {
    char buf[16384];
    ssize_t n = recv(c.fd, buf, sizeof buf, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
    if (n <= 0) return false;
    c.in.append(buf, static_cast<size_t>(n));
    for (;;) {
      size_t end = c.in.find("\r\n\r\n", c.scanned);
      if (end == std::string::npos) break;
      std::string_view head(c.in.data() + c.scanned, end + 4 - c.scanned);
      c.scanned = end + 4;
      // valve adds X-Forwarded-For to every request it proxies; its probes carry none. What
      // else ends in a blank line is a chunked body's end, skipped.
      bool proxied = head.find("\r\nX-Forwarded-For: ") != std::string_view::npos;
      if (c.role == Role::unknown) c.role = proxied ? Role::proxied : Role::probe;
      if (c.role == Role::probe) {
        write_all(c.fd, kReadyAnswer, now_ms() + 2000);
        return false;
      }
      if (!proxied) continue;
      Answer answer;
      bool keep_open;
      {
        std::lock_guard lock(mutex_);
        size_t i = proxied_++;
        if (i >= answers_.size()) return false;
        answer = answers_[i];
        // The last answer ends with the connection's close, so a close-delimited or cut-short
        // one does not wait out valve's timeout.
        keep_open = keep_open_ && i + 1 < answers_.size();
      }
      int64_t deadline = now_ms() + 3000;
      for (const Piece &p : answer) {
        pause_us(p.pause_us);
        if (!write_all(c.fd, p.bytes, deadline)) return false;
      }
      if (!keep_open) return false;
    }
    if (c.scanned > 65536) {
      c.in.erase(0, c.scanned);
      c.scanned = 0;
    }
    return true;
  }

  std::mutex mutex_;
  std::condition_variable done_;
  std::vector<Answer> answers_;
  size_t next_ = 0;
  bool keep_open_ = false;
  std::atomic<size_t> proxied_{0};
  std::atomic<size_t> open_{0};
  uint64_t resets_asked_ = 0;
  uint64_t resets_done_ = 0;
  std::map<long, int> listeners_;
  std::vector<int> closing_;
  int wake_[2] = {-1, -1};
  std::thread thread_;
};

struct Harness {
  std::string runtime_dir;
  FakeWorkers workers;
  LogRing log;
  valve_server_t *server = nullptr;
  uint16_t port = 0;
};

Harness *harness = nullptr;

Harness *start() {
  auto *h = new Harness;
  h->runtime_dir = fuzz::private_tmpdir("response") + "/runtime";
  if (mkdir(h->runtime_dir.c_str(), 0700) != 0) die("mkdir", h->runtime_dir);
  // Two apps: a, mounted at /a with its prefix stripped, and b at every other path; two workers
  // each, so a retry has another to go to (in a pool of one, the same worker takes it again).
  std::string toml = R"(port = 0
host = "127.0.0.1"
cmd = "exec sleep 100000 # {socket}"
runtime-dir = "RUNTIME"
allow-root = true
timeout = "500ms"
queue-timeout = 1
startup-timeout = 5
header-timeout = 2
keepalive-timeout = 2
max-body-size = "64k"
graceful-timeout = 1
kill-timeout = 1

[apps.a]
prefix = "/a"
strip-prefix = true
n-min = 2
n-max = 2

[apps.b]
prefix = "/"
n-min = 2
n-max = 2
)";
  toml.replace(toml.find("RUNTIME"), 7, h->runtime_dir);
  std::string path = h->runtime_dir + "/valve.toml";
  FILE *f = std::fopen(path.c_str(), "w");
  if (!f || std::fwrite(toml.data(), 1, toml.size(), f) != toml.size() || std::fclose(f) != 0)
    die("cannot write the config file", path);
  valve_config_t *cfg = nullptr;
  if (valve_config_new(&cfg) != 0) die("valve_config_new");
  set(cfg, "config", path.c_str());
  h->server = fuzz::start_server(
      cfg, h->log,
      [](void *data, const char *json) {
        auto *self = static_cast<Harness *>(data);
        self->workers.on_event(json, self->runtime_dir);
      },
      h, &h->port);
  return h;
}

std::string status_json() {
  char *status = nullptr;
  valve_server_status(harness->server, &status);
  std::string out = status ? status : "(none)";
  valve_free(status);
  return out;
}

// The number after "key": in valve's status (its first occurrence: the server's own, before the
// apps' and workers'), or -1.
long status_number(const std::string &json, std::string_view key) {
  size_t at = json.find(std::string("\"") + std::string(key) + "\":");
  return at == std::string::npos ? -1
                                 : std::strtol(json.c_str() + at + key.size() + 3, nullptr, 10);
}

enum Kind : uint8_t {
  kGet,          // GET, HTTP/1.1
  kHead,         // HEAD, HTTP/1.1
  kPostLength,   // POST with a Content-Length body
  kPostChunked,  // POST with a chunked body and Expect: 100-continue
  kWebSocket,    // a WebSocket handshake
  kGet10,        // GET, HTTP/1.0 (the answer is close-delimited when its length is unknown)
  kHead10,       // HEAD, HTTP/1.0, with Connection: keep-alive
  kDelete,       // DELETE with its own X-Request-Id (not retryable)
};

constexpr const char *kKindNames[] = {"GET",       "HEAD",         "POST",          "chunked POST",
                                      "WebSocket", "HTTP/1.0 GET", "HTTP/1.0 HEAD", "DELETE"};

struct Request {
  Kind kind;
  bool app_a;
  std::string bytes;
  bool head() const { return kind == kHead || kind == kHead10; }
  bool http10() const { return kind == kGet10 || kind == kHead10; }
  const char *app() const { return app_a ? "a" : "b"; }
};

Request make_request(uint8_t bits, size_t index) {
  Request r{static_cast<Kind>(bits & 7), (bits & 8) != 0, {}};
  std::string path = std::string(r.app_a ? "/a/x" : "/b/y") + "?n=" + std::to_string(index);
  std::string host = "Host: fuzz.test\r\n";
  switch (r.kind) {
    case kGet:
      r.bytes = "GET " + path + " HTTP/1.1\r\n" + host + "\r\n";
      break;
    case kHead:
      r.bytes = "HEAD " + path + " HTTP/1.1\r\n" + host + "\r\n";
      break;
    case kPostLength:
      r.bytes = "POST " + path + " HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello";
      break;
    case kPostChunked:
      r.bytes = "POST " + path + " HTTP/1.1\r\n" + host +
                "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
      break;
    case kWebSocket:
      r.bytes = "GET " + path + " HTTP/1.1\r\n" + host +
                "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
      break;
    case kGet10:
      r.bytes = "GET " + path + " HTTP/1.0\r\n\r\n";
      break;
    case kHead10:
      r.bytes = "HEAD " + path + " HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
      break;
    case kDelete:
      r.bytes = "DELETE " + path + " HTTP/1.1\r\n" + host + "X-Request-Id: fuzz-" +
                std::to_string(index) + "\r\n\r\n";
      break;
  }
  return r;
}

// A masked WebSocket text frame, "hi".
constexpr std::string_view kClientFrame{"\x81\x82\x01\x02\x03\x04\x69\x6b", 8};

// Reads valve's answers with valve's own (strict) response parser and checks each.
class Checker final : public valve::HttpParser::Handler {
 public:
  explicit Checker(const std::vector<Request> &requests)
      : requests_(requests), parser_(HTTP_RESPONSE, *this, 1 << 20) {}

  // Parses bytes from valve; after a 101 the rest is the tunnel's, not parsed.
  void feed(const char *data, size_t len) {
    if (upgraded_ || !failure_.empty() || len == 0) return;
    size_t consumed = 0;
    llhttp_errno_t err = parser_.execute(data, len, &consumed);
    if (!failure_.empty()) return;
    if (err == HPE_PAUSED_UPGRADE) {
      upgraded_ = true;
    } else if (err != HPE_OK) {
      fail(
          fmt::format("valve's answer does not parse ({}), after {} whole answers, the last to a "
                      "{} request",
                      parser_.error_reason(), answered_,
                      answered_ ? kKindNames[requests_[answered_ - 1].kind] : "(none)"));
    }
  }

  // valve closed the connection: ends a close-delimited answer. One cut short is allowed (that is
  // how valve tells a client that the worker failed mid-answer).
  void eof() {
    if (upgraded_ || !failure_.empty() || !parser_.in_message()) return;
    if (parser_.message_needs_eof()) parser_.finish();
  }

  int on_head(valve::Head &h) override {
    if (closing_) return fail("an answer after one that said the connection closes");
    if (answered_ >= requests_.size()) return fail("an answer with no request left to answer");
    const Request &r = requests_[answered_];
    if (h.version_major != 1 || h.version_minor != 1)
      return fail("an answer whose status line is not HTTP/1.1");
    status_ = h.status;
    if (h.status < 100 || h.status > 999)
      return fail("a status that is not three digits: " + std::to_string(h.status));
    if (h.status == 101) {
      if (r.kind != kWebSocket) return fail("a 101 to a request that asked for no WebSocket");
      return 0;
    }
    if (h.status < 200) {
      if (h.status != 100 || r.kind != kPostChunked || continued_)
        return fail("an interim answer valve should not send: " + std::to_string(h.status));
      continued_ = true;
      return 0;
    }
    size_t connection = 0, transfer_encoding = 0, content_length = 0, apps = 0, ids = 0;
    for (const valve::Header &hd : h.headers) {
      std::string_view name = hd.name;
      if (valve::iequals(name, "connection")) {
        ++connection;
        if (!valve::iequals(hd.value, "close") && !valve::iequals(hd.value, "keep-alive"))
          return fail("a Connection header that is not valve's: " + hd.value);
      } else if (valve::iequals(name, "transfer-encoding")) {
        ++transfer_encoding;
        if (hd.value != "chunked")
          return fail("a Transfer-Encoding that is not valve's: " + hd.value);
      } else if (valve::is_hop_by_hop(name)) {
        return fail("a hop-by-hop header passed on: " + hd.name);
      }
      content_length += valve::iequals(name, "content-length");
      apps += valve::iequals(name, "valve-app");
      ids += valve::iequals(name, "x-request-id");
      if (valve::iequals(name, "valve-app") && hd.value != r.app())
        return fail("Valve-App: " + hd.value + " for a request routed to app " + r.app());
    }
    if (connection > 1) return fail("more than one Connection header");
    if (transfer_encoding > 1) return fail("more than one Transfer-Encoding header");
    if (transfer_encoding && r.http10())
      return fail("Transfer-Encoding in an answer to an HTTP/1.0 request");
    if (transfer_encoding && content_length)
      return fail("both Transfer-Encoding and Content-Length");
    if (apps != 1) return fail("not exactly one Valve-App header: " + std::to_string(apps));
    if (ids == 0) return fail("no X-Request-Id");
    if (content_length && h.status == 204)
      return fail("Content-Length in a 204 answer (RFC 9110 8.6)");
    closing_after_ = !h.keep_alive;
    // No body after a HEAD answer's head, nor after a 204's or a 304's whatever their headers
    // say (RFC 9112 6.3; llhttp alone would read a 304's Content-Length as a body to come).
    return r.head() || h.status == 204 || h.status == 304 ? 1 : 0;
  }

  int on_body(std::string_view) override { return 0; }

  int on_complete() override {
    if (status_ >= 200 || status_ == 101) {
      ++answered_;
      if (closing_after_) closing_ = true;
      closing_after_ = false;
      continued_ = false;
    }
    status_ = 0;
    return 0;
  }

  size_t answered() const { return answered_; }
  bool upgraded() const { return upgraded_; }
  // valve said it closes the connection after its last answer.
  bool closing() const { return closing_; }
  const std::string &failure() const { return failure_; }

 private:
  int fail(std::string why) {
    if (failure_.empty()) failure_ = std::move(why);
    return -1;
  }

  const std::vector<Request> &requests_;
  valve::HttpParser parser_;
  size_t answered_ = 0;
  int status_ = 0;
  bool continued_ = false;
  bool closing_after_ = false;
  bool closing_ = false;
  bool upgraded_ = false;
  std::string failure_;
};

std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s.substr(0, 2000)) {
    if (c == '\n') {
      out += "\\n\n    ";
    } else if (c >= 32 && c < 127) {
      out += static_cast<char>(c);
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  harness = start();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return -1;  // not an input of this format: keep it out of the corpus
  uint8_t plan = data[0], flags = data[1];
  std::vector<Request> requests{make_request(plan & 0x0f, 1)};
  if (flags & 1) requests.push_back(make_request(plan >> 4, 2));
  bool pipelined = (flags & 2) != 0;
  bool keep_open = (flags & 4) != 0;
  bool slow = (flags & 8) != 0;
  bool frame = (flags & 16) != 0;
  harness->workers.set_input(
      parse_answers(std::string_view(reinterpret_cast<const char *>(data) + 2, size - 2)),
      keep_open);

  int fd = fuzz::connect_loopback(harness->port, slow ? 2048 : 0);

  Checker checker(requests);
  std::string received;
  int64_t deadline = now_ms() + kAnswerDeadlineMs;
  size_t sent = 0;
  bool shut = false, ended = false;
  // A failed write means valve closed the connection: what it sent is still read and checked.
  auto send_next = [&] { write_all(fd, requests[sent++].bytes, deadline); };
  send_next();
  if (pipelined) {
    while (sent < requests.size()) send_next();
  }
  char buf[16384];
  while (!ended) {
    if (!shut && !checker.upgraded() && !checker.closing() && checker.answered() == sent &&
        sent < requests.size())
      send_next();
    if (!shut &&
        (checker.upgraded() || checker.closing() || checker.answered() == requests.size())) {
      if (checker.upgraded() && frame) write_all(fd, kClientFrame, deadline);
      shutdown(fd, SHUT_WR);
      shut = true;
    }
    if (!wait_for(fd, POLLIN, deadline)) break;
    ssize_t n = recv(fd, buf, slow ? 700 : sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      checker.eof();
      ended = true;
    } else {
      if (received.size() < (1u << 20)) received.append(buf, static_cast<size_t>(n));
      checker.feed(buf, static_cast<size_t>(n));
      if (slow) pause_us(100);
    }
    if (!checker.failure().empty()) {
      die(checker.failure().c_str(), "what valve sent:\n    " + printable(received) +
                                         "\nits last log lines:\n" + harness->log.dump());
    }
  }
  close(fd);
  if (!ended) {
    die("valve neither answered nor closed the connection within 10 s",
        "what it sent:\n    " + printable(received) + "\nits last log lines:\n" +
            harness->log.dump() + "its status: " + status_json() +
            "\nthe fake workers: " + harness->workers.state());
  }

  // The end of the input: the workers close their connections, and valve must then let go of
  // every exchange and client connection.
  harness->workers.close_connections();
  int64_t quiet_deadline = now_ms() + kQuietDeadlineMs;
  for (;;) {
    std::string status = status_json();
    if (status_number(status, "requests_in_progress") == 0 &&
        status_number(status, "connections") == 0)
      break;
    if (now_ms() > quiet_deadline)
      die("valve still has requests in progress or client connections 5 s after the client and the "
          "workers "
          "closed theirs",
          "its status: " + status + "\nits last log lines:\n" + harness->log.dump());
    pause_us(200);
  }
  return 0;
}
