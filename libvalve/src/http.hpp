// A wrapper over llhttp: collects a message's head (with size limits), then streams its body.
#pragma once

#include <llhttp.h>
#include <nlohmann/json_fwd.hpp>

#include "chunked.hpp"
#include "util.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace valve {

struct Header {
  std::string name;
  std::string value;
};

struct Head {
  std::string method;  // requests
  std::string target;  // requests
  int status = 0;      // responses
  std::string reason;  // responses
  int version_major = 1;
  int version_minor = 1;
  std::vector<Header> headers;
  bool keep_alive = true;
  bool chunked = false;
  bool upgrade = false;
  std::optional<uint64_t> content_length;

  const std::string *find(std::string_view name) const;
  bool has_token(std::string_view name, std::string_view token) const;  // comma-separated list
  // The first item of the comma-separated lists in the `name` headers for which pred is true
  // (items trimmed; empty ones skipped), or nullopt.
  template <typename Pred>
  std::optional<std::string_view> find_token(std::string_view name, Pred pred) const;
  // The value of a cookie from the Cookie headers ("" when absent).
  std::string cookie(std::string_view name) const;
};

template <typename Pred>
std::optional<std::string_view> Head::find_token(std::string_view name, Pred pred) const {
  for (const auto &h : headers) {
    if (!iequals(h.name, name)) continue;
    std::string_view rest = h.value;
    while (!rest.empty()) {
      size_t comma = rest.find(',');
      std::string_view item = trim(rest.substr(0, comma));
      if (!item.empty() && pred(item)) return item;
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return std::nullopt;
}

class HttpParser {
 public:
  class Handler {
   public:
    virtual ~Handler() = default;
    // 0 to go on, 1 to read no body (a response to HEAD), -1 to fail.
    virtual int on_head(Head &head) = 0;
    virtual int on_body(std::string_view data) = 0;
    // 0 to go on, HPE_PAUSED to stop after this message (execute() returns HPE_PAUSED).
    virtual int on_complete() = 0;
  };

  enum class Limit { none, start_line, headers };

  HttpParser(llhttp_type_t type, Handler &handler, size_t max_head_size);
  HttpParser(const HttpParser &) = delete;
  HttpParser &operator=(const HttpParser &) = delete;

  // Parses data. On HPE_PAUSED, *consumed tells how much was used; on an error, error() and
  // limit_hit() tell why.
  llhttp_errno_t execute(const char *data, size_t len, size_t *consumed);
  // The peer closed the connection: ends a close-delimited message.
  llhttp_errno_t finish();
  void resume();
  // After HPE_PAUSED_UPGRADE: the bytes that follow are HTTP after all (the upgrade was declined).
  void resume_after_upgrade();

  const char *error_reason() const {
    return error_.empty() ? llhttp_get_error_reason(&parser_) : error_.c_str();
  }
  // The status a request that failed to parse should get: 400 unless the wrapper knows better
  // (501 for a transfer coding valve does not implement).
  int error_status() const { return error_status_; }
  Limit limit_hit() const { return limit_; }
  bool in_message() const { return in_message_; }
  bool head_started() const { return in_message_ && head_bytes_ > 0; }
  // A request line with no version (HTTP/0.9) is complete: no header lines will follow it.
  bool http09_request_line() const { return in_message_ && http09_; }
  bool message_needs_eof() const { return llhttp_message_needs_eof(&parser_) != 0; }
  bool should_keep_alive() const { return llhttp_should_keep_alive(&parser_) != 0; }

 private:
  static HttpParser &self(llhttp_t *p) { return *static_cast<HttpParser *>(p->data); }
  int count(size_t n, Limit what);
  int reject(std::string reason, int status = 400);
  // Decodes a chunked body with chunked_ from data[*pos...]. On HPE_OK parsing goes on at *pos:
  // the body needs more (all of data was used) or it ended and the handler went on.
  llhttp_errno_t decode_body(const char *data, size_t len, size_t *pos);

  llhttp_t parser_;
  llhttp_settings_t settings_;
  Handler &handler_;
  size_t max_head_size_;
  size_t head_bytes_ = 0;
  Limit limit_ = Limit::none;
  bool in_message_ = false;
  bool value_last_ = false;
  bool http09_ = false;            // this message's request line had no version
  const char *url_end_ = nullptr;  // where the target's span ended in this execute()'s data
  const char *buffer_end_ = nullptr;
  const char *buffer_ = nullptr;  // what execute() parses now
  char last_solid_ = 0;           // the last byte but spaces and tabs of the buffers before
  Head head_;
  std::string error_;  // why this wrapper failed the message, when llhttp did not
  int error_status_ = 400;
  ChunkedDecoder chunked_;
  bool chunked_body_ = false;  // the message's body is chunked_'s to decode (llhttp skips it)
  bool decoding_ = false;      // ... and llhttp has paused at its start
};

// A complete JSON error response from valve itself:
// {"error": message, "status": status, "request_id": id}, with X-Request-Id and, unless keep_alive,
// Connection: close. extra_headers are whole "Name: value\r\n" lines. A detail (the request
// check's list) comes first, as FastAPI's {"detail": [...]}.
std::string error_response(int status, std::string_view message, std::string_view request_id,
                           bool keep_alive, std::string_view extra_headers = {},
                           const nlohmann::ordered_json *detail = nullptr);

// The reason phrase for a status code ("Service Unavailable"); "Unknown" if none.
const char *status_reason(int status);
// Hop-by-hop headers, never forwarded (RFC 9110 7.6.1).
bool is_hop_by_hop(std::string_view name);
// A header a proxy does not forward: hop-by-hop, or named in the message's Connection header
// (RFC 9110 7.6.1), but never Content-Length or Host: dropping those because Connection names them
// would change the message's framing or target (a request smuggled in its body).
bool is_dropped_hop(const Head &head, std::string_view name);
// A valid Host value or absolute-form authority: uri-host [":" port] (RFC 9110 7.2, RFC 3986
// 3.2.2), with no userinfo; empty is valid for Host.
bool is_valid_authority(std::string_view authority);

}  // namespace valve
