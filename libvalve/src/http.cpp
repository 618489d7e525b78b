#include "http.hpp"

#include <fmt/format.h>

#include <cctype>

#include "json.hpp"
#include "util.hpp"

namespace valve {

const std::string *Head::find(std::string_view name) const {
  for (const auto &h : headers) {
    if (iequals(h.name, name)) return &h.value;
  }
  return nullptr;
}

bool Head::has_token(std::string_view name, std::string_view token) const {
  return find_token(name, [&](std::string_view item) { return iequals(item, token); }).has_value();
}

std::string Head::cookie(std::string_view name) const {
  for (const auto &h : headers) {
    if (!iequals(h.name, "cookie")) continue;
    std::string_view rest = h.value;
    while (!rest.empty()) {
      size_t semi = rest.find(';');
      std::string_view item = trim(rest.substr(0, semi));
      size_t eq = item.find('=');
      if (eq != std::string_view::npos && trim(item.substr(0, eq)) == name)
        return std::string(trim(item.substr(eq + 1)));
      if (semi == std::string_view::npos) break;
      rest.remove_prefix(semi + 1);
    }
  }
  return {};
}

HttpParser::HttpParser(llhttp_type_t type, Handler &handler, size_t max_head_size)
    : handler_(handler), max_head_size_(max_head_size), chunked_(max_head_size) {
  llhttp_settings_init(&settings_);
  settings_.on_message_begin = [](llhttp_t *p) {
    auto &s = self(p);
    s.head_ = Head{};
    s.head_bytes_ = 0;
    s.error_.clear();
    s.in_message_ = true;
    s.value_last_ = false;
    s.chunked_body_ = false;
    s.decoding_ = false;
    s.http09_ = false;
    s.error_status_ = 400;
    return 0;
  };
  settings_.on_url = [](llhttp_t *p, const char *at, size_t len) {
    auto &s = self(p);
    s.head_.target.append(at, len);
    s.url_end_ = at + len;
    return s.count(len, Limit::start_line);
  };
  settings_.on_status = [](llhttp_t *p, const char *at, size_t len) {
    auto &s = self(p);
    s.head_.reason.append(at, len);
    return s.count(len, Limit::start_line);
  };
  settings_.on_method = [](llhttp_t *p, const char *at, size_t len) {
    auto &s = self(p);
    s.head_.method.append(at, len);
    return s.count(len, Limit::start_line);
  };
  settings_.on_header_field = [](llhttp_t *p, const char *at, size_t len) {
    auto &s = self(p);
    size_t extra = 0;
    if (s.value_last_ || s.head_.headers.empty()) {
      s.head_.headers.push_back({});
      extra = 4;  // ": " and CRLF, once a header
    }
    s.value_last_ = false;
    s.head_.headers.back().name.append(at, len);
    return s.count(len + extra, Limit::headers);
  };
  settings_.on_header_value = [](llhttp_t *p, const char *at, size_t len) {
    auto &s = self(p);
    // A value right after a line break is a line folded onto the previous one (RFC 9112 5.2),
    // which a proxy must not pass on as it is. (llhttp hands it on as more of the value.)
    const char *q = at;
    while (q > s.buffer_ && (q[-1] == ' ' || q[-1] == '\t')) --q;
    char before = q > s.buffer_ ? q[-1] : s.last_solid_;
    // An empty value ("Allow: " then CRLF, as plumber sends) comes as an empty span at the start
    // of the next line: no whitespace before it, nothing in it. That is no fold.
    if (before == '\n' && (len > 0 || q != at))
      return s.reject("obs-fold (a header line starting with whitespace)");
    s.value_last_ = true;
    s.head_.headers.back().value.append(at, len);
    return s.count(len, Limit::headers);
  };
  settings_.on_headers_complete = [](llhttp_t *p) {
    auto &s = self(p);
    Head &h = s.head_;
    h.version_major = p->http_major;
    h.version_minor = p->http_minor;
    h.status = p->status_code;
    h.keep_alive = llhttp_should_keep_alive(p) != 0;
    h.chunked = (p->flags & F_CHUNKED) != 0;
    h.upgrade = p->upgrade != 0;
    if (p->flags & F_CONTENT_LENGTH) h.content_length = p->content_length;
    for (auto &hd : h.headers) {
      // llhttp checks the names it tracks; any other name must be a token too (RFC 9110 5.1),
      // with no whitespace before the colon (RFC 9112 5.1).
      if (!is_token(hd.name)) return s.reject(fmt::format("invalid header name \"{}\"", hd.name));
      hd.value = std::string(trim(hd.value));
    }
    if (p->type == HTTP_REQUEST && h.find("transfer-encoding")) {
      // HTTP/1.0 has no transfer codings: its framing is faulty (RFC 9112 6.1).
      if (h.version_minor == 0)
        return s.reject("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1)");
      // llhttp refuses a Transfer-Encoding without a final "chunked" only after this callback:
      // refuse it here, before the request is handed on.
      if (!h.chunked) return s.reject("Transfer-Encoding must end in chunked");
      // A coding before chunked (gzip, chunked) would reach the app unannounced once valve has
      // dechunked the body: not implemented (RFC 9112 6.1, 501).
      if (auto coding = h.find_token("transfer-encoding",
                                     [](std::string_view c) { return !iequals(c, "chunked"); }))
        return s.reject(fmt::format("the transfer coding \"{}\" is not implemented", *coding), 501);
    }
    int rc = s.handler_.on_head(h);
    // 1xx, 204 and 304 answers have no body, whatever their headers say (RFC 9112 6.3).
    bool bodiless =
        p->type == HTTP_RESPONSE && (h.status < 200 || h.status == 204 || h.status == 304);
    // (llhttp 8.1 would read a Content-Length or chunked body after a 204 or 304.)
    if (rc == 0 && bodiless && h.status != 101) return 1;
    if (rc == 0 && h.chunked && !bodiless) {
      // valve decodes a chunked body itself (chunked.hpp): llhttp takes the message as bodiless,
      // and on_message_complete pauses it where the body starts.
      s.chunked_.reset();
      s.chunked_body_ = true;
      return 1;
    }
    return rc;
  };
  settings_.on_body = [](llhttp_t *p, const char *at, size_t len) {
    return self(p).handler_.on_body(std::string_view(at, len));
  };
  settings_.on_message_complete = [](llhttp_t *p) {
    auto &s = self(p);
    if (s.chunked_body_) {
      s.decoding_ = true;  // execute() decodes the body from here, then completes the message
      return static_cast<int>(HPE_PAUSED);
    }
    s.in_message_ = false;
    return s.handler_.on_complete();
  };
  llhttp_init(&parser_, type, &settings_);
  parser_.data = this;
}

int HttpParser::reject(std::string reason, int status) {
  error_ = std::move(reason);
  error_status_ = status;
  return -1;
}

int HttpParser::count(size_t n, Limit what) {
  head_bytes_ += n;
  if (head_bytes_ > max_head_size_) {
    limit_ = what;
    return -1;
  }
  return 0;
}

llhttp_errno_t HttpParser::execute(const char *data, size_t len, size_t *consumed) {
  size_t pos = 0;
  llhttp_errno_t err = HPE_OK;
  for (;;) {
    if (decoding_) {
      err = decode_body(data, len, &pos);
      if (err != HPE_OK || pos == len) break;
    }
    buffer_ = data + pos;
    buffer_end_ = data + len;
    url_end_ = nullptr;
    err = llhttp_execute(&parser_, data + pos, len - pos);
    // A request line that ends right after its target has no version (HTTP/0.9): no header lines
    // follow it. (llhttp's strict mode waits for them.)
    if (err == HPE_OK && url_end_ && url_end_ < buffer_end_ && head_.headers.empty() &&
        (*url_end_ == '\r' || *url_end_ == '\n'))
      http09_ = true;
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
      pos = static_cast<size_t>(llhttp_get_error_pos(&parser_) - data);
      if (err == HPE_PAUSED && decoding_) continue;  // a chunked body starts at pos
    } else if (err == HPE_OK) {
      pos = len;
    }
    break;
  }
  for (size_t i = len; i > 0; --i) {
    if (data[i - 1] != ' ' && data[i - 1] != '\t') {
      last_solid_ = data[i - 1];
      break;
    }
  }
  if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE || err == HPE_OK) {
    *consumed = pos;
  } else {
    *consumed = 0;
  }
  return err;
}

llhttp_errno_t HttpParser::decode_body(const char *data, size_t len, size_t *pos) {
  size_t used = 0;
  ChunkedDecoder::Result r =
      chunked_.feed(std::string_view(data + *pos, len - *pos), &used,
                    [this](std::string_view piece) { return handler_.on_body(piece) == 0; });
  *pos += used;
  if (r == ChunkedDecoder::Result::more) return HPE_OK;
  decoding_ = false;
  chunked_body_ = false;
  if (r == ChunkedDecoder::Result::error) {
    error_ = "invalid chunked body: " + chunked_.error();
    return HPE_USER;
  }
  // The body is done: llhttp goes on after the message it paused at, and the handler is told.
  llhttp_resume(&parser_);
  in_message_ = false;
  int rc = handler_.on_complete();
  if (rc == HPE_PAUSED) return HPE_PAUSED;
  if (rc != 0) {
    error_ = "the message was refused when complete";
    return HPE_USER;
  }
  return HPE_OK;
}

llhttp_errno_t HttpParser::finish() { return llhttp_finish(&parser_); }

void HttpParser::resume() { llhttp_resume(&parser_); }

void HttpParser::resume_after_upgrade() { llhttp_resume_after_upgrade(&parser_); }

std::string error_response(int status, std::string_view message, std::string_view request_id,
                           bool keep_alive, std::string_view extra_headers, const Json *detail) {
  Json doc = Json::object();
  if (detail) doc["detail"] = *detail;
  doc["error"] = message;
  doc["status"] = status;
  doc["request_id"] = request_id;
  std::string body = json_text(doc) + "\n";
  return fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Request-Id: "
      "{}\r\n{}{}\r\n{}",
      status, status_reason(status), body.size(), request_id, extra_headers,
      keep_alive ? "" : "Connection: close\r\n", body);
}

const char *status_reason(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 204:
      return "No Content";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 417:
      return "Expectation Failed";
    case 422:
      return "Unprocessable Content";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

bool is_hop_by_hop(std::string_view name) {
  for (std::string_view h :
       {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "proxy-authenticate", "proxy-authorization"}) {
    if (iequals(name, h)) return true;
  }
  return false;
}

bool is_dropped_hop(const Head &head, std::string_view name) {
  if (is_hop_by_hop(name)) return true;
  if (iequals(name, "content-length") || iequals(name, "host")) return false;
  return head.has_token("connection", name);
}

bool is_valid_authority(std::string_view authority) {
  std::string_view host = authority;
  if (host.starts_with('[')) {
    size_t close = host.find(']');
    if (close == std::string_view::npos) return false;
    for (char c : host.substr(1, close - 1)) {
      if (!std::isxdigit(static_cast<unsigned char>(c)) && c != ':' && c != '.') return false;
    }
    host.remove_prefix(close + 1);
    if (host.empty()) return true;
    if (host.front() != ':') return false;
  } else {
    size_t colon = host.find(':');
    for (char c : host.substr(0, colon)) {
      // reg-name: unreserved, pct-encoded and sub-delims.
      if (!std::isalnum(static_cast<unsigned char>(c)) &&
          std::string_view("-._~%!$&'()*+,;=").find(c) == std::string_view::npos)
        return false;
    }
    if (colon == std::string_view::npos) return true;
    host.remove_prefix(colon);
  }
  for (char c : host.substr(1)) {  // the port: digits only, possibly none
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace valve
