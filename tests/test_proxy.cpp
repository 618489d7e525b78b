// proxy.hpp: the decisions one request's proxy makes (retry or not, 502, 503, 504, the hold-back of
// a retryable answer, the head passed on), driven by a test loop: a Listener on a free port, an App
// whose Pool runs the native backend as workers, and a fake Proxy::Host that routes every request
// there. The test talks to the listener over a real socket from a thread of its own (blocking I/O,
// bounded by socket timeouts) while the test thread runs the loop.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "app.hpp"
#include "http.hpp"
#include "listener.hpp"
#include "loop_support.hpp"
#include "pool.hpp"
#include "proxy.hpp"
#include "router.hpp"
#include "support.hpp"
#include "worker.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Observer final : valve::Pool::Observer {
  int ready = 0, terminated = 0;
  std::vector<std::string> failures;
  void on_pool_ready(valve::Pool &) override { ++ready; }
  void on_pool_failed(valve::Pool &, int, std::string message) override {
    failures.push_back(std::move(message));
  }
  void on_pool_terminated(valve::Pool &) override { ++terminated; }
  void on_reload_started() override {}
  void on_reload_finished(bool) override {}
};

// Routes every request to one app, as the server's routes would with a single "/" route.
struct Host final : valve::Proxy::Host {
  valve::App *app = nullptr;
  valve::Listener *listener = nullptr;
  std::vector<valve::Route> all_routes;
  std::vector<std::string> done_phases;  // phase_name() of each proxy as it ends

  Host() {
    valve::Route r;
    r.prefix = "/";
    all_routes.push_back(r);
  }
  valve::Routing route(const valve::Head &, std::string_view) override {
    ++app->in_progress;
    return valve::Routing{app, &all_routes.front()};
  }
  const std::vector<valve::Route> &routes() const override { return all_routes; }
  void on_proxy_done(valve::Proxy &proxy) override {
    done_phases.push_back(proxy.phase_name());
    if (app->in_progress > 0) --app->in_progress;
    listener->close_proxy(proxy);
  }
};

// What the client got: the answer (its body de-chunked) and when its bytes came.
struct Reply {
  std::string raw;
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  double first_byte = -1;  // seconds after the request was written (-1: none came)
  double last_byte = -1;
  std::string error;  // what went wrong on the client's side

  const std::string *header(std::string_view name) const {
    for (const auto &[n, v] : headers)
      if (valve::iequals(n, name)) return &v;
    return nullptr;
  }
};

void parse_reply(Reply &r) {
  size_t end = r.raw.find("\r\n\r\n");
  if (end == std::string::npos) return;
  std::string head = r.raw.substr(0, end);
  std::string rest = r.raw.substr(end + 4);
  size_t eol = head.find("\r\n");
  std::string status_line = head.substr(0, eol);
  if (status_line.size() >= 12 && status_line.starts_with("HTTP/1.1 "))
    r.status = std::stoi(status_line.substr(9, 3));
  size_t pos = eol == std::string::npos ? head.size() : eol + 2;
  while (pos < head.size()) {
    size_t next = head.find("\r\n", pos);
    if (next == std::string::npos) next = head.size();
    std::string line = head.substr(pos, next - pos);
    size_t colon = line.find(':');
    if (colon != std::string::npos) {
      size_t v = line.find_first_not_of(' ', colon + 1);
      r.headers.emplace_back(line.substr(0, colon), v == std::string::npos ? "" : line.substr(v));
    }
    pos = next + 2;
  }
  const std::string *te = r.header("transfer-encoding");
  if (!te || !valve::iequals(*te, "chunked")) {
    r.body = rest;
    return;
  }
  size_t at = 0;
  while (at < rest.size()) {
    size_t line_end = rest.find("\r\n", at);
    if (line_end == std::string::npos) break;
    size_t n = std::stoul(rest.substr(at, line_end - at), nullptr, 16);
    if (n == 0) break;
    r.body += rest.substr(line_end + 2, n);
    at = line_end + 2 + n + 2;
  }
}

// One connection to the listener on a thread of its own: writes the request, reads until valve
// closes the connection (requests say Connection: close), or 5 s pass.
class Client {
 public:
  Client(int port, std::string request) {
    thread_ = std::thread([this, port, request = std::move(request)] {
      run(port, request);
      done_ = true;
    });
  }
  ~Client() {
    if (int fd = fd_.load(); fd >= 0) ::shutdown(fd, SHUT_RDWR);  // unblocks the thread
    if (thread_.joinable()) thread_.join();
  }
  Client(const Client &) = delete;
  Client &operator=(const Client &) = delete;

  bool done() const { return done_; }
  // The reply, once done() (the thread is joined).
  const Reply &reply() {
    if (thread_.joinable()) thread_.join();
    return reply_;
  }

 private:
  void run(int port, const std::string &request) {
    int fd = test::connect_loopback(port);
    if (fd < 0) {
      reply_.error = "connect failed";
      return;
    }
    fd_ = fd;
    auto start = Clock::now();
    size_t sent = 0;
    while (sent < request.size()) {
      ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) {
        reply_.error = "send failed";
        break;
      }
      sent += static_cast<size_t>(n);
    }
    char buf[16384];
    for (;;) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) reply_.error = "no answer within 5 s";
      if (n <= 0) break;
      double at = std::chrono::duration<double>(Clock::now() - start).count();
      if (reply_.first_byte < 0) reply_.first_byte = at;
      reply_.last_byte = at;
      reply_.raw.append(buf, static_cast<size_t>(n));
    }
    fd_ = -1;
    close(fd);
    parse_reply(reply_);
  }

  std::thread thread_;
  std::atomic<bool> done_{false};
  std::atomic<int> fd_{-1};
  Reply reply_;
};

std::string get(const std::string &target, const std::string &method = "GET",
                const std::string &extra_headers = {}) {
  return method + " " + target + " HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" +
         extra_headers + "\r\n";
}

// A listener, an app of backend workers and the host between them, on a test loop.
class Rig {
 public:
  // options: key/value pairs set on top of the backend's config, for the server and the app.
  explicit Rig(std::vector<std::pair<std::string, std::string>> options)
      : t_(configure(options)), app_("default", t_.config()), listener_(t_.ctx(), host_) {
    host_.app = &app_;
    host_.listener = &listener_;
    app_.pool = std::make_unique<valve::Pool>(t_.ctx(), observer_, app_.config, "default", 1);
    auto problem = app_.pool->check_environment();
    REQUIRE_MESSAGE(!problem, problem.value_or(""));
    app_.pool->start();
    std::string address, why;
    REQUIRE_MESSAGE(listener_.listen(&address, &why) == 0, why);
    port_ = std::stoi(address.substr(address.rfind(':') + 1));
    REQUIRE(port_ > 0);
    // Every worker of n-min is ready before the test begins.
    size_t want = app_.config.n_min;
    REQUIRE_MESSAGE(t_.run_until([&] { return ready_workers() >= want; }, 5), t_.log_text());
  }
  ~Rig() { stop(); }
  Rig(const Rig &) = delete;
  Rig &operator=(const Rig &) = delete;

  test::TestLoop &loop() { return t_; }
  valve::Stats &stats() { return t_.ctx().stats(); }
  valve::Pool &pool() { return *app_.pool; }
  const Host &host() const { return host_; }
  int port() const { return port_; }

  size_t ready_workers() {
    for (const auto &[name, n] : app_.pool->count_states())
      if (name == "ready") return n;
    return 0;
  }
  // The test's children (from /proc: the workers, as they are exec'd directly).
  static std::vector<int> child_pids() {
    std::vector<int> pids;
    for (const auto &entry : std::filesystem::directory_iterator("/proc")) {
      std::string name = entry.path().filename();
      if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream stat(entry.path() / "stat");
      std::string line;
      if (!std::getline(stat, line)) continue;
      // pid (comm) state ppid ...: comm may hold spaces, so read after its closing parenthesis.
      size_t close = line.rfind(')');
      if (close == std::string::npos) continue;
      std::istringstream rest(line.substr(close + 1));
      std::string state;
      int ppid = 0;
      if (rest >> state >> ppid && ppid == getpid()) pids.push_back(std::stoi(name));
    }
    return pids;
  }
  // The worker with a request in flight (0: none).
  int busy_worker_pid() {
    for (int pid : child_pids()) {
      valve::Worker *w = app_.pool->find_pid(pid);
      if (w && w->in_flight() > 0) return pid;
    }
    return 0;
  }

  // Sends one request and runs the loop until its answer is in (or `seconds` pass).
  Reply fetch(const std::string &request, double seconds = 5) {
    Client c(port_, request);
    REQUIRE_MESSAGE(t_.run_until([&] { return c.done(); }, seconds), t_.log_text());
    return c.reply();
  }
  void wait_for(Client &c, double seconds = 5) {
    REQUIRE_MESSAGE(t_.run_until([&] { return c.done(); }, seconds), t_.log_text());
  }

  // Closes the clients, ends every worker and waits until all have exited and every proxy is over.
  void stop() {
    if (stopped_) return;
    stopped_ = true;
    listener_.close();
    listener_.close_clients();
    app_.pool->terminate();
    CHECK_MESSAGE(t_.run_until(
                      [&] {
                        return observer_.terminated > 0 && app_.pool->all_exited() &&
                               listener_.requests_in_progress() == 0;
                      },
                      5),
                  t_.log_text());
    t_.run_for(0.02);  // the deferred deletes
    CHECK(listener_.connections() == 0);
    CHECK(observer_.failures.empty());
  }

 private:
  static valve::Config configure(const std::vector<std::pair<std::string, std::string>> &options) {
    valve::Config config = test::backend_config();
    REQUIRE_FALSE(config.set("host", "127.0.0.1").has_value());
    for (const auto &[key, value] : options) {
      auto problem = config.set(key, value);
      REQUIRE_MESSAGE(!problem, problem.value_or(""));
    }
    return config;
  }

  test::TestLoop t_;
  Observer observer_;
  Host host_;
  valve::App app_;
  valve::Listener listener_;
  int port_ = 0;
  bool stopped_ = false;
};

bool all_finished(const Host &host) {
  for (const auto &p : host.done_phases)
    if (p != "finished") return false;
  return !host.done_phases.empty();
}

}  // namespace

TEST_CASE("proxy: a GET whose worker dies before answering is retried once on another worker") {
  Rig rig({{"n-min", "2"}, {"n-max", "2"}});
  Client c(rig.port(), get("/sleep?ms=400"));
  int victim = 0;
  REQUIRE_MESSAGE(rig.loop().run_until([&] { return (victim = rig.busy_worker_pid()) != 0; }, 3),
                  rig.loop().log_text());
  REQUIRE(kill(victim, SIGKILL) == 0);
  rig.wait_for(c);
  const Reply &r = c.reply();
  CHECK_MESSAGE(r.status == 200, r.raw, r.error);
  CHECK(r.body == "slept 400\n");
  CHECK(rig.stats().retries == 1);
  CHECK(rig.loop().logged("failed before answering") == 1);
  CHECK(rig.loop().logged("retrying once") == 1);
  rig.stop();
  CHECK(all_finished(rig.host()));
}

TEST_CASE("proxy: a GET that kills every worker it reaches is retried once, then 502") {
  Rig rig({{"n-min", "2"}, {"n-max", "2"}});
  Reply r = rig.fetch(get("/crash"));
  CHECK_MESSAGE(r.status == 502, r.raw, r.error);
  CHECK(r.body.find("failed before answering") != std::string::npos);
  CHECK(rig.stats().retries == 1);
  CHECK(rig.loop().run_until([&] { return rig.stats().crashes == 2; }, 2));
  rig.stop();
  CHECK(rig.stats().crashes == 2);  // two workers, no third try
}

TEST_CASE("proxy: a POST with a body is not retried: 502") {
  Rig rig({{"n-min", "2"}, {"n-max", "2"}});
  Reply r = rig.fetch(get("/crash", "POST", "Content-Type: text/plain\r\nContent-Length: 7\r\n") +
                      "payload");
  CHECK_MESSAGE(r.status == 502, r.raw, r.error);
  CHECK(r.body.find("failed before answering") != std::string::npos);
  CHECK(rig.stats().retries == 0);
  CHECK(rig.loop().logged("retrying once") == 0);
  CHECK(rig.loop().run_until([&] { return rig.stats().crashes == 1; }, 2));
  rig.stop();
  CHECK(rig.stats().crashes == 1);
}

TEST_CASE("proxy: a worker that never answers gets 504 after --timeout and is replaced") {
  Rig rig({{"n-min", "1"}, {"n-max", "1"}, {"timeout", "0.3"}});
  uint64_t launches = rig.stats().launches;
  Reply r = rig.fetch(get("/hang"));
  CHECK_MESSAGE(r.status == 504, r.raw, r.error);
  CHECK(r.first_byte >= 0.29);
  CHECK(r.first_byte < 2);
  CHECK(r.body.find("no answer within 0.3 s") != std::string::npos);
  CHECK(rig.stats().timeouts == 1);
  CHECK(rig.stats().retries == 0);  // a timeout is not retried
  CHECK(rig.loop().logged("replacing it") == 1);
  // The hung worker is killed and a new one serves.
  REQUIRE_MESSAGE(
      rig.loop().run_until(
          [&] { return rig.stats().launches == launches + 1 && rig.ready_workers() == 1; }, 3),
      rig.loop().log_text());
  Reply again = rig.fetch(get("/hello"));
  CHECK(again.status == 200);
  rig.stop();
}

TEST_CASE("proxy: a full queue gives 503 with Retry-After at once") {
  Rig rig({{"n-min", "1"}, {"n-max", "1"}, {"queue-max", "0"}});
  Client busy(rig.port(), get("/sleep?ms=400"));
  REQUIRE(rig.loop().run_until([&] { return rig.busy_worker_pid() != 0; }, 3));
  Reply r = rig.fetch(get("/hello"));
  CHECK_MESSAGE(r.status == 503, r.raw, r.error);
  REQUIRE(r.header("retry-after") != nullptr);
  CHECK(*r.header("retry-after") == "1");
  CHECK(r.body.find("queue is full") != std::string::npos);
  CHECK(r.first_byte < 0.3);  // not after the busy request
  CHECK(rig.stats().rejected == 1);
  rig.wait_for(busy);
  CHECK(busy.reply().status == 200);
  rig.stop();
}

TEST_CASE("proxy: a request still queued at --queue-timeout gets 503 with Retry-After") {
  Rig rig({{"n-min", "1"}, {"n-max", "1"}, {"queue-timeout", "0.2"}});
  Client busy(rig.port(), get("/sleep?ms=700"));
  REQUIRE(rig.loop().run_until([&] { return rig.busy_worker_pid() != 0; }, 3));
  Client queued(rig.port(), get("/hello"));
  REQUIRE(rig.loop().run_until([&] { return rig.pool().queue_depth() == 1; }, 3));
  rig.wait_for(queued);
  const Reply &r = queued.reply();
  CHECK_MESSAGE(r.status == 503, r.raw, r.error);
  REQUIRE(r.header("retry-after") != nullptr);
  CHECK(r.body.find("queue timeout (0.2 s)") != std::string::npos);
  CHECK(r.first_byte >= 0.19);
  CHECK(r.first_byte < 0.6);  // before the worker is free
  CHECK(rig.pool().queue_depth() == 0);
  CHECK(rig.stats().rejected == 1);
  rig.wait_for(busy);
  CHECK(busy.reply().status == 200);
  rig.stop();
}

TEST_CASE("proxy: a malformed answer gives 502; a close-delimited one is passed on chunked") {
  Rig rig({{"n-min", "2"}, {"n-max", "2"}});
  SUBCASE("an answer's head past the 64 KiB limit is malformed: retried once, then 502") {
    Reply r = rig.fetch(get("/headers-big?n=70000"));
    CHECK_MESSAGE(r.status == 502, r.raw.substr(0, 300), r.error);
    CHECK(r.header("x-big") == nullptr);
    CHECK(rig.stats().retries == 1);
    CHECK(rig.loop().logged("malformed") == 1);  // the first worker's failure, retried
    CHECK(r.body.find("the worker's answer is malformed") != std::string::npos);
    CHECK(rig.loop().logged("retrying once") == 1);
  }
  SUBCASE("no framing: the body ends when the worker closes, the client gets it chunked") {
    Reply r = rig.fetch(get("/noframe"));
    CHECK_MESSAGE(r.status == 200, r.raw, r.error);
    REQUIRE(r.header("transfer-encoding") != nullptr);
    CHECK(*r.header("transfer-encoding") == "chunked");
    CHECK(r.body == "no framing\n");
    CHECK(rig.stats().retries == 0);
  }
  rig.stop();
}

TEST_CASE("proxy: a retryable GET's answer is held back until complete, or for 0.1 s") {
  Rig rig({{"n-min", "1"}, {"n-max", "1"}});
  SUBCASE("complete within the hold: nothing reaches the client before all of it") {
    Reply r = rig.fetch(get("/drip?ms=60"));
    CHECK_MESSAGE(r.status == 200, r.raw, r.error);
    CHECK(r.body == "first\nlast\n");
    CHECK(r.first_byte >= 0.055);
  }
  SUBCASE("longer than the hold: what was held goes out at 0.1 s, the rest as it comes") {
    Reply r = rig.fetch(get("/drip?ms=500"));
    CHECK_MESSAGE(r.status == 200, r.raw, r.error);
    CHECK(r.body == "first\nlast\n");
    CHECK(r.first_byte >= 0.09);
    CHECK(r.first_byte < 0.4);
    CHECK(r.last_byte >= 0.49);
  }
  SUBCASE("not retryable (DELETE): the head passes at once") {
    Reply r = rig.fetch(get("/drip?ms=400", "DELETE"));
    CHECK_MESSAGE(r.status == 200, r.raw, r.error);
    CHECK(r.body == "first\nlast\n");
    CHECK(r.first_byte < 0.3);
    CHECK(r.last_byte >= 0.39);
  }
  rig.stop();
}

TEST_CASE("proxy: the answer's head passes through, with X-Request-Id added") {
  Rig rig({{"n-min", "1"}, {"n-max", "1"}});
  SUBCASE("valve's own id, the worker's headers and body") {
    Reply r = rig.fetch(get("/hello"));
    CHECK_MESSAGE(r.status == 200, r.raw, r.error);
    CHECK(r.raw.starts_with("HTTP/1.1 200 OK\r\n"));
    REQUIRE(r.header("content-type") != nullptr);
    CHECK(*r.header("content-type") == "text/plain");
    REQUIRE(r.header("content-length") != nullptr);
    CHECK(*r.header("content-length") == "6");
    REQUIRE(r.header("x-request-id") != nullptr);
    CHECK(std::regex_match(*r.header("x-request-id"), std::regex("[0-9a-f]{32}")));
    CHECK(r.header("connection") != nullptr);  // Connection: close, as the client asked
    CHECK(r.body == "hello\n");
  }
  SUBCASE("the client's id reaches the worker and comes back") {
    Reply r = rig.fetch(get("/echo", "GET", "X-Request-Id: test-id-7\r\n"));
    CHECK_MESSAGE(r.status == 200, r.raw, r.error);
    REQUIRE(r.header("x-request-id") != nullptr);
    CHECK(*r.header("x-request-id") == "test-id-7");
    CHECK(r.body.find(R"(["X-Request-Id","test-id-7"])") != std::string::npos);
    CHECK(r.body.find(R"(["X-Forwarded-For","127.0.0.1"])") != std::string::npos);
  }
  rig.stop();
  CHECK(all_finished(rig.host()));
}
