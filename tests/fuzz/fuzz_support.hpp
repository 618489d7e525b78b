// What both libFuzzer harnesses (fuzz_request.cpp, fuzz_response.cpp) need around a real valve
// server: deadlines, socket waits and writes that a signal does not cut short, valve's last log
// lines, config setters that abort with valve's message, and a TMPDIR of the harness's own.
#pragma once

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <valve/valve.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace fuzz {

// The harness's name in its messages ("fuzz_request", "fuzz_response"); each harness defines it.
extern const char *const kName;

[[noreturn]] inline void die(const char *what, const std::string &detail = {}) {
  std::fprintf(stderr, "%s: %s%s%s\n", kName, what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

// Makes ${TMPDIR:-/tmp}/valve-fuzz-NAME-XXXXXX and makes it this process's TMPDIR, so that valve's
// workers' temporary directories go there too; it is removed with all in it when the process
// exits (libFuzzer calls exit() at -max_total_time, with valve still serving: nothing else would).
inline std::string private_tmpdir(const char *name) {
  static std::string dir;
  const char *base = std::getenv("TMPDIR");
  std::string templ =
      std::string(base && *base ? base : "/tmp") + "/valve-fuzz-" + name + "-XXXXXX";
  if (!mkdtemp(templ.data())) die("mkdtemp", templ);
  dir = templ;
  setenv("TMPDIR", dir.c_str(), 1);
  std::atexit([] {
    std::string rm = "rm -rf '" + dir + "'";
    if (std::system(rm.c_str()) != 0)
      std::fprintf(stderr, "%s: cannot remove %s\n", kName, dir.c_str());
  });
  return dir;
}

inline int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

// Waits until fd is ready for `events` or the deadline passes. A signal (valve's SIGCHLD lands on
// any thread) does not end the wait early: an early end was once taken for a hang of valve's.
inline bool wait_for(int fd, short events, int64_t deadline) {
  for (;;) {
    int wait = static_cast<int>(deadline - now_ms());
    if (wait <= 0) return false;
    pollfd p{fd, events, 0};
    int r = poll(&p, 1, wait);
    if (r > 0) return true;
    if (r == 0 || errno != EINTR) return false;
  }
}

// Writes all of data; false when the peer stops reading or closes, or the deadline passes.
inline bool write_all(int fd, std::string_view data, int64_t deadline) {
  while (!data.empty()) {
    if (!wait_for(fd, POLLOUT, deadline)) return false;
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// A TCP connection to valve on loopback. A signal (valve's SIGCHLD) may interrupt connect(): the
// connection then completes on its own, and is waited for rather than taken for a failure.
inline int connect_loopback(uint16_t port, int receive_buffer = 0) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket", std::strerror(errno));
  if (receive_buffer > 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0) return fd;
  if (errno != EINTR) die("cannot connect to valve", std::strerror(errno));
  int error = 0;
  socklen_t len = sizeof error;
  if (!wait_for(fd, POLLOUT, now_ms() + 10000) ||
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0)
    die("cannot connect to valve", std::strerror(error ? error : ETIMEDOUT));
  return fd;
}

// valve's last log lines, shown when an input fails.
class LogRing {
 public:
  void add(const char *line) {
    std::lock_guard lock(mutex_);
    lines_[next_++ % lines_.size()] = line;
  }
  std::string dump() {
    std::lock_guard lock(mutex_);
    std::string out;
    for (size_t i = 0; i < lines_.size(); ++i) {
      const std::string &line = lines_[(next_ + i) % lines_.size()];
      if (!line.empty()) out += "  " + line + "\n";
    }
    return out;
  }

 private:
  std::mutex mutex_;
  std::array<std::string, 100> lines_;
  size_t next_ = 0;
};

inline void set(valve_config_t *cfg, const char *key, const char *value) {
  if (valve_config_set(cfg, key, value) != 0) die("valve_config_set", valve_config_last_error(cfg));
}

// A worker_launched or worker_exited event of valve's, for the harness's fake workers: the
// worker's id and the Unix socket path valve gave it in runtime_dir.
struct WorkerEvent {
  bool launched;
  long id;
  std::string path;
};

inline std::optional<WorkerEvent> worker_event(std::string_view json,
                                               const std::string &runtime_dir) {
  bool launched = json.find(R"("event":"worker_launched")") != std::string_view::npos;
  bool exited = json.find(R"("event":"worker_exited")") != std::string_view::npos;
  if (!launched && !exited) return std::nullopt;
  size_t at = json.find(R"("worker":)");
  if (at == std::string_view::npos) return std::nullopt;
  long id = std::strtol(json.data() + at + 9, nullptr, 10);
  return WorkerEvent{launched, id, runtime_dir + "/w" + std::to_string(id) + ".sock"};
}

// A listening Unix socket at path, where valve expects its worker.
inline int listen_unix(const std::string &path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0 ||
      listen(fd, 64) != 0)
    die("cannot listen on a worker socket", path);
  return fd;
}

// Starts a server from cfg (and frees cfg): valve's log goes to stderr with VALVE_FUZZ_LOG=1, and
// is otherwise kept in `log` to be shown with a failure; VALVE_FUZZ_ACCESS_LOG names an access log
// file. on_event gets valve's events (workers launched). Returns the server; *port is its port.
inline valve_server_t *start_server(valve_config_t *cfg, LogRing &log,
                                    void (*on_event)(void *, const char *), void *event_data,
                                    uint16_t *port) {
  bool show_log = std::getenv("VALVE_FUZZ_LOG") != nullptr;
  if (const char *path = std::getenv("VALVE_FUZZ_ACCESS_LOG")) set(cfg, "access-log", path);
  set(cfg, "log-level", show_log ? "debug" : "info");
  valve_config_set_log_callback(
      cfg,
      show_log ? [](void *, int, const char *line) { std::fprintf(stderr, "valve: %s\n", line); }
               : [](void *data, int, const char *line) { static_cast<LogRing *>(data)->add(line); },
      &log, nullptr);
  valve_config_set_event_callback(cfg, on_event, event_data, nullptr);
  valve_server_t *server = nullptr;
  if (valve_server_new(&server, cfg) != 0) die("valve_server_new", valve_config_last_error(cfg));
  valve_config_free(cfg);
  if (valve_server_start(server) != 0) die("valve_server_start", valve_server_last_error(server));
  char address[128];
  if (valve_server_address(server, address, sizeof address) != 0) die("valve_server_address");
  const char *colon = std::strrchr(address, ':');
  *port = static_cast<uint16_t>(std::atoi(colon ? colon + 1 : "0"));
  return server;
}

}  // namespace fuzz
