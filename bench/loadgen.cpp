// An open-loop HTTP load generator for bench/run's overload scenario.
//
//   loadgen PORT PATH RATE SECONDS [TIMEOUT_SECONDS]
//
// Starts RATE requests a second for SECONDS on 127.0.0.1:PORT, each on a new connection
// ("Connection: close"), whatever the answers, and prints one line per request:
//   SCHEDULED_US STATUS LATENCY_US SERVER_US
// where LATENCY_US runs from the request's scheduled start (not from when it was sent: a
// generator that falls behind does not hide the server's delay), SERVER_US from the connect()
// call to the end of the answer (what the server took), and STATUS is 0 when there was
// no answer (connection refused or reset, or none within TIMEOUT_SECONDS, default 15). The last
// line, on stderr, says how far behind schedule sending ever fell. One thread, epoll, a timerfd.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

namespace {

int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

struct Request {
  int fd = -1;
  int64_t scheduled_ns = 0;  // from the start
  int status = -1;           // -1: in flight; 0: no answer
  int64_t latency_ns = 0;
  int64_t connect_ns = 0;  // from the start
  bool sent = false;
  std::string got;
};

struct Run {
  int epfd = -1;
  sockaddr_in addr{};
  std::string request;
  std::vector<Request> reqs;
  int64_t start_ns = 0;
  size_t in_flight = 0;
  int64_t max_lag_ns = 0;

  void finish(size_t i, int status) {
    Request &r = reqs[i];
    if (r.status != -1) return;
    r.status = status;
    r.latency_ns = now_ns() - start_ns - r.scheduled_ns;
    if (r.fd >= 0) close(r.fd);  // also leaves the epoll set
    r.fd = -1;
    r.got.clear();
    r.got.shrink_to_fit();
    --in_flight;
  }

  void start(size_t i) {
    Request &r = reqs[i];
    r.connect_ns = now_ns() - start_ns;
    int64_t lag = r.connect_ns - r.scheduled_ns;
    if (lag > max_lag_ns) max_lag_ns = lag;
    ++in_flight;
    r.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (r.fd < 0) return finish(i, 0);
    int rc = connect(r.fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr);
    if (rc != 0 && errno != EINPROGRESS) return finish(i, 0);
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.u64 = i + 1;  // 0 is the timer
    epoll_ctl(epfd, EPOLL_CTL_ADD, r.fd, &ev);
  }

  void on_event(size_t i, uint32_t events) {
    Request &r = reqs[i];
    if (r.status != -1) return;
    if (!r.sent) {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(r.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) return finish(i, 0);
      if (write(r.fd, request.data(), request.size()) != static_cast<ssize_t>(request.size()))
        return finish(i, 0);
      r.sent = true;
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLRDHUP;
      ev.data.u64 = i + 1;
      epoll_ctl(epfd, EPOLL_CTL_MOD, r.fd, &ev);
      return;
    }
    char buf[16384];
    for (;;) {
      ssize_t n = read(r.fd, buf, sizeof buf);
      if (n > 0) {
        if (r.got.size() < 64) r.got.append(buf, static_cast<size_t>(n < 64 ? n : 64));
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
      // The end of the answer (the server closes: Connection: close), or a reset.
      int status = 0;
      if (r.got.size() >= 12 && r.got.compare(0, 5, "HTTP/") == 0)
        status = std::atoi(r.got.c_str() + 9);
      return finish(i, status);
    }
  }
};

}  // namespace

int main(int argc, char **argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: loadgen PORT PATH RATE SECONDS [TIMEOUT_SECONDS]\n");
    return 2;
  }
  int port = std::atoi(argv[1]);
  double rate = std::atof(argv[3]);
  double seconds = std::atof(argv[4]);
  double timeout = argc > 5 ? std::atof(argv[5]) : 15;
  if (port <= 0 || rate <= 0 || seconds <= 0 || timeout <= 0) {
    std::fprintf(stderr, "loadgen: PORT, RATE, SECONDS and TIMEOUT_SECONDS must be positive\n");
    return 2;
  }
  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  lim.rlim_cur = lim.rlim_max;
  setrlimit(RLIMIT_NOFILE, &lim);

  Run run;
  run.addr.sin_family = AF_INET;
  run.addr.sin_port = htons(static_cast<uint16_t>(port));
  run.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  run.request =
      std::string("GET ") + argv[2] +
      " HTTP/1.1\r\nHost: bench\r\nUser-Agent: valve-loadgen\r\nConnection: close\r\n\r\n";
  size_t total = static_cast<size_t>(rate * seconds);
  run.reqs.resize(total);
  for (size_t i = 0; i < total; ++i)
    run.reqs[i].scheduled_ns = static_cast<int64_t>(static_cast<double>(i) * 1e9 / rate);

  run.epfd = epoll_create1(EPOLL_CLOEXEC);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  itimerspec its{};
  int64_t interval = static_cast<int64_t>(1e9 / rate);
  if (interval < 50000) interval = 50000;  // at most 20,000 wake-ups a second; sends catch up
  its.it_interval = {static_cast<time_t>(interval / 1000000000),
                     static_cast<long>(interval % 1000000000)};
  its.it_value = {0, 1};
  epoll_event tev{};
  tev.events = EPOLLIN;
  tev.data.u64 = 0;
  epoll_ctl(run.epfd, EPOLL_CTL_ADD, tfd, &tev);
  run.start_ns = now_ns();
  timerfd_settime(tfd, 0, &its, nullptr);

  size_t next = 0;
  int64_t deadline = 0;
  std::vector<epoll_event> events(1024);
  while (next < total || run.in_flight > 0) {
    int64_t t = now_ns() - run.start_ns;
    while (next < total && run.reqs[next].scheduled_ns <= t) run.start(next++);
    if (next == total && deadline == 0) {
      deadline = t + static_cast<int64_t>(timeout * 1e9);
      close(tfd);
      tfd = -1;
    }
    if (deadline != 0 && t >= deadline) break;
    int n = epoll_wait(run.epfd, events.data(), static_cast<int>(events.size()),
                       deadline != 0 ? 100 : -1);
    for (int k = 0; k < n; ++k) {
      uint64_t id = events[k].data.u64;
      if (id == 0) {
        uint64_t expirations;
        if (read(tfd, &expirations, sizeof expirations) < 0) continue;
      } else {
        run.on_event(static_cast<size_t>(id - 1), events[k].events);
      }
    }
  }
  for (size_t i = 0; i < total; ++i)
    if (run.reqs[i].status == -1) run.finish(i, 0);  // no answer within the timeout
  std::string out;
  out.reserve(total * 24);
  char line[64];
  for (const Request &r : run.reqs) {
    int64_t server_ns = r.latency_ns - (r.connect_ns - r.scheduled_ns);
    int len = std::snprintf(line, sizeof line, "%lld %d %lld %lld\n",
                            static_cast<long long>(r.scheduled_ns / 1000), r.status,
                            static_cast<long long>(r.latency_ns / 1000),
                            static_cast<long long>(server_ns / 1000));
    out.append(line, static_cast<size_t>(len));
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fprintf(stderr, "loadgen: %zu requests, sending fell behind schedule by at most %.3f ms\n",
               total, static_cast<double>(run.max_lag_ns) / 1e6);
  return 0;
}
