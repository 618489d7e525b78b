#include "admin.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "admin_auth.hpp"
#include "admin_page.hpp"
#include "app.hpp"
#include "config.hpp"
#include "context.hpp"
#include "http.hpp"
#include "json.hpp"
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
  return json_text({{"error", message}, {"status", status}}) + "\n";
}

}  // namespace

// One admin connection: one request, one answer, then the connection closes.
class AdminServer::Conn final : public HttpParser::Handler {
 public:
  Conn(AdminServer &admin, bool unix_socket)
      : admin_(admin),
        host_(admin.host_),
        parser_(HTTP_REQUEST, *this, kMaxHead),
        timer_(admin.ctx_.loop(), [this] { close(); }) {
    if (unix_socket) {
      pipe_ = new_handle<uv_pipe_t>(this);
      uv_pipe_init(admin.ctx_.loop(), pipe_, 0);
    } else {
      tcp_ = new_handle<uv_tcp_t>(this);
      uv_tcp_init(admin.ctx_.loop(), tcp_);
    }
  }
  ~Conn() override {
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
    // One waiting for a reload lives until the reload answers (a reload is never abandoned).
    if (!reload_pending_) admin_.ctx_.defer_erase(admin_.conns_, this);
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
    // The probes answer anyone (a kubelet sends no token), and the page holds no data: it asks
    // for the token and sends it on its own requests.
    bool open = path == "/" || path == "/healthz" || path == "/readyz";
    if (!open && !authorized()) return;
    auto only = [&](bool ok, std::string_view allow) {
      if (!ok)
        error(405, fmt::format("{} {} is not allowed: use {}", head_.method, path, allow),
              fmt::format("Allow: {}\r\n", allow));
      return ok;
    };
    if (path == "/") {
      if (only(get, "GET")) respond(200, "text/html; charset=utf-8", admin_page_html());
    } else if (path == "/status") {
      if (only(get, "GET")) json(200, host_.status_json_now() + "\n");
    } else if (path == "/metrics") {
      if (only(get, "GET")) respond(200, "text/plain; version=0.0.4", host_.metrics_text());
    } else if (path == "/errors") {
      if (only(get, "GET")) json(200, host_.errors_json());
    } else if (path == "/healthz") {
      if (only(get, "GET")) json(200, json_text({{"status", "ok"}}) + "\n");
    } else if (path == "/readyz") {
      if (!only(get, "GET")) return;
      std::string why;
      if (host_.ready(&why)) {
        json(200, json_text({{"ready", true}}) + "\n");
      } else {
        json(503, json_text({{"ready", false}, {"error", why}, {"status", 503}}) + "\n");
      }
    } else if (path == "/reload") {
      if (only(post, "POST")) reload();
    } else if (path == "/cache/purge" || path == "/cache") {
      // POST /cache/purge or DELETE /cache, ?app=NAME&prefix=/PATH (a form body too).
      bool del = head_.method == "DELETE";
      if (!only(path == "/cache" ? del : post, path == "/cache" ? "DELETE" : "POST")) return;
      if (const std::string *type = head_.find("content-type");
          type && type->starts_with("application/x-www-form-urlencoded"))
        parse_form(body_, params);
      purge(params);
    } else if (path == "/scale") {
      if (!only(post, "POST")) return;
      if (const std::string *type = head_.find("content-type");
          type && type->starts_with("application/x-www-form-urlencoded"))
        parse_form(body_, params);
      scale(params);
    } else {
      error(404,
            fmt::format("no such admin endpoint: {} (try /status, /metrics, /errors, /healthz, "
                        "/readyz, /reload, /scale, /cache/purge)",
                        path));
    }
  }

  // Whether the request carries the token, when one is set; else it has had its 401.
  bool authorized() {
    const std::string &token = admin_.token_;
    if (token.empty()) return true;
    const std::string *header = head_.find("authorization");
    std::optional<std::string_view> given = header ? bearer_token(*header) : std::nullopt;
    if (given && tokens_equal(*given, token)) return true;
    std::string_view problem = !header  ? "no Authorization header"
                               : !given ? "an Authorization header that is not Bearer TOKEN"
                                        : "a wrong token";
    admin_.log_refusal(head_.method, head_.target.substr(0, head_.target.find('?')), problem);
    error(401,
          fmt::format("this admin interface needs a bearer token (Authorization: Bearer TOKEN); "
                      "the request had {}",
                      problem),
          given ? "WWW-Authenticate: Bearer realm=\"valve admin\", error=\"invalid_token\"\r\n"
                : "WWW-Authenticate: Bearer realm=\"valve admin\"\r\n");
    return false;
  }

  void reload() {
    if (admin_.ctx_.stopping()) return error(503, "the server is shutting down");
    reload_pending_ = true;
    host_.reload([this](const ReloadResult &r) {
      reload_pending_ = false;
      if (closed_) return admin_.ctx_.defer_erase(admin_.conns_, this);
      if (!r.ok) return error(r.error == "the server is shutting down" ? 503 : 502, r.error);
      json(200, json_text({{"result", "reloaded"},
                           {"generation", r.generation},
                           {"workers", r.workers},
                           {"duration_ms", r.duration_ms}}) +
                    "\n");
    });
  }

  void purge(const Params &params) {
    std::string app, prefix;
    for (const auto &[name, value] : params) {
      if (name == "app") {
        app = value;
      } else if (name == "prefix") {
        if (!value.empty() && value.front() != '/')
          return error(400, fmt::format("prefix {}: expected a path starting with /", value));
        prefix = value;
      } else {
        return error(400,
                     fmt::format("{} {}: unknown parameter (use app and prefix)", name, value));
      }
    }
    size_t purged = 0;
    if (auto err = host_.purge_cache(app, prefix, &purged)) return error(400, *err);
    json(200, json_text({{"app", app}, {"prefix", prefix}, {"purged", purged}}) + "\n");
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
    if (auto err = host_.scale(n_min, n_max, app)) return error(400, *err);
    std::string why;
    const App *scaled = host_.find_app(app, &why);
    json(200, json_text({{"app", scaled->name},
                         {"n_min", scaled->config.n_min},
                         {"n_max", scaled->config.n_max}}) +
                  "\n");
  }

  AdminServer &admin_;
  Host &host_;
  uv_tcp_t *tcp_ = nullptr;
  uv_pipe_t *pipe_ = nullptr;
  HttpParser parser_;
  Timer timer_;
  Head head_;
  std::string body_;
  bool answered_ = false;
  bool complete_ = false;
  bool closed_ = false;
  bool reload_pending_ = false;
};

AdminServer::AdminServer(Context &ctx, Host &host) : ctx_(ctx), host_(host) {}

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
    uv_pipe_init(ctx_.loop(), pipe_, 0);
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
    uv_tcp_init(ctx_.loop(), tcp_);
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

void AdminServer::log_refusal(std::string_view method, std::string_view path,
                              std::string_view problem) {
  // One line per 10 s at most: a client guessing tokens must not flood the log.
  uint64_t now = uv_now(ctx_.loop());
  if (refusals_logged_at_ != 0 && now - refusals_logged_at_ < 10000) {
    ++refusals_unlogged_;
    return;
  }
  std::string more =
      refusals_unlogged_ == 0
          ? std::string()
          : fmt::format(" ({} more refused since the last such line)", refusals_unlogged_);
  ctx_.log().warn("admin: refused {} {}: {}{}", method, path, problem, more);
  refusals_logged_at_ = now == 0 ? 1 : now;
  refusals_unlogged_ = 0;
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

}  // namespace valve
