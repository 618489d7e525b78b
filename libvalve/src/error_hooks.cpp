#include "error_hooks.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <charconv>
#include <cstring>

#include "context.hpp"
#include "line_reader.hpp"
#include "process.hpp"
#include "util.hpp"

namespace valve {

std::optional<HookUrl> parse_hook_url(std::string_view url, std::string *why) {
  auto fail = [&](std::string_view problem) {
    *why = fmt::format("{}: expected http://HOST[:PORT][/PATH]", problem);
    return std::nullopt;
  };
  constexpr std::string_view kScheme = "http://";
  if (url.size() < kScheme.size() || !iequals(url.substr(0, kScheme.size()), kScheme))
    return fail(url.starts_with("https:") ? "https is not supported" : "not an http:// URL");
  std::string_view rest = url.substr(kScheme.size());
  size_t slash = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, slash);
  HookUrl out;
  out.path = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (out.path.front() == '?') out.path.insert(0, "/");
  if (authority.find('@') != std::string_view::npos) return fail("credentials in the URL");
  std::string_view port;
  if (authority.starts_with('[')) {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return fail("an unclosed [");
    out.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty() && after.front() != ':') return fail("text after ]");
    if (!after.empty()) port = after.substr(1);
  } else {
    size_t colon = authority.find(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
  }
  if (out.host.empty()) return fail("no host");
  if (!port.empty() || authority.ends_with(':')) {
    int n = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), n);
    if (ec != std::errc() || end != port.data() + port.size() || n < 1 || n > 65535)
      return fail(fmt::format("port \"{}\" is not 1 to 65535", port));
    out.port = n;
  }
  for (char c : out.path) {
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f)
      return fail("a space or control in the path");
  }
  out.host_header = std::string(authority);
  return out;
}

// One report to one hook: a command's run, or one POST.
class ErrorHooks::Delivery {
 public:
  Delivery(ErrorHooks &hooks, std::string body, bool command)
      : hooks_(hooks),
        body_(std::move(body)),
        command_(command),
        poll_(hooks.ctx_.loop(), [this] { check_exit(); }),
        deadline_(hooks.ctx_.loop(), [this] { on_deadline(); }) {}
  ~Delivery() {
    end_process();
    if (gai_) {
      gai_->data = nullptr;  // its callback frees it
      uv_cancel(reinterpret_cast<uv_req_t *>(gai_));
    }
    close_handle(tcp_);
  }
  Delivery(const Delivery &) = delete;
  Delivery &operator=(const Delivery &) = delete;

  void start() {
    deadline_.start(hooks_.timeout_);
    command_ ? run_command() : post();
  }
  bool reaped(pid_t pid, int wait_status) {
    if (pid != pid_) return false;
    exited(wait_status);
    return true;
  }

 private:
  void done(const char *result, std::string_view why = {}) {
    if (over_) return;
    over_ = true;
    poll_.stop();
    deadline_.stop();
    hooks_.finished(this, result, why);
  }

  // ---- the command
  void run_command() {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) return done("failed", uv_message(-errno));
    // The report fits in the pipe (a few KB against 64 KB): written whole before the command runs.
    fcntl(p[1], F_SETFL, fcntl(p[1], F_GETFL) | O_NONBLOCK);
    std::string text = body_ + "\n";
    ssize_t n = write(p[1], text.data(), text.size());
    ::close(p[1]);
    if (n != static_cast<ssize_t>(text.size())) {
      ::close(p[0]);
      return done("failed", "the report did not fit in the command's stdin pipe");
    }
    SpawnSpec spec;
    set_command(spec, hooks_.command_);
    spec.env = current_environment();
    spec.stdin_fd = p[0];
    Spawned child;
    int rc = spawn_process(spec, &child);
    ::close(p[0]);
    if (rc != 0) return done("failed", uv_message(rc));
    pid_ = child.pid;
    if (child.pidfd >= 0) ::close(child.pidfd);
    const Logger &log = hooks_.ctx_.log();
    out_ = std::make_unique<LineReader>(
        hooks_.ctx_.loop(), child.out_fd,
        [&log](std::string_view l) { log.info("error-hook-command: {}", l); });
    err_ = std::make_unique<LineReader>(
        hooks_.ctx_.loop(), child.err_fd,
        [&log](std::string_view l) { log.info("error-hook-command: {}", l); });
    poll_.start(0.02, 0.02);
  }

  void check_exit() {
    if (pid_ <= 0) return;
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exited(status);
    } else if (r < 0 && errno == ECHILD) {
      exited(kExitUnknown);  // reaped by another: its status is unknown
    }
  }

  void exited(int wait_status) {
    pid_ = -1;
    if (killed_)
      return done("timeout", fmt::format("killed after {} s", format_seconds(hooks_.timeout_)));
    if (wait_status == kExitUnknown) return done("ok");
    if (WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0) return done("ok");
    done("failed", describe_exit(wait_status));
  }

  // Kills a command still running and reaps it (valve is stopping, or the delivery was dropped).
  void end_process() {
    if (pid_ <= 0) return;
    signal_group(pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }

  void on_deadline() {
    if (command_ && pid_ > 0) {
      killed_ = true;
      signal_group(pid_, SIGKILL);  // reaped by the next check
      return;
    }
    done("timeout", fmt::format("no answer within {} s", format_seconds(hooks_.timeout_)));
  }

  // ---- the POST
  void post() {
    const HookUrl &url = *hooks_.url_;
    gai_ = new uv_getaddrinfo_t{};
    gai_->data = this;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    std::string port = std::to_string(url.port);
    int rc = uv_getaddrinfo(
        hooks_.ctx_.loop(), gai_,
        [](uv_getaddrinfo_t *req, int status, addrinfo *res) {
          auto *self = static_cast<Delivery *>(req->data);
          delete req;
          if (self) {
            self->gai_ = nullptr;
            self->on_resolved(status, res);
          }
          uv_freeaddrinfo(res);
        },
        url.host.c_str(), port.c_str(), &hints);
    if (rc != 0) {
      delete gai_;
      gai_ = nullptr;
      done("failed", fmt::format("{}: {}", url.host, uv_message(rc)));
    }
  }

  void on_resolved(int status, addrinfo *res) {
    if (status != 0 || !res)
      return done("failed", fmt::format("{}: {}", hooks_.url_->host, uv_message(status)));
    tcp_ = new_handle<uv_tcp_t>(this);
    uv_tcp_init(hooks_.ctx_.loop(), tcp_);
    auto *req = new uv_connect_t{};
    int rc = uv_tcp_connect(req, tcp_, res->ai_addr, [](uv_connect_t *r, int st) {
      auto *self = static_cast<Delivery *>(r->handle->data);
      delete r;
      if (self) self->on_connected(st);
    });
    if (rc != 0) {
      delete req;
      done("failed", uv_message(rc));
    }
  }

  void on_connected(int status) {
    if (status != 0) return done("failed", uv_message(status));
    const HookUrl &url = *hooks_.url_;
    std::string request = fmt::format(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: valve\r\nContent-Type: application/json\r\n"
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        url.path, url.host_header, body_.size());
    request += body_;
    auto *stream = reinterpret_cast<uv_stream_t *>(tcp_);
    if (int rc = write_string(stream, std::move(request)); rc != 0)
      return done("failed", uv_message(rc));
    uv_read_start(stream, alloc_read_buffer, [](uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
      if (auto *self = static_cast<Delivery *>(s->data)) self->on_read(n, buf);
    });
  }

  void on_read(ssize_t n, const uv_buf_t *buf) {
    if (n < 0) return done("failed", "the connection ended before an HTTP status line");
    answer_.append(buf->base, static_cast<size_t>(n));
    size_t eol = answer_.find("\r\n");
    if (eol == std::string::npos) {
      if (answer_.size() > 1024) done("failed", "no HTTP status line in the first 1 KB");
      return;
    }
    std::string_view line(answer_.data(), eol);
    // HTTP/1.1 204 No Content
    int status = 0;
    if (line.size() >= 12 && line.starts_with("HTTP/1."))
      std::from_chars(line.data() + 9, line.data() + 12, status);
    if (status >= 200 && status < 300) return done("ok");
    done("failed", fmt::format("answered \"{}\"", escape_for_log(line.substr(0, 200))));
  }

  ErrorHooks &hooks_;
  std::string body_;
  bool command_;
  bool over_ = false;
  bool killed_ = false;
  pid_t pid_ = -1;
  std::unique_ptr<LineReader> out_, err_;
  Timer poll_;
  Timer deadline_;
  uv_getaddrinfo_t *gai_ = nullptr;
  uv_tcp_t *tcp_ = nullptr;
  std::string answer_;
};

ErrorHooks::ErrorHooks(Context &ctx)
    : ctx_(ctx),
      command_(ctx.config().error_hook_command),
      timeout_(ctx.config().error_hook_timeout),
      calls_(ctx.deferred()) {
  if (!ctx.config().error_hook_url.empty()) {
    std::string why;
    url_ = parse_hook_url(ctx.config().error_hook_url, &why);  // checked with the options
  }
}

ErrorHooks::~ErrorHooks() { close(); }

void ErrorHooks::send(std::string report_json) {
  if (closed_) return;
  if (!command_.empty()) waiting_.emplace_back(report_json, true);
  if (url_) waiting_.emplace_back(std::move(report_json), false);
  while (waiting_.size() > kHookQueue) {
    ctx_.stats().error_hooks["dropped"]++;
    ctx_.log().warn("error hooks: {} deliveries running and {} waiting: a report is dropped",
                    running_.size(), waiting_.size() - 1);
    waiting_.pop_front();
  }
  pump();
}

void ErrorHooks::pump() {
  while (!closed_ && running_.size() < kHookDeliveries && !waiting_.empty()) {
    auto [body, command] = std::move(waiting_.front());
    waiting_.pop_front();
    Delivery *d =
        running_.emplace_back(std::make_unique<Delivery>(*this, std::move(body), command)).get();
    d->start();
  }
}

void ErrorHooks::finished(Delivery *d, const char *result, std::string_view why) {
  ctx_.stats().error_hooks[result]++;
  if (!why.empty()) ctx_.log().warn("error hook ({}): {}", result, why);
  ctx_.defer_erase(running_, d);
  // Not from inside start(): a delivery that fails at once would recurse.
  calls_.post([this] { pump(); });
}

bool ErrorHooks::on_reaped(pid_t pid, int wait_status) {
  for (auto &d : running_) {
    if (d->reaped(pid, wait_status)) return true;
  }
  return false;
}

void ErrorHooks::close() {
  if (closed_) return;
  closed_ = true;
  if (!running_.empty() || !waiting_.empty())
    ctx_.log().info("error hooks: {} deliveries ended and {} dropped as valve stops",
                    running_.size(), waiting_.size());
  waiting_.clear();
  running_.clear();
}

}  // namespace valve
