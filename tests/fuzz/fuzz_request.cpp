// libFuzzer harness over valve's whole request path: a real server (through the C ABI) parses
// each input's client bytes, queues and proxies the request to a fake worker, and relays the fake
// worker's answer, which is the input's other part. So both of valve's parsers, its queue, its
// retries, passive health checks and worker replacement all see hostile bytes.
//
// Input: two bytes (little endian) give the length of the client's part; the client's bytes
// follow, then the worker's answer. Each input is one client connection: the bytes are written,
// the connection half-closed, and the answer read until valve closes it.
//
// Fails (abort) when valve crashes or trips a sanitizer, neither answers nor closes within 10 s,
// or answers something that is not an HTTP/1.1 status line.
//
// Workers are `sleep` processes whose Unix sockets this harness itself binds when valve reports
// them launched: valve supervises real processes while the answers stay in the harness's hands.
#include <fcntl.h>
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

#include "fuzz_support.hpp"

const char *const fuzz::kName = "fuzz_request";

namespace {

using fuzz::die;
using fuzz::LogRing;
using fuzz::now_ms;
using fuzz::set;
using fuzz::wait_for;
using fuzz::write_all;

constexpr int kAnswerDeadlineMs = 10000;
constexpr std::string_view kReadyAnswer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

// Reads until EOF or a reset; false if the deadline passed first.
bool read_to_end(int fd, std::string *out, int64_t deadline) {
  char buf[16384];
  for (;;) {
    if (!wait_for(fd, POLLIN, deadline)) return false;
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return true;
    if (out->size() < (1u << 20)) out->append(buf, static_cast<size_t>(n));
  }
}

// The fake workers: a thread that accepts on every worker socket and answers each connection
// once: a request valve proxied gets the current input's answer, anything else (valve's readiness
// and health probes) a plain 200. Then the connection is closed.
class FakeWorkers {
 public:
  FakeWorkers() {
    if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) die("pipe2");
    thread_ = std::thread([this] { serve(); });
    thread_.detach();  // lives as long as the process
  }

  void set_answer(std::string answer) {
    std::lock_guard lock(mutex_);
    answer_ = std::move(answer);
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
    char one = 1;
    (void)!write(wake_[1], &one, 1);
  }

  // What the thread is doing, for a failure report.
  std::string state() const {
    static const char *names[] = {"waiting for connections", "reading a request head",
                                  "writing an answer"};
    return std::string(names[phase_.load()]) + " for " +
           std::to_string(now_ms() - since_ms_.load()) +
           " ms; connections accepted: " + std::to_string(accepted_.load());
  }

 private:
  void serve() {
    for (;;) {
      std::vector<pollfd> fds{{wake_[0], POLLIN, 0}};
      {
        std::lock_guard lock(mutex_);
        for (int fd : closing_) close(fd);
        closing_.clear();
        for (auto [id, fd] : listeners_) fds.push_back({fd, POLLIN, 0});
      }
      if (poll(fds.data(), fds.size(), -1) < 0) continue;
      if (fds[0].revents) {
        char buf[64];
        while (read(wake_[0], buf, sizeof buf) > 0) {
        }
      }
      for (size_t i = 1; i < fds.size(); ++i) {
        if (!(fds[i].revents & POLLIN)) continue;
        int conn = accept4(fds[i].fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (conn >= 0) answer(conn);
      }
    }
  }

  void set_phase(int phase) {
    phase_ = phase;
    since_ms_ = now_ms();
  }

  void answer(int conn) {
    ++accepted_;
    set_phase(1);
    // Read the request head (what follows it, a body, is left unread).
    std::string head;
    char buf[4096];
    int64_t deadline = now_ms() + 2000;
    while (head.find("\r\n\r\n") == std::string::npos && head.size() < 65536) {
      if (!wait_for(conn, POLLIN, deadline)) break;
      ssize_t n = recv(conn, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      head.append(buf, static_cast<size_t>(n));
    }
    if (!head.empty()) {
      // valve adds X-Forwarded-For to every request it proxies; its probes carry none.
      bool proxied = head.find("\r\nX-Forwarded-For: ") != std::string::npos;
      std::string reply;
      if (proxied) {
        std::lock_guard lock(mutex_);
        reply = answer_;
      } else {
        reply = kReadyAnswer;
      }
      set_phase(2);
      write_all(conn, reply, now_ms() + 2000);
    }
    close(conn);
    set_phase(0);
  }

  std::atomic<int> phase_{0};
  std::atomic<int64_t> since_ms_{now_ms()};
  std::atomic<uint64_t> accepted_{0};
  std::mutex mutex_;
  std::string answer_{kReadyAnswer};
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
  h->runtime_dir = fuzz::private_tmpdir("request") + "/runtime";
  if (mkdir(h->runtime_dir.c_str(), 0700) != 0) die("mkdir", h->runtime_dir);
  valve_config_t *cfg = nullptr;
  if (valve_config_new(&cfg) != 0) die("valve_config_new");
  set(cfg, "port", "0");
  set(cfg, "cmd", "exec sleep 100000 # {socket}");
  set(cfg, "runtime-dir", h->runtime_dir.c_str());
  set(cfg, "allow-root", "true");  // the workers are `sleep`
  set(cfg, "n-min", "2");
  set(cfg, "n-max", "2");
  set(cfg, "timeout", "2");
  set(cfg, "queue-timeout", "2");
  set(cfg, "startup-timeout", "5");
  set(cfg, "header-timeout", "2");
  set(cfg, "keepalive-timeout", "2");
  set(cfg, "max-body-size", "64k");
  set(cfg, "graceful-timeout", "1");
  set(cfg, "kill-timeout", "1");
  h->server = fuzz::start_server(
      cfg, h->log,
      [](void *data, const char *json) {
        auto *self = static_cast<Harness *>(data);
        self->workers.on_event(json, self->runtime_dir);
      },
      h, &h->port);
  return h;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  harness = start();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return -1;  // not an input of this format: keep it out of the corpus
  size_t client_len = std::min<size_t>(data[0] | (data[1] << 8), size - 2);
  std::string_view client(reinterpret_cast<const char *>(data) + 2, client_len);
  std::string_view worker(reinterpret_cast<const char *>(data) + 2 + client_len,
                          size - 2 - client_len);
  harness->workers.set_answer(std::string(worker));
  static uint64_t inputs = 0;
  ++inputs;
  // The last inputs, written out with a failure (VALVE_FUZZ_HISTORY=DIR): replayed in order, they
  // reproduce a failure that depends on what came before.
  static std::array<std::string, 64> history;
  history[inputs % history.size()].assign(reinterpret_cast<const char *>(data), size);

  int fd = fuzz::connect_loopback(harness->port);
  int64_t deadline = now_ms() + kAnswerDeadlineMs;
  write_all(fd, client, deadline);
  shutdown(fd, SHUT_WR);
  std::string answer;
  bool ended = read_to_end(fd, &answer, deadline);
  close(fd);
  if (!ended) {
    char *status = nullptr;
    valve_server_status(harness->server, &status);
    std::string detail = std::string("its last log lines:\n") + harness->log.dump() +
                         "its status: " + (status ? status : "(none)") +
                         "\nthe fake workers' thread: " + harness->workers.state() +
                         "\nvalve's answer so far: " + std::to_string(answer.size()) +
                         " bytes; input number " + std::to_string(inputs);
    valve_free(status);
    if (const char *dir = std::getenv("VALVE_FUZZ_HISTORY")) {
      for (size_t i = 0; i < history.size(); ++i) {
        uint64_t n = inputs >= history.size() ? inputs - history.size() + 1 + i : i + 1;
        if (n > inputs) break;
        char name[64];
        std::snprintf(name, sizeof name, "/%06llu", static_cast<unsigned long long>(n));
        if (FILE *f = std::fopen((std::string(dir) + name).c_str(), "wb")) {
          const std::string &in = history[n % history.size()];
          std::fwrite(in.data(), 1, in.size(), f);
          std::fclose(f);
        }
      }
    }
    die("valve neither answered nor closed the connection within 10 s", detail);
  }
  if (!answer.empty() && !answer.starts_with("HTTP/1.1 "))
    die("valve's answer does not start with an HTTP/1.1 status line", answer.substr(0, 80));
  return 0;
}
