#include "admin.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "admin_page.hpp"
#include "config.hpp"
#include "http.hpp"
#include "pool.hpp"
#include "server.hpp"
#include "stats.hpp"
#include "util.hpp"
#include "valve/valve.h"

namespace valve {

namespace {

constexpr size_t kMaxConns = 64;
constexpr size_t kMaxHead = 16 * 1024;
constexpr size_t kMaxBody = 16 * 1024;
constexpr double kRequestSeconds = 10;  // to receive a request; its answer may take longer

using Params = std::vector<std::pair<std::string, std::string>>;

std::string percent_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() &&
               std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

// name=value pairs of a query string or an application/x-www-form-urlencoded body.
void parse_form(std::string_view text, Params &out) {
  while (!text.empty()) {
    size_t amp = text.find('&');
    std::string_view pair = text.substr(0, amp);
    text = amp == std::string_view::npos ? std::string_view{} : text.substr(amp + 1);
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    out.emplace_back(percent_decode(pair.substr(0, eq)),
                     eq == std::string_view::npos ? "" : percent_decode(pair.substr(eq + 1)));
  }
}

std::string json_error(int status, std::string_view message) {
  return fmt::format("{{\"error\":\"{}\",\"status\":{}}}\n", json_escape(message), status);
}

}  // namespace

// One admin connection: one request, one answer, then the connection closes.
class AdminServer::Conn final : public HttpParser::Handler {
 public:
  Conn(AdminServer &admin, bool unix_socket)
      : admin_(admin),
        server_(admin.server_),
        parser_(HTTP_REQUEST, *this, kMaxHead),
        timer_(server_.loop(), [this] { close(); }) {
    if (unix_socket) {
      pipe_ = new_handle<uv_pipe_t>(this);
      uv_pipe_init(server_.loop(), pipe_, 0);
    } else {
      tcp_ = new_handle<uv_tcp_t>(this);
      uv_tcp_init(server_.loop(), tcp_);
    }
  }
  ~Conn() override {
    *alive_ = false;
    close_handle(tcp_);
    close_handle(pipe_);
  }
  Conn(const Conn &) = delete;
  Conn &operator=(const Conn &) = delete;

  uv_stream_t *stream() const {
    return tcp_ ? reinterpret_cast<uv_stream_t *>(tcp_) : reinterpret_cast<uv_stream_t *>(pipe_);
  }

  int accept(uv_stream_t *listener) {
    int rc = uv_accept(listener, stream());
    if (rc != 0) return rc;
    timer_.start(kRequestSeconds);
    uv_read_start(stream(), alloc_read_buffer, [](uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
      auto *self = static_cast<Conn *>(s->data);
      if (!self) return;
      if (n < 0) return self->close();
      size_t consumed = 0;
      if (n == 0 || self->answered_ || self->complete_) return;
      llhttp_errno_t err = self->parser_.execute(buf->base, static_cast<size_t>(n), &consumed);
      if (err != HPE_OK && err != HPE_PAUSED && !self->answered_)
        self->respond(
            400, "application/json",
            json_error(400, fmt::format("malformed request: {}", self->parser_.error_reason())));
    });
    return 0;
  }

  int on_head(Head &head) override {
    head_ = std::move(head);
    return 0;
  }
  int on_body(std::string_view data) override {
    if (body_.size() + data.size() > kMaxBody) {
      respond(413, "application/json", json_error(413, "the request body is too large"));
      return -1;
    }
    body_.append(data);
    return 0;
  }
  int on_complete() override {
    complete_ = true;
    timer_.stop();  // POST /reload answers when the reload ends, which may take minutes
    uv_read_stop(stream());
    route();
    return HPE_PAUSED;
  }

  void respond(int status, std::string_view type, std::string body,
               std::string_view extra_headers = {}) {
    if (answered_) return;
    answered_ = true;
    uv_read_stop(stream());
    std::string out = fmt::format(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: "
        "no-store\r\n{}Connection: close\r\n\r\n",
        status, status_reason(status), type, body.size(), extra_headers);
    if (head_.method != "HEAD") out += body;
    int rc = write_string(stream(), std::move(out), [](uv_stream_t *s, int) {
      if (auto *self = static_cast<Conn *>(s->data)) self->close();
    });
    if (rc != 0) close();
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    timer_.stop();
    close_handle(tcp_);
    close_handle(pipe_);
    server_.defer_erase(admin_.conns_, this);
  }

 private:
  void json(int status, std::string body) { respond(status, "application/json", std::move(body)); }
  void error(int status, std::string_view message, std::string_view extra = {}) {
    respond(status, "application/json", json_error(status, message), extra);
  }

  void route() {
    std::string_view target = head_.target;
    size_t q = target.find('?');
    std::string_view path = target.substr(0, q);
    Params params;
    if (q != std::string_view::npos) parse_form(target.substr(q + 1), params);
    bool get = head_.method == "GET" || head_.method == "HEAD";
    bool post = head_.method == "POST";
    auto only = [&](bool ok, std::string_view allow) {
      if (!ok)
        error(405, fmt::format("{} {} is not allowed: use {}", head_.method, path, allow),
              fmt::format("Allow: {}\r\n", allow));
      return ok;
    };
    if (path == "/") {
      if (only(get, "GET")) respond(200, "text/html; charset=utf-8", admin_page_html());
    } else if (path == "/status") {
      if (only(get, "GET")) json(200, server_.status_json_now() + "\n");
    } else if (path == "/metrics") {
      if (only(get, "GET")) respond(200, "text/plain; version=0.0.4", metrics_text(server_));
    } else if (path == "/healthz") {
      if (only(get, "GET")) json(200, "{\"status\":\"ok\"}\n");
    } else if (path == "/readyz") {
      if (!only(get, "GET")) return;
      std::string why;
      if (server_.ready(&why)) {
        json(200, "{\"ready\":true}\n");
      } else {
        json(503, fmt::format("{{\"ready\":false,\"error\":\"{}\",\"status\":503}}\n",
                              json_escape(why)));
      }
    } else if (path == "/reload") {
      if (only(post, "POST")) reload();
    } else if (path == "/scale") {
      if (!only(post, "POST")) return;
      if (const std::string *type = head_.find("content-type");
          type && type->starts_with("application/x-www-form-urlencoded"))
        parse_form(body_, params);
      scale(params);
    } else {
      error(404, fmt::format("no such admin endpoint: {} (try /status, /metrics, /healthz, "
                             "/readyz, /reload, /scale)",
                             path));
    }
  }

  void reload() {
    if (server_.stopping()) return error(503, "the server is shutting down");
    server_.reload_all([this, alive = alive_](const ReloadResult &r) {
      if (!*alive) return;
      if (!r.ok) return error(r.error == "the server is shutting down" ? 503 : 502, r.error);
      json(200,
           fmt::format(R"({{"result":"reloaded","generation":{},"workers":{},"duration_ms":{}}})"
                       "\n",
                       r.generation, r.workers, r.duration_ms));
    });
  }

  void scale(const Params &params) {
    std::optional<std::string> n_min, n_max;
    std::string app;
    for (const auto &[name, value] : params) {
      if (name == "app") {
        app = value;
      } else if (name == "n-min" || name == "n_min") {
        n_min = value;
      } else if (name == "n-max" || name == "n_max") {
        n_max = value;
      } else {
        return error(
            400, fmt::format("{} {}: unknown parameter (use n-min, n-max and app)", name, value));
      }
    }
    if (!n_min && !n_max)
      return error(400, "give n-min, n-max or both, like /scale?n-min=2&n-max=8");
    if (auto err = server_.scale(n_min, n_max, app)) return error(400, *err);
    std::string why;
    const App *scaled = server_.find_app(app, &why);
    json(200, fmt::format("{{\"app\":\"{}\",\"n_min\":{},\"n_max\":{}}}\n",
                          json_escape(scaled->name), scaled->config.n_min, scaled->config.n_max));
  }

  AdminServer &admin_;
  Server &server_;
  uv_tcp_t *tcp_ = nullptr;
  uv_pipe_t *pipe_ = nullptr;
  HttpParser parser_;
  Timer timer_;
  Head head_;
  std::string body_;
  bool answered_ = false;
  bool complete_ = false;
  bool closed_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

AdminServer::AdminServer(Server &server) : server_(server) {}

AdminServer::~AdminServer() { close(); }

int AdminServer::listen(const std::string &spec, std::string *why) {
  auto addr = parse_listen_address(spec, why);
  if (!addr) return VALVE_EINVALID;
  auto on_conn = [](uv_stream_t *s, int status) {
    if (auto *self = static_cast<AdminServer *>(s->data); self && status == 0)
      self->on_connection(s);
  };
  int rc = 0;
  if (addr->is_unix()) {
    // Created 0600: only valve's own user may reload or scale it.
    unix_path_ = addr->path;
    struct stat st {};
    if (lstat(unix_path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(unix_path_.c_str());
    pipe_ = new_handle<uv_pipe_t>(this);
    uv_pipe_init(server_.loop(), pipe_, 0);
    mode_t old = umask(0177);
    rc = uv_pipe_bind(pipe_, unix_path_.c_str());
    umask(old);
    if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t *>(pipe_), 64, on_conn);
    address_ = "unix:" + unix_path_;
    if (rc != 0) unix_path_.clear();
  } else {
    sockaddr_storage sa{};
    if (addr->host.find(':') != std::string::npos) {
      uv_ip6_addr(addr->host.c_str(), addr->port, reinterpret_cast<sockaddr_in6 *>(&sa));
    } else {
      uv_ip4_addr(addr->host.c_str(), addr->port, reinterpret_cast<sockaddr_in *>(&sa));
    }
    tcp_ = new_handle<uv_tcp_t>(this);
    uv_tcp_init(server_.loop(), tcp_);
    rc = uv_tcp_bind(tcp_, reinterpret_cast<const sockaddr *>(&sa), 0);
    if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t *>(tcp_), 64, on_conn);
    if (rc == 0) {
      sockaddr_storage bound{};
      int len = sizeof bound;
      uv_tcp_getsockname(tcp_, reinterpret_cast<sockaddr *>(&bound), &len);
      bool v6 = bound.ss_family == AF_INET6;
      int port = ntohs(v6 ? reinterpret_cast<sockaddr_in6 *>(&bound)->sin6_port
                          : reinterpret_cast<sockaddr_in *>(&bound)->sin_port);
      address_ =
          v6 ? fmt::format("[{}]:{}", addr->host, port) : fmt::format("{}:{}", addr->host, port);
    }
  }
  if (rc != 0) {
    if (why) *why = fmt::format("cannot listen there: {}", uv_message(rc));
    close();
    address_.clear();
  }
  return rc;
}

void AdminServer::on_connection(uv_stream_t *listener) {
  auto conn = std::make_unique<Conn>(*this, pipe_ != nullptr);
  if (conn->accept(listener) != 0) return;
  if (conns_.size() >= kMaxConns) {
    conn->respond(503, "application/json", json_error(503, "too many admin connections"));
  }
  conns_.push_back(std::move(conn));
}

void AdminServer::close() {
  close_handle(tcp_);
  close_handle(pipe_);
  if (!unix_path_.empty()) unlink(unix_path_.c_str());
  unix_path_.clear();
  std::vector<Conn *> all;
  for (auto &c : conns_) all.push_back(c.get());
  for (Conn *c : all) c->close();
}

std::string metrics_text(Server &server) {
  const Stats &s = server.stats();
  MetricsText m;
  m.gauge("valve_build_info", "valve's version", 1, {{"version", VALVE_VERSION_STRING}});
  m.gauge("valve_start_time_seconds", "when valve started, in seconds since the Unix epoch",
          s.started_unix_ms / 1000.0);
  static const char *const kClasses[] = {"1xx", "1xx", "2xx", "3xx", "4xx", "5xx"};
  // Every app named since the start, so no counter goes backwards.
  std::map<std::string, Stats::AppTotals> by_app = s.by_app;
  for (const auto &app : server.apps()) by_app[app->name];
  for (const auto &[app, totals] : by_app) {
    for (int c = 1; c <= 5; ++c)
      m.counter("valve_requests_total", "answered requests by app and status class",
                static_cast<double>(totals.answers[c]), {{"app", app}, {"code", kClasses[c]}});
  }
  for (const auto &[app, totals] : by_app)
    m.counter("valve_worker_busy_seconds_total",
              "seconds workers spent serving requests (dispatch to the end of the answer; "
              "WebSockets aside), by app: over the worker count, how busy the workers are",
              totals.busy_seconds, {{"app", app}});
  m.histogram("valve_request_duration_seconds",
              "seconds from a request's arrival to the end of its answer", s.latency);
  m.histogram("valve_queue_wait_seconds", "seconds a request waited for a worker", s.queue_wait);
  m.gauge("valve_requests_in_progress", "requests being served or waiting",
          static_cast<double>(server.requests_in_progress()));
  m.gauge("valve_client_connections", "open client connections",
          static_cast<double>(server.client_connections()));
  // Each app's pool. While a reload replaces an app, its old and new pools add up under its name.
  struct PoolGauges {
    double queue = 0, memory = 0, generation = 0, n_min = 0, n_max = 0;
    std::map<std::string, double> states;
  };
  std::map<std::string, PoolGauges> pools;
  for (const auto &app : server.apps()) {
    const Pool &pool = *app->pool;
    PoolGauges &g = pools[app->name];
    g.queue += static_cast<double>(pool.queue_depth());
    g.memory += static_cast<double>(pool.resident_bytes());
    for (const auto &[state, n] : pool.count_states()) g.states[state] += static_cast<double>(n);
    if (!app->retiring && !app->pending) {
      g.generation = static_cast<double>(pool.generation());
      g.n_min = static_cast<double>(app->config.n_min);
      g.n_max = static_cast<double>(app->config.n_max);
    }
  }
  for (const auto &[a, g] : pools) {
    m.gauge("valve_queue_depth", "requests waiting for a worker", g.queue, {{"app", a}});
    for (const auto &[state, n] : g.states)
      m.gauge("valve_workers", "workers by state", n, {{"app", a}, {"state", state}});
    m.gauge("valve_workers_resident_memory_bytes", "resident memory of all workers", g.memory,
            {{"app", a}});
    m.gauge("valve_generation", "the worker generation that takes new requests", g.generation,
            {{"app", a}});
    m.gauge("valve_pool_min_workers", "n-min", g.n_min, {{"app", a}});
    m.gauge("valve_pool_max_workers", "n-max", g.n_max, {{"app", a}});
  }
  m.counter("valve_worker_launches_total", "workers launched", static_cast<double>(s.launches));
  m.counter("valve_worker_exits_total", "workers that exited", static_cast<double>(s.exits));
  m.counter("valve_worker_crashes_total", "workers that exited without being asked to",
            static_cast<double>(s.crashes));
  m.counter("valve_template_launches_total", "preload templates launched (--preload)",
            static_cast<double>(s.template_launches));
  m.counter("valve_worker_forks_total", "workers forked from a preload template",
            static_cast<double>(s.forks));
  m.counter("valve_fork_fallbacks_total",
            "workers launched plainly because no preload template could fork them",
            static_cast<double>(s.fork_fallbacks));
  m.counter("valve_request_timeouts_total", "requests a worker did not answer within --timeout",
            static_cast<double>(s.timeouts));
  m.counter("valve_rejections_total",
            "requests refused with 503 (queue full, queue timeout, shutting down)",
            static_cast<double>(s.rejected));
  m.counter("valve_retries_total", "requests sent again after their worker failed",
            static_cast<double>(s.retries));
  m.counter("valve_websockets_total", "WebSockets opened (the worker answered 101)",
            static_cast<double>(s.websockets));
  m.gauge("valve_websockets_open", "WebSockets open now (each also a request in progress)",
          static_cast<double>(s.websockets_open));
  m.counter("valve_health_check_failures_total", "failed active health checks",
            static_cast<double>(s.health_check_failures));
  // Every label value is written, 0 until it happens, so the series exist from the start.
  auto count_of = [](const std::map<std::string, uint64_t> &counts, const char *key) {
    auto it = counts.find(key);
    return it == counts.end() ? 0.0 : static_cast<double>(it->second);
  };
  for (const char *reason : {"max-requests", "max-rss", "reload", "unhealthy"})
    m.counter("valve_worker_recycles_total", "workers replaced gracefully, by reason",
              count_of(s.recycles, reason), {{"reason", reason}});
  for (const char *result : {"ok", "failed"})
    m.counter("valve_reloads_total", "reloads by result", count_of(s.reloads, result),
              {{"result", result}});
  return m.str();
}

}  // namespace valve
