// valve-test-backend: a fast native HTTP/1.1 worker for the test suite and the benchmarks.
// One libuv loop, llhttp for requests; a connection handles one request at a time: the parser is
// paused from a request's end until its response is written, so pipelined replies stay in order.
#include <fcntl.h>
#include <llhttp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace {

constexpr size_t kPiece = 64 * 1024;          // /bytes writes this much at a time
constexpr size_t kHighWater = 256 * 1024;     // ... while the stream's write queue is below this
constexpr size_t kMaxEchoBody = 65536;        // /echo returns bodies up to this size
constexpr size_t kMaxHead = 1 << 20;          // request line plus headers; more is answered 431
constexpr size_t kMaxBuffered = 1 << 20;      // pipelined bytes held while a response is under way
constexpr uint64_t kMaxHeaderBig = 64 << 20;  // largest /headers-big?n=
constexpr uint64_t kLingerMs = 2000;          // after our FIN, how long to wait for the peer's

char g_pattern[kPiece];  // "0123456789abcdef" repeated; every piece starts at a multiple of 16
char g_read_buffer[64 * 1024];  // reads are consumed synchronously, so one buffer serves all

// clang-format off
enum class Route {
  hello, echo, sleep, drip, bytes, upload, status, crash, hang, pid, stats, close, noframe,
  headers_big, cache, cache_calls, not_found
};
// clang-format on

Route route_for(std::string_view path) {
  // clang-format off
  static constexpr std::pair<std::string_view, Route> routes[] = {
      {"/hello", Route::hello}, {"/echo", Route::echo},     {"/sleep", Route::sleep},
      {"/bytes", Route::bytes}, {"/upload", Route::upload}, {"/status", Route::status},
      {"/crash", Route::crash}, {"/hang", Route::hang},     {"/pid", Route::pid},
      {"/stats", Route::stats}, {"/close", Route::close},   {"/noframe", Route::noframe},
      {"/headers-big", Route::headers_big}, {"/drip", Route::drip},
      {"/cache", Route::cache}, {"/cache-calls", Route::cache_calls}};
  // clang-format on
  for (const auto &[name, route] : routes)
    if (name == path) return route;
  return Route::not_found;
}

std::string_view reason_phrase(int status) {
  // clang-format off
  static constexpr std::pair<int, std::string_view> phrases[] = {
      {200, "OK"}, {201, "Created"}, {202, "Accepted"}, {204, "No Content"},
      {301, "Moved Permanently"}, {302, "Found"}, {304, "Not Modified"}, {400, "Bad Request"},
      {401, "Unauthorized"}, {403, "Forbidden"}, {404, "Not Found"}, {405, "Method Not Allowed"},
      {408, "Request Timeout"}, {413, "Content Too Large"}, {429, "Too Many Requests"},
      {431, "Request Header Fields Too Large"}, {500, "Internal Server Error"},
      {502, "Bad Gateway"}, {503, "Service Unavailable"}, {504, "Gateway Timeout"}};
  // clang-format on
  for (const auto &[code, phrase] : phrases)
    if (code == status) return phrase;
  return "Status";  // clients ignore the phrase; any token will do
}

bool iequals(std::string_view a, std::string_view b) {
  auto lower = [](char ch) { return ch >= 'A' && ch <= 'Z' ? static_cast<char>(ch + 32) : ch; };
  return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                    [&](char x, char y) { return lower(x) == lower(y); });
}

std::optional<std::string_view> query_param(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view part = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    size_t eq = part.find('=');
    if (part.substr(0, eq) == key)
      return eq == std::string_view::npos ? std::string_view() : part.substr(eq + 1);
  }
  return std::nullopt;
}

std::string percent_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      unsigned v = 0;
      auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
      if (ec == std::errc() && p == s.data() + i + 3) {
        out += static_cast<char>(v);
        i += 2;
        continue;
      }
    }
    out += s[i] == '+' ? ' ' : s[i];
  }
  return out;
}

std::optional<uint64_t> parse_number(std::string_view text) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return value;
}

// Length of the well-formed UTF-8 sequence at s[i], or 0 if there is none.
size_t utf8_sequence_length(std::string_view s, size_t i) {
  auto lead = static_cast<unsigned char>(s[i]);
  size_t n = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc2 ? 2 : 0;
  if (n == 0 || lead > 0xf4 || i + n > s.size()) return 0;
  uint32_t cp = lead & (0x7f >> n);
  for (size_t k = 1; k < n; ++k) {
    auto next = static_cast<unsigned char>(s[i + k]);
    if ((next & 0xc0) != 0x80) return 0;
    cp = cp << 6 | (next & 0x3f);
  }
  static constexpr uint32_t kMinimum[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMinimum[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

// Valid UTF-8 passes through; a byte that is not part of any is written as \u00XX (Latin-1).
void append_json_string(std::string &out, std::string_view s) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      if (size_t n = utf8_sequence_length(s, i)) {
        out.append(s.substr(i, n));
        i += n;
        continue;
      }
      fmt::format_to(std::back_inserter(out), "\\u{:04x}", c);
    } else if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20) {
      fmt::format_to(std::back_inserter(out), "\\u{:04x}", c);
    } else {
      out += static_cast<char>(c);
    }
    ++i;
  }
  out += '"';
}

struct Stats {
  uint64_t requests = 0, in_flight = 0, max_in_flight = 0, connections = 0;
  uint64_t completed = 0;  // requests read to their end (a cut-short one never is)
  uint64_t cache_calls = 0;  // /cache answers begun
};

union Stream {
  uv_tcp_t tcp;
  uv_pipe_t pipe;
  uv_stream_t stream;
  uv_handle_t handle;
};

struct Conn;

struct Server {
  uv_loop_t loop{};
  Stream listener{};
  uv_signal_t sigterm{}, sigint{};
  uv_timer_t start_timer{};
  bool is_tcp = true, bound = false;
  int port = 0;
  std::string socket_path, pidfile;
  Stats stats;
  std::unordered_set<Conn *> conns;

  void listen();
  void stop();
};

enum class Framing { length, chunked, close_delimited, bodiless };

struct Conn {
  explicit Conn(Server &server) : srv(server) {}
  Conn(const Conn &) = delete;
  Conn &operator=(const Conn &) = delete;

  Server &srv;
  Stream io{};
  uv_timer_t timer{};  // /sleep, then the linger after our FIN
  llhttp_t parser{};
  int open_handles = 2;
  bool reading = false, eof = false, responding = false, shutting = false, closing = false;
  bool in_flight = false, keep_alive = true;
  std::string inbuf;  // bytes received while the parser is paused

  // The request being parsed or answered.
  Route route = Route::not_found;
  std::string url, field, value;
  std::vector<std::pair<std::string, std::string>> headers;
  size_t head_size = 0;
  int error_status = 400;
  bool is_head = false, http10 = false, in_trailers = false;
  const char *method = "";
  uint64_t body_length = 0, fnv = 0, sleep_ms = 0;
  std::string body;
  // /cache's answer, given after ms.
  int cache_status = 200;
  std::string cache_headers, cache_body;

  // /bytes streaming.
  bool streaming = false, stream_chunked = false;
  uint64_t stream_left = 0;

  void start_reading();
  void stop_reading();
  void feed(const char *data, size_t len);
  void process_buffered();
  void respond();
  void answer_cache() {
    bool bodiless = cache_status == 204 || cache_status == 304;
    reply(cache_status, "application/json", cache_body,
          bodiless ? Framing::bodiless : Framing::length, cache_headers);
  }
  void reply(int status, std::string_view content_type, std::string_view body_text,
             Framing framing = Framing::length, std::string_view extra_headers = {},
             bool last = true);
  std::string response_head(int status, std::string_view content_type, Framing framing,
                            uint64_t length, std::string_view extra_headers) const;
  void write(std::string owned, std::string_view borrowed, std::string_view tail, bool last);
  void pump();
  void finish_response();
  void fail(int status);
  void end_request();
  void on_peer_done();
  void graceful_close();
  void close_now();
};

Conn *conn_of(llhttp_t *p) { return static_cast<Conn *>(p->data); }

int head_grew(Conn *c, size_t len) {
  c->head_size += len;
  if (c->head_size <= kMaxHead) return 0;
  c->error_status = 431;
  return -1;
}

llhttp_settings_t make_parser_settings() {
  llhttp_settings_t s;
  llhttp_settings_init(&s);
  s.on_message_begin = [](llhttp_t *p) {
    Conn *c = conn_of(p);
    c->route = Route::not_found;
    c->url.clear();
    c->field.clear();
    c->value.clear();
    c->headers.clear();
    c->body.clear();
    c->head_size = c->body_length = 0;
    c->fnv = 0xcbf29ce484222325ULL;
    c->error_status = 400;
    c->is_head = c->in_trailers = false;
    return 0;
  };
  s.on_url = [](llhttp_t *p, const char *at, size_t len) {
    conn_of(p)->url.append(at, len);
    return head_grew(conn_of(p), len);
  };
  s.on_header_field = [](llhttp_t *p, const char *at, size_t len) {
    conn_of(p)->field.append(at, len);
    return head_grew(conn_of(p), len);
  };
  s.on_header_value = [](llhttp_t *p, const char *at, size_t len) {
    conn_of(p)->value.append(at, len);
    return head_grew(conn_of(p), len);
  };
  s.on_header_value_complete = [](llhttp_t *p) {
    Conn *c = conn_of(p);
    if (!c->in_trailers) c->headers.emplace_back(std::move(c->field), std::move(c->value));
    c->field.clear();
    c->value.clear();
    return 0;
  };
  s.on_headers_complete = [](llhttp_t *p) {
    Conn *c = conn_of(p);
    std::string_view target = c->url;
    c->route = route_for(target.substr(0, target.find('?')));
    if (c->route == Route::crash) _exit(1);
    c->method = llhttp_method_name(static_cast<llhttp_method_t>(llhttp_get_method(p)));
    c->is_head = llhttp_get_method(p) == HTTP_HEAD;
    c->http10 = p->http_major == 1 && p->http_minor == 0;
    c->in_trailers = true;  // fields after this point are chunked trailers, not headers
    for (const auto &[name, value] : c->headers)  // curl waits a second for this before uploading
      if (!c->http10 && iequals(name, "Expect") && iequals(value, "100-continue"))
        c->write("HTTP/1.1 100 Continue\r\n\r\n", {}, {}, false);
    Stats &st = c->srv.stats;
    ++st.requests;
    if (c->route != Route::stats) {  // /stats reports on the others and does not count itself
      c->in_flight = true;
      st.max_in_flight = std::max(st.max_in_flight, ++st.in_flight);
    }
    return 0;
  };
  s.on_body = [](llhttp_t *p, const char *at, size_t len) {
    Conn *c = conn_of(p);
    c->body_length += len;
    if ((c->route == Route::echo || c->route == Route::cache) && c->body.size() <= kMaxEchoBody)
      c->body.append(at, std::min(len, kMaxEchoBody + 1 - c->body.size()));
    if (c->route == Route::upload) {
      uint64_t h = c->fnv;
      for (size_t i = 0; i < len; ++i)
        h = (h ^ static_cast<unsigned char>(at[i])) * 0x100000001b3ULL;
      c->fnv = h;
    }
    return 0;
  };
  s.on_message_complete = [](llhttp_t *p) {
    Conn *c = conn_of(p);
    c->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    if (c->route != Route::stats) ++c->srv.stats.completed;
    c->responding = true;
    c->respond();
    return static_cast<int>(HPE_PAUSED);
  };
  return s;
}

const llhttp_settings_t g_parser_settings = make_parser_settings();

void Conn::start_reading() {
  if (reading || closing) return;
  auto alloc = [](uv_handle_t *, size_t, uv_buf_t *buf) {
    *buf = uv_buf_init(g_read_buffer, sizeof g_read_buffer);
  };
  auto on_read = [](uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    Conn *c = static_cast<Conn *>(stream->data);
    if (nread > 0) {
      if (c->shutting) return;  // lingering: discard
      if (!c->responding) return c->feed(buf->base, static_cast<size_t>(nread));
      c->inbuf.append(buf->base, static_cast<size_t>(nread));
      if (c->inbuf.size() > kMaxBuffered) c->stop_reading();
    } else if (nread == UV_EOF && !c->shutting) {
      c->eof = true;
      c->stop_reading();
      if (!c->responding) return c->on_peer_done();
      if (c->route == Route::hang) c->close_now();  // nobody is left to answer; others finish
    } else if (nread < 0) {
      c->close_now();
    }
  };
  if (uv_read_start(&io.stream, alloc, on_read) == 0) reading = true;
}

void Conn::stop_reading() {
  if (!reading) return;
  uv_read_stop(&io.stream);
  reading = false;
}

void Conn::feed(const char *data, size_t len) {
  llhttp_errno_t err = llhttp_execute(&parser, data, len);
  if (err == HPE_OK || err == HPE_PAUSED_UPGRADE) return;  // an upgrade is answered, then closed
  if (err == HPE_PAUSED) {
    const char *pos = llhttp_get_error_pos(&parser);
    inbuf.append(pos, static_cast<size_t>(data + len - pos));
    return;
  }
  fail(error_status);
}

void Conn::process_buffered() {
  std::string data = std::exchange(inbuf, {});
  if (!data.empty()) feed(data.data(), data.size());
  if (closing || shutting || responding) return;
  if (eof) return on_peer_done();
  start_reading();
}

std::string Conn::response_head(int status, std::string_view content_type, Framing framing,
                                uint64_t length, std::string_view extra_headers) const {
  std::string out = fmt::format("HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
  if (!content_type.empty())
    fmt::format_to(std::back_inserter(out), "Content-Type: {}\r\n", content_type);
  out += extra_headers;
  if (framing == Framing::length)
    fmt::format_to(std::back_inserter(out), "Content-Length: {}\r\n", length);
  if (framing == Framing::chunked) out += "Transfer-Encoding: chunked\r\n";
  if (!keep_alive)
    out += "Connection: close\r\n";
  else if (http10)
    out += "Connection: keep-alive\r\n";
  out += "\r\n";
  return out;
}

void Conn::reply(int status, std::string_view content_type, std::string_view body_text,
                 Framing framing, std::string_view extra_headers, bool last) {
  if (framing == Framing::bodiless) body_text = {};
  std::string out = response_head(status, content_type, framing, body_text.size(), extra_headers);
  if (!is_head) out += body_text;
  write(std::move(out), {}, {}, last);
}

void Conn::respond() {
  std::string_view target = url;
  size_t question = target.find('?');
  std::string_view query = question == std::string_view::npos ? "" : target.substr(question + 1);
  auto number = [&](std::string_view key) {
    auto text = query_param(query, key);
    return text ? parse_number(*text) : std::nullopt;
  };
  auto bad_query = [&] { reply(400, "application/json", R"({"error":"bad query"})"); };
  switch (route) {
    case Route::hello:
      return reply(200, "text/plain", "hello\n");
    case Route::echo: {
      std::string out = "{\"method\":";
      append_json_string(out, method);
      out += ",\"target\":";
      append_json_string(out, url);
      fmt::format_to(std::back_inserter(out), ",\"version\":\"{}.{}\",\"headers\":[",
                     parser.http_major, parser.http_minor);
      for (size_t i = 0; i < headers.size(); ++i) {
        out += i ? ",[" : "[";
        append_json_string(out, headers[i].first);
        out += ',';
        append_json_string(out, headers[i].second);
        out += ']';
      }
      fmt::format_to(std::back_inserter(out), "],\"body_length\":{},\"body\":", body_length);
      if (body_length <= kMaxEchoBody)
        append_json_string(out, body);
      else
        out += "null";
      out += '}';
      return reply(200, "application/json", out);
    }
    case Route::sleep: {
      auto ms = number("ms");
      if (!ms) return bad_query();
      sleep_ms = *ms;
      auto on_slept = [](uv_timer_t *t) {
        Conn *c = static_cast<Conn *>(t->data);
        c->reply(200, "text/plain", fmt::format("slept {}\n", c->sleep_ms));
      };
      uv_timer_start(&timer, on_slept, sleep_ms, 0);
      return;
    }
    case Route::drip: {  // "first" at once, "last" ms later (chunked)
      auto ms = number("ms");
      if (!ms || http10 || is_head) return bad_query();
      write(response_head(200, "text/plain", Framing::chunked, 0, {}) + "6\r\nfirst\n\r\n", {}, {},
            false);
      auto on_slept = [](uv_timer_t *t) {
        static_cast<Conn *>(t->data)->write("5\r\nlast\n\r\n0\r\n\r\n", {}, {}, true);
      };
      uv_timer_start(&timer, on_slept, *ms, 0);
      return;
    }
    case Route::bytes: {
      auto n = number("n");
      if (!n) return bad_query();
      stream_chunked = query_param(query, "chunked") == "1" && !http10;
      Framing framing = stream_chunked ? Framing::chunked : Framing::length;
      bool body_follows = !is_head && (*n > 0 || stream_chunked);
      write(response_head(200, "application/octet-stream", framing, *n, {}), {}, {}, !body_follows);
      if (!body_follows) return;
      stream_left = *n;
      streaming = true;
      return pump();
    }
    case Route::upload:
      return reply(200, "application/json",
                   fmt::format(R"({{"length":{},"fnv1a":"{:016x}"}})", body_length, fnv));
    case Route::status: {
      auto code = number("code");
      if (!code || *code < 200 || *code > 599) return bad_query();  // 1xx is never final
      int status = static_cast<int>(*code);
      return reply(status, "application/json", fmt::format(R"({{"status":{}}})", status),
                   status == 204 || status == 304 ? Framing::bodiless : Framing::length);
    }
    case Route::crash:  // left in on_headers_complete
    case Route::hang:
      return;
    case Route::pid:
      return reply(200, "text/plain", fmt::format("{}", getpid()));
    case Route::cache_calls:  // how many /cache answers this worker began
      return reply(200, "application/json",
                   fmt::format(R"({{"calls":{}}})", srv.stats.cache_calls));
    case Route::cache: {
      // /cache?code=200&ms=0&h=Name:Value&h=...: answers with the headers asked for (values
      // percent-decoded) and a body naming this call, so a test sees which answers a worker gave.
      auto code = number("code");
      auto ms = number("ms");
      if ((code && (*code < 200 || *code > 599)) || (query_param(query, "ms") && !ms))
        return bad_query();
      cache_status = code ? static_cast<int>(*code) : 200;
      cache_headers.clear();
      for (std::string_view rest = query; !rest.empty();) {
        size_t amp = rest.find('&');
        std::string_view part = rest.substr(0, amp);
        rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
        if (!part.starts_with("h=")) continue;
        std::string header = percent_decode(part.substr(2));
        size_t colon = header.find(':');
        if (colon == std::string::npos || colon == 0) return bad_query();
        cache_headers +=
            header.substr(0, colon) + ": " +
            std::string(header.substr(colon + 1).starts_with(' ') ? header.substr(colon + 2)
                                                                  : header.substr(colon + 1)) +
            "\r\n";
      }
      cache_body =
          fmt::format(R"({{"call":{},"pid":{},"method":)", ++srv.stats.cache_calls, getpid());
      append_json_string(cache_body, method);
      cache_body += ",\"body\":";
      append_json_string(cache_body, body);
      cache_body += '}';
      if (!ms || *ms == 0) return answer_cache();
      sleep_ms = *ms;
      uv_timer_start(
          &timer, [](uv_timer_t *t) { static_cast<Conn *>(t->data)->answer_cache(); }, sleep_ms, 0);
      return;
    }
    case Route::stats: {
      const Stats &st = srv.stats;
      return reply(200, "application/json",
                   fmt::format(R"({{"requests":{},"completed":{},"in_flight":{},)"
                               R"("max_in_flight":{},"connections":{}}})",
                               st.requests, st.completed, st.in_flight, st.max_in_flight,
                               st.connections));
    }
    case Route::close:
      keep_alive = false;
      return reply(200, "text/plain", "bye\n");
    case Route::noframe:
      keep_alive = false;
      return reply(200, "text/plain", "no framing\n", Framing::close_delimited);
    case Route::headers_big: {
      auto n = number("n");
      if (!n || *n > kMaxHeaderBig) return bad_query();
      std::string big = "X-Big: ";
      big.append(*n, 'a');
      big += "\r\n";
      return reply(200, "text/plain", "", Framing::length, big);
    }
    case Route::not_found:
      return reply(404, "application/json", R"({"error":"not found"})");
  }
}

// `owned` travels with the write request; `borrowed` and `tail` must outlive it (static data).
void Conn::write(std::string owned, std::string_view borrowed, std::string_view tail, bool last) {
  if (closing) return;
  struct WriteReq {
    uv_write_t req;
    Conn *conn;
    std::string data;
    bool last;
  };
  auto *pending = new WriteReq{{}, this, std::move(owned), last};
  pending->req.data = pending;
  uv_buf_t bufs[3];
  unsigned count = 0;
  for (std::string_view part : {std::string_view(pending->data), borrowed, tail})
    if (!part.empty())
      bufs[count++] =
          uv_buf_init(const_cast<char *>(part.data()), static_cast<unsigned>(part.size()));
  auto on_written = [](uv_write_t *req, int status) {
    auto *w = static_cast<WriteReq *>(req->data);
    Conn *c = w->conn;
    bool was_last = w->last;
    delete w;
    if (c->closing) return;
    if (status < 0) return c->close_now();
    if (was_last) return c->finish_response();
    if (c->streaming) c->pump();
  };
  if (uv_write(&pending->req, &io.stream, bufs, count, on_written) < 0) {
    delete pending;
    close_now();
  }
}

void Conn::pump() {
  while (streaming && !closing && uv_stream_get_write_queue_size(&io.stream) < kHighWater) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kPiece, stream_left));
    stream_left -= n;
    streaming = stream_left > 0;
    std::string chunk_head;
    std::string_view tail;
    if (stream_chunked) {
      if (n > 0) chunk_head = fmt::format("{:x}\r\n", n);
      tail = streaming ? "\r\n" : n > 0 ? "\r\n0\r\n\r\n" : "0\r\n\r\n";
    }
    write(std::move(chunk_head), std::string_view(g_pattern, n), tail, !streaming);
  }
}

void Conn::finish_response() {
  responding = false;
  end_request();
  if (!keep_alive) return graceful_close();
  llhttp_resume(&parser);
  process_buffered();
}

void Conn::fail(int status) {
  end_request();
  keep_alive = false;
  is_head = false;
  reply(status, "application/json", R"({"error":"bad request"})", Framing::length, {}, false);
  graceful_close();
}

void Conn::end_request() {
  if (!in_flight) return;
  in_flight = false;
  --srv.stats.in_flight;
}

// The peer sent EOF and nothing is being answered.
void Conn::on_peer_done() {
  if (llhttp_finish(&parser) != HPE_OK) return close_now();  // a request was cut short
  graceful_close();
}

// FIN after the queued writes, then read until the peer's FIN so that unread bytes cannot turn the
// close into a RST that destroys the response we just sent.
void Conn::graceful_close() {
  if (closing || shutting) return;
  shutting = true;
  auto *shutdown = new uv_shutdown_t;
  shutdown->data = this;
  auto on_shutdown = [](uv_shutdown_t *req, int status) {
    Conn *c = static_cast<Conn *>(req->data);
    delete req;
    if (c->closing) return;
    if (status < 0 || c->eof) return c->close_now();
    auto on_linger_over = [](uv_timer_t *t) { static_cast<Conn *>(t->data)->close_now(); };
    uv_timer_start(&c->timer, on_linger_over, kLingerMs, 0);
  };
  if (uv_shutdown(shutdown, &io.stream, on_shutdown) < 0) {
    delete shutdown;
    return close_now();
  }
  if (!eof) start_reading();
}

void Conn::close_now() {
  if (closing) return;
  closing = true;
  end_request();
  auto on_closed = [](uv_handle_t *h) {
    Conn *c = static_cast<Conn *>(h->data);
    if (--c->open_handles > 0) return;
    c->srv.conns.erase(c);
    delete c;
  };
  uv_close(&io.handle, on_closed);
  uv_close(reinterpret_cast<uv_handle_t *>(&timer), on_closed);
}

void on_connection(uv_stream_t *listener, int status) {
  if (status < 0) return;
  Server &srv = *static_cast<Server *>(listener->data);
  auto *c = new Conn(srv);
  if (srv.is_tcp)
    uv_tcp_init(&srv.loop, &c->io.tcp);
  else
    uv_pipe_init(&srv.loop, &c->io.pipe, 0);
  uv_timer_init(&srv.loop, &c->timer);
  c->io.handle.data = c->timer.data = c;
  srv.conns.insert(c);
  if (uv_accept(listener, &c->io.stream) < 0) return c->close_now();
  ++srv.stats.connections;
  if (srv.is_tcp) uv_tcp_nodelay(&c->io.tcp, 1);
  llhttp_init(&c->parser, HTTP_REQUEST, &g_parser_settings);
  c->parser.data = c;
  c->start_reading();
}

[[noreturn]] void die(int code, std::string_view what, int err) {
  fmt::print(stderr, "backend: {}: {}\n", what, uv_strerror(err));
  std::exit(code);
}

void write_pidfile(const std::string &path) {
  std::string tmp = path + ".tmp";
  FILE *f = std::fopen(tmp.c_str(), "w");
  if (!f || std::fprintf(f, "%d\n", static_cast<int>(getpid())) < 0 || std::fclose(f) != 0 ||
      std::rename(tmp.c_str(), path.c_str()) != 0) {
    fmt::print(stderr, "backend: cannot write {}: {}\n", path, std::strerror(errno));
    std::exit(1);
  }
}

void Server::listen() {
  std::string addr;
  int err = 0;
  if (is_tcp) {
    sockaddr_in sa{};
    uv_ip4_addr("127.0.0.1", port, &sa);
    uv_tcp_init(&loop, &listener.tcp);
    err = uv_tcp_bind(&listener.tcp, reinterpret_cast<const sockaddr *>(&sa), 0);
    int len = sizeof sa;
    if (err == 0) err = uv_listen(&listener.stream, 1024, on_connection);
    if (err == 0) err = uv_tcp_getsockname(&listener.tcp, reinterpret_cast<sockaddr *>(&sa), &len);
    addr = fmt::format("127.0.0.1:{}", ntohs(sa.sin_port));
  } else {
    struct stat st {};
    if (lstat(socket_path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(socket_path.c_str());
    uv_pipe_init(&loop, &listener.pipe, 0);
    err = uv_pipe_bind(&listener.pipe, socket_path.c_str());
    if (err == 0) err = uv_listen(&listener.stream, 1024, on_connection);
    addr = "unix:" + socket_path;
  }
  listener.handle.data = this;
  bound = err == 0;
  if (err < 0) die(err == UV_EADDRINUSE ? 98 : 1, "cannot listen on " + addr, err);
  if (!pidfile.empty()) write_pidfile(pidfile);
  fmt::print("backend listening on {}\n", addr);
  std::fflush(stdout);
}

void Server::stop() {
  uv_close(reinterpret_cast<uv_handle_t *>(&sigterm), nullptr);
  uv_close(reinterpret_cast<uv_handle_t *>(&sigint), nullptr);
  uv_close(reinterpret_cast<uv_handle_t *>(&start_timer), nullptr);
  if (listener.handle.loop) uv_close(&listener.handle, nullptr);
  for (Conn *c : conns) c->close_now();  // the set shrinks only in close callbacks
}

[[noreturn]] void usage(std::string_view problem) {
  fmt::print(
      stderr,
      "backend: {}\nusage: valve-test-backend (--port N | --socket PATH) [--delay-start MS]\n"
      "  [--exit-at-start CODE] [--fail-once-marker PATH] [--squatter-pidfile PATH]\n"
      "  [--as-worker]\n",
      problem);
  std::exit(2);
}

// The squatter answers on the port from a session of its own while the process valve started
// never listens: "someone else took the address".
[[noreturn]] void become_squatter_parent() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  int sig = 0;
  sigwait(&set, &sig);
  std::exit(0);
}

}  // namespace

int main(int argc, char **argv) {
  Server srv;
  std::optional<int> exit_code;
  std::optional<uint64_t> delay_ms;
  std::string fail_once_marker;
  bool have_port = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::optional<std::string_view> inline_value;
    if (size_t eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      inline_value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    if (arg == "--as-worker") continue;
    auto value = [&]() -> std::string_view {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) usage(fmt::format("{} needs a value", arg));
      return argv[++i];
    };
    auto number = [&](uint64_t max) {
      auto n = parse_number(value());
      if (!n || *n > max) usage(fmt::format("bad value for {}", arg));
      return *n;
    };
    if (arg == "--port") {
      srv.port = static_cast<int>(number(65535));
      have_port = true;
    } else if (arg == "--socket") {
      srv.socket_path = value();
    } else if (arg == "--delay-start") {
      delay_ms = number(UINT32_MAX);
    } else if (arg == "--exit-at-start") {
      exit_code = static_cast<int>(number(255));
    } else if (arg == "--fail-once-marker") {
      fail_once_marker = value();
    } else if (arg == "--squatter-pidfile") {
      srv.pidfile = value();
    } else {
      usage(fmt::format("unknown argument {}", arg));
    }
  }
  if (have_port == !srv.socket_path.empty()) usage("give exactly one of --port and --socket");
  srv.is_tcp = have_port;

  if (exit_code) {
    fmt::print(stderr, "backend: exiting at start as asked\n");
    return *exit_code;
  }
  if (!fail_once_marker.empty() && access(fail_once_marker.c_str(), F_OK) != 0) {
    int fd = open(fail_once_marker.c_str(), O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) close(fd);
    fmt::print(stderr, "backend: address already in use (simulated)\n");
    return 98;
  }
  if (!srv.pidfile.empty()) {
    if (!have_port) usage("--squatter-pidfile needs --port");
    pid_t child = fork();
    if (child < 0) usage("fork failed");
    if (child > 0) become_squatter_parent();
    setsid();
    int null_fd = open("/dev/null", O_RDWR);  // keep none of valve's pipes open
    for (int fd = 0; fd <= 2 && null_fd >= 0; ++fd) dup2(null_fd, fd);
    if (null_fd > 2) close(null_fd);
  }

  signal(SIGPIPE, SIG_IGN);
  for (size_t i = 0; i < kPiece; ++i) g_pattern[i] = "0123456789abcdef"[i % 16];
  uv_loop_init(&srv.loop);
  srv.sigterm.data = srv.sigint.data = srv.start_timer.data = &srv;
  auto on_signal = [](uv_signal_t *h, int) { static_cast<Server *>(h->data)->stop(); };
  uv_signal_init(&srv.loop, &srv.sigterm);
  uv_signal_init(&srv.loop, &srv.sigint);
  uv_signal_start(&srv.sigterm, on_signal, SIGTERM);
  uv_signal_start(&srv.sigint, on_signal, SIGINT);
  uv_timer_init(&srv.loop, &srv.start_timer);
  // The delay runs on the loop so that SIGTERM during it still exits 0.
  auto on_start = [](uv_timer_t *t) { static_cast<Server *>(t->data)->listen(); };
  uv_timer_start(&srv.start_timer, on_start, delay_ms.value_or(0), 0);
  uv_run(&srv.loop, UV_RUN_DEFAULT);
  uv_loop_close(&srv.loop);
  if (srv.bound && !srv.is_tcp) unlink(srv.socket_path.c_str());
  return 0;
}
