// valve.h, used as an embedding host would: configuration, errors, and a server round trip with the
// native test backend (its path comes in VALVE_BACKEND, set by tests/meson.build). Without uv.h, as
// a host sees them, libuv's error codes are negative errno values.
#include <valve/valve.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

struct ConfigGuard {
  valve_config_t *cfg = nullptr;
  // Tests run as root in CI: their workers may be root too, as an explicit choice.
  ConfigGuard() {
    REQUIRE(valve_config_new(&cfg) == 0);
    set("allow-root", "true");
  }
  ~ConfigGuard() { valve_config_free(cfg); }
  void set(const char *key, const std::string &value) {
    INFO("set " << key << " " << value);
    REQUIRE_MESSAGE(valve_config_set(cfg, key, value.c_str()) == 0, valve_config_last_error(cfg));
  }
  // Workers are the native test backend, on ports of their own; valve listens on a free port.
  void use_backend() {
    set("cmd", std::string(backend_path()) + " --port {port}");
    set("port", "0");
  }
  static const char *backend_path() {
    const char *backend = getenv("VALVE_BACKEND");
    REQUIRE_MESSAGE(backend != nullptr, "VALVE_BACKEND is not set: run the tests through meson");
    return backend;
  }
};

struct ServerGuard {
  valve_server_t *sv = nullptr;
  ~ServerGuard() { valve_server_free(sv); }
};

// Log lines from the server, gathered on its loop thread.
struct LogSink {
  std::mutex mutex;
  std::vector<std::string> lines;
  std::atomic<int> destroyed{0};
  static void on_line(void *self, int level, const char *line) {
    auto *s = static_cast<LogSink *>(self);
    std::lock_guard lock(s->mutex);
    s->lines.push_back(std::to_string(level) + " " + line);
  }
  static void on_destroy(void *self) { ++static_cast<LogSink *>(self)->destroyed; }
  std::string all() {
    std::lock_guard lock(mutex);
    std::string out;
    for (auto &l : lines) out += l + "\n";
    return out;
  }
};

// Sends request over a fresh connection and reads the answer to EOF.
std::string raw_exchange(int port, const std::string &request) {
  int fd = test::connect_loopback(port);
  REQUIRE(fd >= 0);
  test::FdGuard guard(fd);
  REQUIRE(send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size()));
  std::string response;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof buf, 0)) > 0) response.append(buf, static_cast<size_t>(n));
  return response;
}

// One HTTP/1.1 exchange over a fresh connection (Connection: close), read to EOF.
std::string http_get(int port, const std::string &target) {
  return raw_exchange(
      port, "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
}

int port_of(const std::string &address) {
  auto colon = address.rfind(':');
  return colon == std::string::npos ? -1 : std::atoi(address.c_str() + colon + 1);
}

// No child of this process is left (every worker was reaped by the server).
// TMPDIR set to a fresh directory while it lives (where valve makes its runtime directory and its
// workers' temporary directories), then restored; what is left is removed by rm, not by valve.
struct ScopedTmpdir {
  std::string dir, saved;
  bool had = false;
  ScopedTmpdir() {
    char templ[] = "/tmp/valve-unit-capi-XXXXXX";
    REQUIRE(mkdtemp(templ) != nullptr);
    dir = templ;
    if (const char *old = getenv("TMPDIR")) had = true, saved = old;
    setenv("TMPDIR", dir.c_str(), 1);
  }
  ~ScopedTmpdir() {
    had ? setenv("TMPDIR", saved.c_str(), 1) : unsetenv("TMPDIR");
    CHECK(system(("rm -rf '" + dir + "'").c_str()) == 0);
  }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    if (DIR *d = opendir(dir.c_str())) {
      while (dirent *e = readdir(d)) {
        if (std::string(e->d_name) != "." && std::string(e->d_name) != "..")
          out.push_back(e->d_name);
      }
      closedir(d);
    }
    return out;
  }
};

// The TMPDIR a process was started with ("" if none).
std::string environ_tmpdir(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/environ");
  std::string entry;
  while (std::getline(f, entry, '\0')) {
    if (entry.starts_with("TMPDIR=")) return entry.substr(7);
  }
  return "";
}

bool no_children_left() {
  int status;
  return waitpid(-1, &status, WNOHANG) == -1 && errno == ECHILD;
}

}  // namespace

TEST_CASE("capi: version") {
  CHECK(valve_version() == VALVE_VERSION_HEX);
  CHECK(std::string(valve_version_string()) == VALVE_VERSION_STRING);
  CHECK(valve_version() ==
        VALVE_VERSION_MAJOR * 10000u + VALVE_VERSION_MINOR * 100u + VALVE_VERSION_PATCH);
  CHECK(VALVE_VERSION_CHECK(0, 0, 1));
  CHECK_FALSE(VALVE_VERSION_CHECK(VALVE_VERSION_MAJOR + 1, 0, 0));
}

TEST_CASE("capi: error names and messages") {
  CHECK(std::string(valve_err_name(VALVE_EINVALID)) == "VALVE_EINVALID");
  CHECK(std::string(valve_err_name(VALVE_ESTATE)) == "VALVE_ESTATE");
  CHECK(std::string(valve_err_name(VALVE_ESTARTUP)) == "VALVE_ESTARTUP");
  CHECK(std::string(valve_err_name(VALVE_ECONFIG)) == "VALVE_ECONFIG");
  CHECK(std::string(valve_err_name(-EADDRINUSE)) == "EADDRINUSE");
  CHECK(std::string(valve_err_name(-ENOENT)) == "ENOENT");
  CHECK(valve_err_name(-123456) != nullptr);
  CHECK(std::string(valve_strerror(VALVE_EINVALID)) == "invalid argument or configuration value");
  CHECK(std::string(valve_strerror(-EADDRINUSE)) == "address already in use");
  for (int code :
       std::initializer_list<int>{VALVE_EINVALID, VALVE_ESTATE, VALVE_ESTARTUP, VALVE_ENOMEM,
                                  VALVE_EINTERNAL, VALVE_ECONFIG, -ECONNREFUSED, -123456}) {
    INFO("code " << code);
    REQUIRE(valve_strerror(code) != nullptr);
    CHECK(std::strlen(valve_strerror(code)) > 0);
    CHECK(std::strlen(valve_err_name(code)) > 0);
  }
  // valve's codes never collide with libuv's (negative errno values on Unix).
  CHECK(VALVE_EINVALID < -10000);
}

TEST_CASE("capi: config new/set/get/free") {
  ConfigGuard c;
  REQUIRE(c.cfg != nullptr);
  CHECK(std::string(valve_config_last_error(c.cfg)) == "");
  CHECK(std::string(valve_config_get(c.cfg, "n-max")) == "3");
  CHECK(std::string(valve_config_get(c.cfg, "max-header-size")) == "16384");
  CHECK(valve_config_set(c.cfg, "n-max", "7") == 0);
  CHECK(std::string(valve_config_get(c.cfg, "n-max")) == "7");
  CHECK(valve_config_set(c.cfg, "timeout", "1.5m") == 0);
  CHECK(std::string(valve_config_get(c.cfg, "timeout")) == "90");
  CHECK(valve_config_get(c.cfg, "no-such-key") == nullptr);
  CHECK(valve_config_get(c.cfg, nullptr) == nullptr);
  CHECK(valve_config_get(nullptr, "n-max") == nullptr);

  CHECK(valve_config_set(c.cfg, "no-such-key", "1") == VALVE_EINVALID);
  CHECK(std::string(valve_config_last_error(c.cfg)).starts_with("no-such-key 1: "));
  CHECK(valve_config_set(c.cfg, "n-max", "many") == VALVE_EINVALID);
  CHECK(std::string(valve_config_last_error(c.cfg)) == "n-max many: expected a whole number");
  CHECK(std::string(valve_config_get(c.cfg, "n-max")) == "7");  // unchanged
  CHECK(valve_config_set(c.cfg, "n-max", "2") == 0);
  CHECK(std::string(valve_config_last_error(c.cfg)) == "");  // a success clears the message

  CHECK(valve_config_set(c.cfg, nullptr, "1") == VALVE_EINVALID);
  CHECK(valve_config_set(c.cfg, "n-max", nullptr) == VALVE_EINVALID);
  CHECK(std::string(valve_config_last_error(c.cfg)).size() > 0);
  CHECK(valve_config_set(nullptr, "n-max", "1") == VALVE_EINVALID);
  CHECK(valve_config_new(nullptr) == VALVE_EINVALID);
  CHECK(std::string(valve_config_last_error(nullptr)) == "");
}

TEST_CASE("capi: valve_config_key lists every option, each described, then NULL") {
  std::set<std::string> keys;
  size_t i = 0;
  for (; valve_config_key(i); ++i) {
    const char *key = valve_config_key(i);
    INFO("key " << key);
    CHECK(keys.insert(key).second);
    const char *about = valve_config_describe(key);
    REQUIRE(about != nullptr);
    CHECK(std::strlen(about) > 10);
    ConfigGuard c;
    const char *value = valve_config_get(c.cfg, key);
    REQUIRE(value != nullptr);
    // A non-empty default is named in the description.
    if (*value) CHECK(std::string(about).find("(default: ") != std::string::npos);
  }
  CHECK(i == 75);
  CHECK(valve_config_key(i) == nullptr);
  CHECK(valve_config_key(static_cast<size_t>(-1)) == nullptr);
  CHECK(keys.count("n-max") == 1);
  CHECK(keys.count("cmd") == 1);
  CHECK(valve_config_describe("no-such-key") == nullptr);
  CHECK(valve_config_describe(nullptr) == nullptr);
}

TEST_CASE("capi: NULL handles are no-ops or VALVE_EINVALID") {
  valve_server_free(nullptr);
  valve_config_free(nullptr);
  valve_free(nullptr);
  CHECK(valve_server_run(nullptr) == VALVE_EINVALID);
  CHECK(valve_server_start(nullptr) == VALVE_EINVALID);
  CHECK(valve_server_stop(nullptr, 0) == VALVE_EINVALID);
  CHECK(valve_server_wait(nullptr) == VALVE_EINVALID);
  char *json = reinterpret_cast<char *>(1);
  CHECK(valve_server_status(nullptr, &json) == VALVE_EINVALID);
  char buf[8];
  CHECK(valve_server_address(nullptr, buf, sizeof buf) == VALVE_EINVALID);
  CHECK(std::string(valve_server_last_error(nullptr)) == "");
  CHECK(valve_server_new(nullptr, nullptr) == VALVE_EINVALID);
  valve_server_t *sv = reinterpret_cast<valve_server_t *>(1);
  CHECK(valve_server_new(&sv, nullptr) == VALVE_EINVALID);
  CHECK(sv == nullptr);
}

TEST_CASE("capi: valve_server_new refuses a bad configuration, naming the option") {
  SUBCASE("a missing API file") {
    ConfigGuard c;
    c.set("rscript", "sh");  // found on any system, so the file is what fails
    c.set("file", "/no/such/dir/plumber.R");
    valve_server_t *sv = reinterpret_cast<valve_server_t *>(1);
    CHECK(valve_server_new(&sv, c.cfg) == VALVE_EINVALID);
    CHECK(sv == nullptr);
    CHECK(std::string(valve_config_last_error(c.cfg)) ==
          "file /no/such/dir/plumber.R: no such file");
  }
  SUBCASE("no Rscript") {
    ConfigGuard c;
    c.set("rscript", "no-such-rscript-xyz");
    valve_server_t *sv = nullptr;
    CHECK(valve_server_new(&sv, c.cfg) == VALVE_EINVALID);
    CHECK(sv == nullptr);
    CHECK(std::string(valve_config_last_error(c.cfg))
              .starts_with("rscript no-such-rscript-xyz: not found"));
  }
  SUBCASE("n-min above n-max") {
    ConfigGuard c;
    c.set("n-min", "5");
    c.set("n-max", "2");
    valve_server_t *sv = nullptr;
    CHECK(valve_server_new(&sv, c.cfg) == VALVE_EINVALID);
    CHECK(sv == nullptr);
    CHECK(std::string(valve_config_last_error(c.cfg)) == "n-min 5: must be at most n-max (2)");
  }
  SUBCASE("a cmd without {port} or {socket}") {
    ConfigGuard c;
    c.set("cmd", "my-server");
    valve_server_t *sv = nullptr;
    CHECK(valve_server_new(&sv, c.cfg) == VALVE_EINVALID);
    CHECK(std::string(valve_config_last_error(c.cfg)) ==
          "cmd my-server: must contain {port} or {socket}");
  }
  SUBCASE("an env-file with a mistake, by file and line") {
    char path[] = "/tmp/valve-capi-env-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, "OK=1\nbroken\n", 12) == 12);
    close(fd);
    ConfigGuard c;
    c.use_backend();
    c.set("env-file", path);
    valve_server_t *sv = nullptr;
    CHECK(valve_server_new(&sv, c.cfg) == VALVE_EINVALID);
    unlink(path);
    CHECK(std::string(valve_config_last_error(c.cfg)) ==
          std::string("env-file ") + path + ":2: expected NAME=VALUE");
  }
  if (geteuid() == 0) {
    SUBCASE("root workers, unless allowed") {
      ConfigGuard c;
      c.use_backend();
      c.set("allow-root", "false");
      valve_server_t *sv = nullptr;
      CHECK(valve_server_new(&sv, c.cfg) == VALVE_EINVALID);
      CHECK(std::string(valve_config_last_error(c.cfg))
                .starts_with("user \"\": valve runs as root, so its workers would too"));
    }
  }
}

TEST_CASE("capi: a log callback's destroy runs once, when the last holder goes") {
  LogSink sink;
  CHECK(valve_config_set_log_callback(nullptr, LogSink::on_line, &sink, LogSink::on_destroy) ==
        VALVE_EINVALID);
  CHECK(sink.destroyed == 1);  // at once, because the call failed

  LogSink sink2;
  valve_config_t *cfg = nullptr;
  REQUIRE(valve_config_new(&cfg) == 0);
  REQUIRE(valve_config_set_log_callback(cfg, LogSink::on_line, &sink2, LogSink::on_destroy) == 0);
  REQUIRE(valve_config_set(cfg, "cmd", "true {port}") == 0);
  REQUIRE(valve_config_set(cfg, "allow-root", "true") == 0);
  valve_server_t *sv = nullptr;
  REQUIRE(valve_server_new(&sv, cfg) == 0);
  valve_config_free(cfg);
  CHECK(sink2.destroyed == 0);  // the server still holds it
  valve_server_free(sv);
  CHECK(sink2.destroyed == 1);

  // Replacing a callback destroys the old one at once.
  LogSink a, b;
  REQUIRE(valve_config_new(&cfg) == 0);
  REQUIRE(valve_config_set_log_callback(cfg, LogSink::on_line, &a, LogSink::on_destroy) == 0);
  REQUIRE(valve_config_set_log_callback(cfg, LogSink::on_line, &b, LogSink::on_destroy) == 0);
  CHECK(a.destroyed == 1);
  CHECK(b.destroyed == 0);
  valve_config_free(cfg);
  CHECK(b.destroyed == 1);
}

TEST_CASE("capi: a server that cannot listen reports EADDRINUSE") {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  test::FdGuard guard(fd);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0);
  REQUIRE(listen(fd, 1) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) == 0);
  int port = ntohs(addr.sin_port);

  LogSink sink;
  ConfigGuard c;
  REQUIRE(valve_config_set_log_callback(c.cfg, LogSink::on_line, &sink, nullptr) == 0);
  c.set("cmd", "exec sleep 30 {port}");
  c.set("port", std::to_string(port));
  ServerGuard s;
  REQUIRE(valve_server_new(&s.sv, c.cfg) == 0);
  CHECK(valve_server_start(s.sv) == -EADDRINUSE);
  CHECK(std::string(valve_server_last_error(s.sv))
            .starts_with("port " + std::to_string(port) + ": cannot listen"));
  CHECK(valve_server_wait(s.sv) == -EADDRINUSE);
  char buf[64];
  CHECK(valve_server_address(s.sv, buf, sizeof buf) == VALVE_ESTATE);
  CHECK(no_children_left());  // no worker was launched for a server that never listened
}

TEST_CASE("capi: embedding round trip with the native backend, 5 times in one process") {
  const char *backend = getenv("VALVE_BACKEND");
  REQUIRE_MESSAGE(backend != nullptr, "VALVE_BACKEND is not set: run the tests through meson");
  REQUIRE_MESSAGE(access(backend, X_OK) == 0, "VALVE_BACKEND " << backend << " is not executable");
  REQUIRE(no_children_left());

  for (int round = 0; round < 5; ++round) {
    INFO("round " << round);
    ScopedTmpdir tmp;
    LogSink sink;
    ServerGuard s;
    {
      ConfigGuard c;
      REQUIRE(valve_config_set_log_callback(c.cfg, LogSink::on_line, &sink, LogSink::on_destroy) ==
              0);
      c.use_backend();
      c.set("log-level", "debug");
      REQUIRE_MESSAGE(valve_server_new(&s.sv, c.cfg) == 0, valve_config_last_error(c.cfg));
    }
    char address[64] = "";
    CHECK(valve_server_address(s.sv, address, sizeof address) ==
          VALVE_ESTATE);  // not listening yet

    REQUIRE_MESSAGE(valve_server_start(s.sv) == 0, valve_server_last_error(s.sv) << "\n"
                                                                                 << sink.all());
    CHECK(valve_server_start(s.sv) == VALVE_ESTATE);  // once only
    REQUIRE(valve_server_address(s.sv, address, sizeof address) == 0);
    std::string addr = address;
    CHECK(addr.starts_with("127.0.0.1:"));
    int port = port_of(addr);
    REQUIRE(port > 0);
    CHECK(port != 3000);
    char tiny[5];
    REQUIRE(valve_server_address(s.sv, tiny, sizeof tiny) == 0);
    CHECK(std::string(tiny) == "127.");  // truncated, NUL-terminated

    std::string response = http_get(port, "/hello");
    INFO("response: " << response);
    CHECK(response.starts_with("HTTP/1.1 200 "));
    CHECK(response.ends_with("\r\n\r\nhello\n"));

    char *json = nullptr;
    REQUIRE(valve_server_status(s.sv, &json) == 0);
    REQUIRE(json != nullptr);
    std::string status_text = json;
    valve_free(json);
    INFO("status: " << status_text);
    test::Json status = test::parse_json(status_text);
    CHECK(status["state"].text == "running");
    CHECK(status["address"].text == addr);
    CHECK(status["pid"].number == getpid());
    CHECK(status["version"].text == VALVE_VERSION_STRING);
    CHECK(status["config"]["cmd"].text == std::string(backend) + " --port {port}");
    CHECK(status["queue"].number == 0);
    const test::Json &workers = status["workers"];
    REQUIRE(workers.kind == test::Json::Kind::array);
    REQUIRE(workers.items.size() == 1);
    CHECK(workers[0]["state"].text == "ready");
    CHECK(workers[0]["requests"].number == 1);
    CHECK(workers[0]["in_flight"].number == 0);
    CHECK(workers[0]["address"].text.starts_with("127.0.0.1:"));
    auto worker_pid = static_cast<pid_t>(workers[0]["pid"].number);
    REQUIRE(worker_pid > 0);
    CHECK(getpgid(worker_pid) == worker_pid);
    // Its own TMPDIR, beside valve's runtime directory in the TMPDIR valve was given.
    std::string worker_tmp = environ_tmpdir(worker_pid);
    CHECK(worker_tmp.starts_with(tmp.dir + "/valve-worker-"));
    CHECK(tmp.entries().size() == 2);

    CHECK(valve_server_stop(s.sv, 5) == 0);
    CHECK(valve_server_wait(s.sv) == 0);
    CHECK(std::string(valve_server_last_error(s.sv)) == "");
    CHECK(valve_server_start(s.sv) == VALVE_ESTATE);  // a stopped server does not restart

    // The worker was reaped by the server (not merely killed), and nothing of its group lives on.
    CHECK(kill(worker_pid, 0) == -1);
    CHECK(errno == ESRCH);
    CHECK(test::live_members_of_group(worker_pid).empty());
    CHECK(no_children_left());
    // The worker's temporary directory and the runtime directory went with them.
    CHECK(tmp.entries() == std::vector<std::string>{});

    // The stopped server still answers status.
    REQUIRE(valve_server_status(s.sv, &json) == 0);
    test::Json after = test::parse_json(json);
    valve_free(json);
    CHECK(after["state"].text == "stopped");

    valve_server_free(s.sv);
    s.sv = nullptr;
    CHECK(sink.destroyed == 1);
    std::string log = sink.all();
    CHECK(log.find("listening on http://" + addr) != std::string::npos);
    CHECK(log.find("ready after") != std::string::npos);
  }
}

TEST_CASE("capi: valve_server_free on a running server stops it and ends its worker") {
  LogSink sink;
  ConfigGuard c;
  REQUIRE(valve_config_set_log_callback(c.cfg, LogSink::on_line, &sink, nullptr) == 0);
  c.use_backend();
  valve_server_t *sv = nullptr;
  REQUIRE(valve_server_new(&sv, c.cfg) == 0);
  REQUIRE_MESSAGE(valve_server_start(sv) == 0, valve_server_last_error(sv));
  char *json = nullptr;
  REQUIRE(valve_server_status(sv, &json) == 0);
  test::Json status = test::parse_json(json);
  valve_free(json);
  REQUIRE(status["workers"].items.size() == 1);
  auto worker_pid = static_cast<pid_t>(status["workers"][0]["pid"].number);
  valve_server_free(sv);
  CHECK(kill(worker_pid, 0) == -1);
  CHECK(test::live_members_of_group(worker_pid).empty());
  CHECK(no_children_left());
}

TEST_CASE("capi: workers that never become ready fail start-up with VALVE_ESTARTUP") {
  LogSink sink;
  ConfigGuard c;
  REQUIRE(valve_config_set_log_callback(c.cfg, LogSink::on_line, &sink, nullptr) == 0);
  c.set("cmd", "echo giving up on {port} >&2; exit 4");
  c.set("port", "0");
  ServerGuard s;
  REQUIRE(valve_server_new(&s.sv, c.cfg) == 0);
  CHECK(valve_server_start(s.sv) == VALVE_ESTARTUP);  // after 3 launches, 0.5 s + 1 s of backoff
  std::string error = valve_server_last_error(s.sv);
  INFO("error: " << error);
  CHECK(error.starts_with("no worker became ready: 3 launches failed"));
  CHECK(error.find("exited with status 4") != std::string::npos);
  CHECK(error.find("giving up on ") != std::string::npos);  // the worker's own last words
  CHECK(valve_server_wait(s.sv) == VALVE_ESTARTUP);
  CHECK(no_children_left());
}

namespace {

// The backend's /stats "requests": every request it has parsed, /stats included.
double backend_requests(int port) {
  std::string response = http_get(port, "/stats");
  auto body = response.find("\r\n\r\n");
  REQUIRE(body != std::string::npos);
  return test::parse_json(response.substr(body + 4))["requests"].number;
}

}  // namespace

TEST_CASE("capi: a request refused for its Transfer-Encoding never reaches a worker") {
  LogSink sink;
  ConfigGuard c;
  REQUIRE(valve_config_set_log_callback(c.cfg, LogSink::on_line, &sink, nullptr) == 0);
  c.use_backend();
  c.set("n-max", "1");
  ServerGuard s;
  REQUIRE(valve_server_new(&s.sv, c.cfg) == 0);
  REQUIRE_MESSAGE(valve_server_start(s.sv) == 0, valve_server_last_error(s.sv));
  char address[64];
  REQUIRE(valve_server_address(s.sv, address, sizeof address) == 0);
  int port = port_of(address);

  double before = backend_requests(port);  // also leaves an idle upstream connection
  std::string refused =
      raw_exchange(port, "POST /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n");
  CHECK(refused.starts_with("HTTP/1.1 400 "));
  double after = backend_requests(port);
  CHECK(after == before + 1);  // only the second /stats: the refused POST never reached the worker

  CHECK(valve_server_stop(s.sv, 5) == 0);
  CHECK(valve_server_wait(s.sv) == 0);
  CHECK(no_children_left());
}

namespace {
size_t thread_count() {
  size_t n = 0;
  if (DIR *d = opendir("/proc/self/task")) {
    while (dirent *e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

// The thread count once it settles at `expected`, or after 2 s. A joined thread has finished,
// but the kernel may list it in /proc/self/task a moment longer (it is released after the join
// is woken).
size_t thread_count_settled(size_t expected) {
  for (int i = 0; i < 200; ++i) {
    size_t n = thread_count();
    if (n == expected) return n;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return thread_count();
}

struct EventSink {
  std::mutex mutex;
  std::vector<std::string> events;
  static void on_event(void *self, const char *json) {
    auto *sink = static_cast<EventSink *>(self);
    std::lock_guard lock(sink->mutex);
    sink->events.emplace_back(json);
  }
  size_t count(std::string_view kind) {
    std::lock_guard lock(mutex);
    std::string needle = "\"event\":\"" + std::string(kind) + "\"";
    size_t n = 0;
    for (const auto &e : events) n += e.find(needle) != std::string::npos;
    return n;
  }
};
}  // namespace

TEST_CASE("capi: 100 start/stop cycles in one process leave no thread, child or leak behind") {
  REQUIRE(no_children_left());
  size_t threads_before = thread_count();
  for (int round = 0; round < 100; ++round) {
    INFO("round " << round);
    ServerGuard s;
    {
      ConfigGuard c;
      c.use_backend();
      c.set("log-level", "error");
      REQUIRE_MESSAGE(valve_server_new(&s.sv, c.cfg) == 0, valve_config_last_error(c.cfg));
    }
    REQUIRE_MESSAGE(valve_server_start(s.sv) == 0, valve_server_last_error(s.sv));
    REQUIRE(thread_count() == threads_before + 1);  // exactly one loop thread while running
    REQUIRE(valve_server_stop(s.sv, 5) == 0);
    REQUIRE(valve_server_wait(s.sv) == 0);
    valve_server_free(s.sv);
    s.sv = nullptr;
    REQUIRE(thread_count_settled(threads_before) == threads_before);
    REQUIRE(no_children_left());
  }
}

TEST_CASE("capi: the event callback reports workers and requests as JSON") {
  EventSink sink;
  int destroyed = 0;
  ServerGuard s;
  {
    ConfigGuard c;
    REQUIRE(valve_config_set_event_callback(c.cfg, EventSink::on_event, &sink, nullptr) == 0);
    // Replacing a callback destroys the old one's user data at once.
    REQUIRE(valve_config_set_event_callback(c.cfg, EventSink::on_event, &destroyed,
                                            [](void *p) { ++*static_cast<int *>(p); }) == 0);
    REQUIRE(valve_config_set_event_callback(c.cfg, EventSink::on_event, &sink, nullptr) == 0);
    CHECK(destroyed == 1);
    c.use_backend();
    c.set("log-level", "error");
    REQUIRE(valve_server_new(&s.sv, c.cfg) == 0);
  }
  REQUIRE(valve_server_start(s.sv) == 0);
  char address[64];
  REQUIRE(valve_server_address(s.sv, address, sizeof address) == 0);
  CHECK(http_get(port_of(address), "/hello").starts_with("HTTP/1.1 200 "));
  REQUIRE(valve_server_stop(s.sv, 5) == 0);
  REQUIRE(valve_server_wait(s.sv) == 0);
  CHECK(sink.count("worker_launched") == 1);
  CHECK(sink.count("worker_ready") == 1);
  CHECK(sink.count("worker_exited") == 1);
  CHECK(sink.count("request_completed") == 1);
  std::lock_guard lock(sink.mutex);
  for (const auto &e : sink.events) {
    INFO(e);
    test::Json j = test::parse_json(e);  // each is one well-formed JSON object
    if (j["event"].text == "request_completed") {
      CHECK(j["status"].number == 200);
      CHECK(j["method"].text == "GET");
      CHECK(j["target"].text == "/hello");
      CHECK(j["worker"].number == 1);
      CHECK(j["duration_ms"].number >= 0);
    }
    if (j["event"].text == "worker_exited") CHECK(j["expected"].kind == test::Json::Kind::boolean);
  }
}

TEST_CASE("capi: status before start answers at once; wait() also waits for run() elsewhere") {
  ServerGuard s;
  {
    ConfigGuard c;
    c.use_backend();
    c.set("log-level", "error");
    REQUIRE(valve_server_new(&s.sv, c.cfg) == 0);
  }
  char *json = nullptr;
  REQUIRE(valve_server_status(s.sv, &json) == 0);  // used to wait forever for a loop not running
  CHECK(test::parse_json(json)["state"].text == "created");
  valve_free(json);

  std::atomic<int> run_result{-1};
  std::thread runner([&] { run_result = valve_server_run(s.sv); });
  char address[64];
  for (int i = 0; i < 500 && valve_server_address(s.sv, address, sizeof address) != 0; ++i)
    usleep(10000);
  std::atomic<bool> waited{false};
  std::thread waiter([&] {
    CHECK(valve_server_wait(s.sv) == 0);
    waited = true;
  });
  usleep(200000);
  CHECK_FALSE(waited.load());  // run() still serving: wait() must not return yet
  REQUIRE(valve_server_stop(s.sv, 5) == 0);
  runner.join();
  waiter.join();
  CHECK(waited.load());
  CHECK(run_result.load() == 0);
  CHECK(no_children_left());
}

TEST_CASE("capi: handle-signals gives the host its SIGTERM handler back when the server ends") {
  static volatile sig_atomic_t seen = 0;
  struct sigaction mine {
  }, before{};
  mine.sa_handler = [](int) { seen = 1; };
  sigemptyset(&mine.sa_mask);
  REQUIRE(sigaction(SIGTERM, &mine, &before) == 0);
  {
    ServerGuard s;
    ConfigGuard c;
    c.use_backend();
    c.set("log-level", "error");
    c.set("handle-signals", "true");
    REQUIRE(valve_server_new(&s.sv, c.cfg) == 0);
    REQUIRE(valve_server_start(s.sv) == 0);
    REQUIRE(valve_server_stop(s.sv, 5) == 0);
    REQUIRE(valve_server_wait(s.sv) == 0);
  }
  struct sigaction now {};
  REQUIRE(sigaction(SIGTERM, nullptr, &now) == 0);
  bool restored = now.sa_handler == mine.sa_handler;
  CHECK(restored);
  raise(SIGTERM);
  CHECK(seen == 1);
  sigaction(SIGTERM, &before, nullptr);
}

TEST_CASE("capi: a stop before start ends the server; last_error belongs to the last call") {
  ServerGuard s;
  {
    ConfigGuard c;
    c.use_backend();
    c.set("log-level", "error");
    REQUIRE(valve_server_new(&s.sv, c.cfg) == 0);
  }
  REQUIRE(valve_server_stop(s.sv, 0) == 0);
  CHECK(valve_server_start(s.sv) == VALVE_ESTATE);  // not a launch that stops at once
  CHECK(no_children_left());
  char *json = nullptr;
  REQUIRE(valve_server_status(s.sv, &json) == 0);
  CHECK(test::parse_json(json)["state"].text == "stopped");
  valve_free(json);
  char address[64];
  CHECK(valve_server_address(s.sv, address, sizeof address) == VALVE_ESTATE);
  CHECK(std::string(valve_server_last_error(s.sv)) == "the server is not listening");
}

namespace {
test::Json status_of(valve_server_t *sv) {
  char *json = nullptr;
  REQUIRE(valve_server_status(sv, &json) == 0);
  test::Json status = test::parse_json(json);
  valve_free(json);
  return status;
}

// The pids of the workers in a state, from the status snapshot.
std::vector<pid_t> pids_in(valve_server_t *sv, std::string_view state) {
  std::vector<pid_t> out;
  test::Json status = status_of(sv);
  for (const auto &w : status["workers"].items)
    if (w["state"].text == state) out.push_back(static_cast<pid_t>(w["pid"].number));
  return out;
}

bool eventually(const std::function<bool()> &done, double seconds = 10) {
  auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}
}  // namespace

TEST_CASE("capi: reload replaces every worker with a new generation; scale sets n-min and n-max") {
  ServerGuard s;
  {
    ConfigGuard c;
    c.use_backend();
    c.set("n-min", "2");
    c.set("n-max", "4");
    c.set("log-level", "error");
    REQUIRE(valve_server_new(&s.sv, c.cfg) == 0);
  }
  // Neither works before the server runs.
  CHECK(valve_server_reload(s.sv) == VALVE_ESTATE);
  CHECK(std::string(valve_server_last_error(s.sv)) == "the server is not running");
  CHECK(valve_server_scale(s.sv, 1, 2) == VALVE_ESTATE);
  REQUIRE_MESSAGE(valve_server_start(s.sv) == 0, valve_server_last_error(s.sv));
  REQUIRE(eventually([&] { return pids_in(s.sv, "ready").size() == 2; }));
  std::vector<pid_t> before = pids_in(s.sv, "ready");
  CHECK(status_of(s.sv)["generation"].number == 1);

  REQUIRE_MESSAGE(valve_server_reload(s.sv) == 0, valve_server_last_error(s.sv));
  test::Json after = status_of(s.sv);
  CHECK(after["generation"].number == 2);
  CHECK(after["reload"]["state"].text == "done");
  std::vector<pid_t> fresh = pids_in(s.sv, "ready");
  CHECK(fresh.size() == 2);
  for (pid_t p : fresh) CHECK(std::find(before.begin(), before.end(), p) == before.end());
  // The old generation drains and exits.
  CHECK(eventually([&] {
    return std::none_of(before.begin(), before.end(), [](pid_t p) { return kill(p, 0) == 0; });
  }));
  char address[64];
  REQUIRE(valve_server_address(s.sv, address, sizeof address) == 0);
  CHECK(http_get(port_of(address), "/hello").starts_with("HTTP/1.1 200 "));

  CHECK(valve_server_scale(s.sv, 3, 2) == VALVE_EINVALID);
  CHECK(std::string(valve_server_last_error(s.sv)) == "n-min 3: must be at most n-max (2)");
  CHECK(valve_server_scale(s.sv, 0, 0) == VALVE_EINVALID);
  CHECK(std::string(valve_server_last_error(s.sv)) == "n-max 0: must be at least 1");
  REQUIRE(valve_server_scale(s.sv, 3, 3) == 0);
  CHECK(eventually([&] { return pids_in(s.sv, "ready").size() == 3; }));
  test::Json after_scale = status_of(s.sv);
  const test::Json &config = after_scale["config"];
  CHECK(config["n-min"].number == 3);
  CHECK(config["n-max"].number == 3);
  REQUIRE(valve_server_scale(s.sv, 1, 1) == 0);
  CHECK(eventually([&] { return status_of(s.sv)["workers"].items.size() == 1; }));

  REQUIRE(valve_server_stop(s.sv, 5) == 0);
  REQUIRE(valve_server_wait(s.sv) == 0);
  CHECK(valve_server_reload(s.sv) == VALVE_ESTATE);
  CHECK(no_children_left());
}
