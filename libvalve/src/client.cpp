#include "client.hpp"

#include <fmt/format.h>

#include <cctype>

#include "context.hpp"

namespace valve {

namespace {
constexpr size_t kMaxPipelined = 64 * 1024;
constexpr double kLingerSeconds = 2;

// The method of a well-formed request line (token SP target SP HTTP/d.d CRLF, RFC 9112 3) at the
// start of data, after any empty lines; empty when the line is malformed or not all there.
std::string_view unknown_method(std::string_view data) {
  size_t begin = data.find_first_not_of("\r\n");
  if (begin == std::string_view::npos) return {};
  size_t end = data.find("\r\n", begin);
  if (end == std::string_view::npos) return {};
  std::string_view line = data.substr(begin, end - begin);
  size_t first = line.find(' ');
  size_t second = line.find(' ', first + 1);
  if (first == std::string_view::npos || second == std::string_view::npos || first > 64) return {};
  std::string_view method = line.substr(0, first);
  std::string_view target = line.substr(first + 1, second - first - 1);
  std::string_view version = line.substr(second + 1);
  bool version_ok = version.size() == 8 && version.starts_with("HTTP/") &&
                    std::isdigit(static_cast<unsigned char>(version[5])) && version[6] == '.' &&
                    std::isdigit(static_cast<unsigned char>(version[7]));
  if (!is_token(method) || target.empty() || !version_ok) return {};
  for (unsigned char c : target) {
    if (c <= ' ' || c >= 0x7F) return {};
  }
  return method;
}
}  // namespace

ClientConn::ClientConn(Context &ctx, Host &host)
    : ctx_(ctx),
      host_(host),
      tcp_(new_handle<uv_tcp_t>(this)),
      parser_(HTTP_REQUEST, *this, ctx.config().max_header_size),
      timer_(ctx.loop(), [this] {
        if (closing_) {
          close();
        } else if (current_ == nullptr && parser_.in_message()) {
          fail(408, fmt::format("the request head did not arrive within {} s",
                                format_seconds(ctx_.config().header_timeout)));
        } else if (current_ == nullptr) {
          close();  // idle keep-alive connection
        }
      }) {
  uv_tcp_init(ctx.loop(), tcp_);
}

ClientConn::~ClientConn() { close_handle(tcp_); }

int ClientConn::accept(uv_stream_t *listener) {
  int rc = uv_accept(listener, reinterpret_cast<uv_stream_t *>(tcp_));
  if (rc != 0) return rc;
  uv_tcp_nodelay(tcp_, 1);
  sockaddr_storage addr{};
  int len = sizeof addr;
  char ip[64] = "unknown";
  if (uv_tcp_getpeername(tcp_, reinterpret_cast<sockaddr *>(&addr), &len) == 0) {
    if (addr.ss_family == AF_INET) {
      uv_ip4_name(reinterpret_cast<sockaddr_in *>(&addr), ip, sizeof ip);
    } else if (addr.ss_family == AF_INET6) {
      uv_ip6_name(reinterpret_cast<sockaddr_in6 *>(&addr), ip, sizeof ip);
    }
  }
  peer_ip_ = ip;
  peer_trusted_ = is_loopback_ip(peer_ip_);
  timer_.start(ctx_.config().header_timeout);
  set_block(kBody, false);
  return 0;
}

void ClientConn::set_block(Block b, bool on) {
  if (on) {
    blocks_ |= b;
  } else {
    blocks_ &= ~static_cast<unsigned>(b);
  }
  bool want = blocks_ == 0 && !closing_ && !eof_;
  if (want == reading_) return;
  if (want) {
    start_reading();
  } else {
    reading_ = false;
    uv_read_stop(reinterpret_cast<uv_stream_t *>(tcp_));
  }
}

void ClientConn::start_reading() {
  reading_ = true;
  uv_read_start(reinterpret_cast<uv_stream_t *>(tcp_), alloc_read_buffer,
                [](uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
                  if (auto *self = static_cast<ClientConn *>(s->data)) self->on_read(n, buf);
                });
}

void ClientConn::hold_body(bool hold) { set_block(kBody, hold); }

void ClientConn::start_tunnel() {
  tunnel_ = true;
  timer_.stop();
  paused_ = false;
  // The proxy bounds a tunnel (--tunnel-idle-timeout, --tunnel-max-lifetime, pings); TCP keepalive
  // also finds a peer that vanished.
  uv_tcp_keepalive(tcp_, 1, 60);
  std::string early = std::move(pipelined_);
  pipelined_.clear();
  set_block(kPipeline, false);
  if (!early.empty() && current_) current_->on_tunnel_data(early);
}

void ClientConn::on_read(ssize_t nread, const uv_buf_t *buf) {
  if (nread == 0) return;
  if (tunnel_ && !closing_) {
    if (nread < 0) {
      close();  // either side's close ends the tunnel
    } else if (current_) {
      current_->on_tunnel_data(std::string_view(buf->base, static_cast<size_t>(nread)));
    }
    return;
  }
  if (nread < 0) {
    // paused_ without current_: one answer is written and the next pipelined request is yet to be
    // taken up (response_done's deferred step), so the client's end may fall between the two.
    if (nread == UV_EOF && (current_ != nullptr || paused_) && !closing_) {
      // Half-closed after sending its request: answer it, then close.
      eof_ = true;
      reading_ = false;
      uv_read_stop(reinterpret_cast<uv_stream_t *>(tcp_));
      if (parser_.in_message()) close();  // the request itself is cut short
      return;
    }
    close();
    return;
  }
  if (closing_) return;  // lingering: drop what still arrives
  if (paused_) {
    pipelined_.append(buf->base, static_cast<size_t>(nread));
    if (pipelined_.size() > kMaxPipelined) set_block(kPipeline, true);
    return;
  }
  feed(buf->base, static_cast<size_t>(nread));
}

void ClientConn::feed(const char *data, size_t len) {
  bool fresh = !parser_.in_message();  // this read begins the next request
  size_t consumed = 0;
  llhttp_errno_t err = parser_.execute(data, len, &consumed);
  if (closing_) return;
  if (err == HPE_OK) {
    // Answered now, rather than at --header-timeout: no header lines follow an HTTP/0.9 line.
    if (parser_.http09_request_line() && !current_)
      fail(505, "only HTTP/1.0 and HTTP/1.1 are served");
    return;
  }
  if (err == HPE_PAUSED_UPGRADE && !tunnel_) {
    // A declined upgrade (h2c, or a WebSocket the worker refused): what follows is HTTP again.
    parser_.resume_after_upgrade();
    if (consumed < len) feed(data + consumed, len - consumed);
    return;
  }
  if (err == HPE_PAUSED) {
    paused_ = true;
    pipelined_.append(data + consumed, len - consumed);
    if (pipelined_.size() > kMaxPipelined) set_block(kPipeline, true);
    return;
  }
  parse_error(err, fresh ? std::string_view(data, len) : std::string_view());
}

void ClientConn::parse_error(llhttp_errno_t err, std::string_view start) {
  int status = parser_.error_status();
  std::string message = fmt::format("malformed request: {}", parser_.error_reason());
  if (err == HPE_INVALID_METHOD) {
    // A method is any token (RFC 9110 9.1); llhttp knows a fixed list. A well-formed one it does
    // not know is not implemented (501), not a malformed request.
    if (std::string_view method = unknown_method(start); !method.empty()) {
      status = 501;
      message = fmt::format("the method {} is not implemented", method);
    }
  } else if (status != 400) {
    message = parser_.error_reason();
  }
  if (parser_.limit_hit() == HttpParser::Limit::start_line) {
    status = 414;
    message = fmt::format("the request line is longer than the limit of {} bytes",
                          ctx_.config().max_header_size);
  } else if (parser_.limit_hit() == HttpParser::Limit::headers) {
    status = 431;
    message = fmt::format("the request headers are larger than the limit of {} bytes",
                          ctx_.config().max_header_size);
  } else if (err == HPE_INVALID_VERSION &&
             std::string_view(parser_.error_reason()) == "Invalid HTTP version") {
    // A well-formed version valve does not serve (HTTP/1.2); a malformed one is a 400.
    status = 505;
    message = "only HTTP/1.0 and HTTP/1.1 are served";
  }
  if (current_) {
    Proxy *ex = current_;
    current_ = nullptr;
    bool answered = ex->response_started();
    ex->on_client_gone();
    if (answered) {
      close();
      return;
    }
  }
  fail(status, message);
}

int ClientConn::on_head(Head &head) {
  timer_.stop();
  if (head.version_major != 1) {
    fail(505, "only HTTP/1.0 and HTTP/1.1 are served");
    return -1;
  }
  if (head.method == "CONNECT") {
    fail(405, "CONNECT is not supported: valve is a reverse proxy");
    return -1;
  }
  if (head.version_minor >= 1 && !head.find("host")) {
    fail(400, "an HTTP/1.1 request needs a Host header");
    return -1;
  }
  size_t hosts = 0;
  for (const auto &h : head.headers) hosts += iequals(h.name, "host");
  if (hosts > 1) {
    fail(400, "a request must have one Host header, not several");
    return -1;
  }
  if (const std::string *host = head.find("host"); host && !is_valid_authority(*host)) {
    fail(400, "the Host header is not a valid host[:port] (RFC 9110 7.2)");
    return -1;
  }
  // A fragment is the client's own, never part of a request target (RFC 9112 3.2).
  if (head.target.find('#') != std::string::npos) {
    fail(400, "the request target must not have a fragment (#)");
    return -1;
  }
  // Origin-form ("/path?query"), "*" for OPTIONS, or absolute-form, which a server must accept
  // and whose authority replaces the Host header (RFC 9112 3.2.2, 3.2.4).
  bool asterisk = head.target == "*" && head.method == "OPTIONS";
  if (!asterisk && !head.target.starts_with('/') && !to_origin_form(head)) {
    fail(400,
         "the request target must be a path starting with /, or an absolute http(s) URI "
         "(valve is not a forward proxy)");
    return -1;
  }
  Proxy &ex = host_.open_proxy(*this, std::move(head));
  current_ = &ex;
  ex.start();
  return closing_ ? -1 : 0;
}

bool ClientConn::to_origin_form(Head &head) {
  std::string_view target = head.target;
  size_t scheme_end = target.find("://");
  if (scheme_end == std::string_view::npos) return false;
  std::string_view scheme = target.substr(0, scheme_end);
  if (!iequals(scheme, "http") && !iequals(scheme, "https")) return false;
  std::string_view rest = target.substr(scheme_end + 3);
  size_t path_at = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, path_at);
  // host [":" port]: no userinfo (RFC 9110 4.2.4).
  if (authority.empty() || !is_valid_authority(authority)) return false;
  std::string origin(path_at == std::string_view::npos ? "" : rest.substr(path_at));
  if (origin.empty() && head.method == "OPTIONS") {
    origin = "*";
  } else if (origin.empty() || origin.front() == '?') {
    origin.insert(0, "/");
  }
  std::string host(authority);
  head.target = std::move(origin);
  for (auto &h : head.headers) {
    if (iequals(h.name, "host")) {
      h.value = std::move(host);
      return true;
    }
  }
  head.headers.push_back({"Host", std::move(host)});
  return true;
}

int ClientConn::on_body(std::string_view data) {
  if (current_) current_->on_client_body(data);
  return closing_ ? -1 : 0;
}

int ClientConn::on_complete() {
  if (current_) current_->on_client_complete();
  return closing_ ? -1 : HPE_PAUSED;
}

bool ClientConn::send(std::string_view data) {
  if (closing_) return true;
  auto *stream = reinterpret_cast<uv_stream_t *>(tcp_);
  int rc = write_now(stream, {data}, [](uv_stream_t *s, int status) {
    auto *self = static_cast<ClientConn *>(s->data);
    if (status != 0) {
      self->close();
    } else {
      self->on_written();
    }
  });
  if (rc != 0) {
    close();
    return true;
  }
  return write_queue_size(stream) < kWriteHighWater;
}

void ClientConn::on_written() {
  auto *stream = reinterpret_cast<uv_stream_t *>(tcp_);
  if (current_ && write_queue_size(stream) < kWriteLowWater) current_->on_client_drained();
}

void ClientConn::response_done(bool keep_alive) {
  current_ = nullptr;
  if (closing_) return;
  // A client that half-closed after pipelining requests still gets an answer to each of them.
  bool pipelined_before_eof = eof_ && !pipelined_.empty();
  if (!keep_alive || draining_ || (eof_ && !pipelined_before_eof)) {
    // Flush what is written, then close the write side and linger so the client reads it all.
    auto *req = new uv_shutdown_t{};
    closing_ = true;
    int rc = uv_shutdown(req, reinterpret_cast<uv_stream_t *>(tcp_), [](uv_shutdown_t *r, int) {
      auto *s = r->handle;
      delete r;
      if (auto *self = static_cast<ClientConn *>(s->data)) self->timer_.start(kLingerSeconds);
    });
    if (rc != 0) {
      delete req;
      closing_ = false;
      close();
      return;
    }
    blocks_ = 0;
    if (!reading_ && !eof_) start_reading();  // read and drop until the client closes
    return;
  }
  ctx_.defer([this] {
    if (closing_ || current_) return;
    paused_ = false;
    parser_.resume();
    // The last body bytes may have filled the worker's queue (reading held) in the same read that
    // completed the request: that hold belonged to the finished exchange.
    blocks_ &= ~static_cast<unsigned>(kBody);
    set_block(kPipeline, false);
    timer_.start(ctx_.config().keepalive_timeout);
    std::string data = std::move(pipelined_);
    pipelined_.clear();
    if (!data.empty()) {
      // Bytes of a next request are here: the head timeout applies from now.
      timer_.start(ctx_.config().header_timeout);
      feed(data.data(), data.size());
    }
    // After the client's end only whole requests are answered: one cut short ends the connection,
    // and so does having none left.
    if (eof_ && !closing_) {
      if (parser_.in_message()) {
        close();
      } else if (!current_) {
        response_done(false);
      }
    }
  });
}

void ClientConn::fail(int status, std::string_view message) {
  if (closing_) return;
  send(error_response(status, message, random_hex(16), false));
  ctx_.log().debug("client {}: {} {}", peer_ip_, status, message);
  response_done(false);
}

void ClientConn::drain() {
  draining_ = true;
  if (idle() && !closing_) close();
}

void ClientConn::close() {
  if (tcp_ == nullptr) return;
  closing_ = true;
  timer_.stop();
  if (current_) {
    Proxy *ex = current_;
    current_ = nullptr;
    ex->on_client_gone();
  }
  close_handle(tcp_);
  host_.on_client_closed(*this);
}

}  // namespace valve
