// valvectl status, reload and scale: clients of a running valvectl's admin interface, over TCP or a
// Unix socket, with a small blocking HTTP/1.1 client (one request per connection).
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <llhttp.h>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "valvectl.hpp"

namespace valvectl {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr std::chrono::seconds kRequestTimeout{10};
constexpr std::chrono::seconds kReloadTimeout{600};  // a reload waits for its new workers
constexpr size_t kMaxResponseBytes = 64 << 20;

// A failure of a subcommand: its message (without "valvectl: ") and exit status.
struct CommandError : std::runtime_error {
  CommandError(int exit_status, const std::string &message)
      : std::runtime_error(message), status(exit_status) {}
  int status;
};

// Where the admin interface listens, and where that was said ("--admin" or "VALVE_ADMIN").
struct AdminAddress {
  std::string source;
  std::string text;
  std::string unix_path;  // for unix:/path; else host and port
  std::string host;
  std::string port;

  std::string name() const { return source + " " + text; }
};

bool all_digits(std::string_view s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos;
}

AdminAddress parse_address(std::string source, std::string text) {
  AdminAddress address;
  address.source = std::move(source);
  address.text = std::move(text);
  auto malformed = [&] {
    return CommandError(kExitUsage,
                        address.name() + ": expected HOST:PORT, [IPv6]:PORT or unix:/path");
  };
  std::string_view t = address.text;
  if (t.starts_with("unix:")) {
    address.unix_path = t.substr(5);
    if (address.unix_path.empty()) throw malformed();
    if (address.unix_path.size() >= sizeof(sockaddr_un::sun_path)) {
      throw CommandError(kExitUsage, address.name() + ": socket path longer than " +
                                         std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                                         " bytes");
    }
    return address;
  }
  size_t colon = t.rfind(':');
  if (colon == std::string_view::npos) throw malformed();
  std::string_view host = t.substr(0, colon), port = t.substr(colon + 1);
  if (host.starts_with('[') && host.ends_with(']')) {
    host = host.substr(1, host.size() - 2);
  } else if (host.find_first_of(":[]") != std::string_view::npos) {
    throw malformed();  // an IPv6 address needs its brackets
  }
  int port_number = all_digits(port) && port.size() <= 5 ? std::stoi(std::string(port)) : 0;
  if (host.empty() || port_number < 1 || port_number > 65535) throw malformed();
  address.host = host;
  address.port = port;
  return address;
}

// The bearer token sent to the admin interface, and where it came from: "--admin-token-file
// /path", "VALVE_ADMIN_TOKEN" (never its value), ...; empty when there is none.
struct AdminToken {
  std::string source;
  std::string token;
};

// Reads a token file as valve does: one trailing newline dropped; empty, or holding a space, a
// control character or a second line, it is refused (exit 2, naming where it was given).
AdminToken read_token_file(const std::string &source, const std::string &path) {
  std::string name = source + " " + path;
  std::FILE *f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw CommandError(kExitUsage, name + ": cannot read: " + std::strerror(errno));
  std::string text;
  char buf[1024];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0 && text.size() <= 4096) text.append(buf, n);
  bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) throw CommandError(kExitUsage, name + ": cannot read it");
  if (text.ends_with('\n')) text.pop_back();
  if (text.ends_with('\r')) text.pop_back();
  if (text.empty()) throw CommandError(kExitUsage, name + ": is empty");
  if (text.size() > 4096) throw CommandError(kExitUsage, name + ": holds more than 4096 bytes");
  for (char c : text) {
    if (c < 0x21 || c > 0x7e) {
      throw CommandError(kExitUsage, name +
                                         ": holds a space, a control character or a second "
                                         "line: a token is one line of visible ASCII");
    }
  }
  return {name, text};
}

struct HttpResponse {
  int status = 0;
  std::string body;
};

// Parses a complete HTTP/1.x response read to EOF (llhttp, as the server does): its status and
// its body, whatever the framing. Returns an empty optional and sets `why` if it is malformed or
// cut short.
std::optional<HttpResponse> parse_response(std::string_view raw, std::string &why) {
  if (raw.empty()) {
    why = "connection closed without an answer";
    return std::nullopt;
  }
  struct State {
    HttpResponse response;
    bool complete = false;
  } state;
  llhttp_settings_t settings;
  llhttp_settings_init(&settings);
  settings.on_headers_complete = [](llhttp_t *p) {
    static_cast<State *>(p->data)->response.status = p->status_code;
    return 0;
  };
  settings.on_body = [](llhttp_t *p, const char *at, size_t n) {
    static_cast<State *>(p->data)->response.body.append(at, n);
    return 0;
  };
  settings.on_message_complete = [](llhttp_t *p) {
    static_cast<State *>(p->data)->complete = true;
    return static_cast<int>(HPE_PAUSED);  // one answer per connection: ignore what follows
  };
  llhttp_t parser;
  llhttp_init(&parser, HTTP_RESPONSE, &settings);
  parser.data = &state;
  llhttp_errno_t err = llhttp_execute(&parser, raw.data(), raw.size());
  if (err == HPE_OK) err = llhttp_finish(&parser);  // a body that ends with the connection
  if (err != HPE_OK && err != HPE_PAUSED) {
    why = std::string("malformed answer: ") + llhttp_get_error_reason(&parser);
    return std::nullopt;
  }
  if (!state.complete) {
    why = "answer cut short";
    return std::nullopt;
  }
  return std::move(state.response);
}

// A socket descriptor, closed when it goes out of scope.
class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  Socket(Socket &&other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket &operator=(Socket &&) = delete;
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

// One request per connection, "Connection: close", the answer read to EOF; every step bounded by
// one deadline. Failures throw CommandError (exit 1) naming the address.
class AdminClient {
 public:
  AdminClient(const AdminAddress &address, const AdminToken &token, std::chrono::seconds timeout)
      : address_(address), token_(token), timeout_(timeout) {}

  // The answer; a 401 throws CommandError (exit 2) naming where the token came from, or the flag
  // that would give one.
  HttpResponse request(std::string_view method, std::string_view target) {
    deadline_ = Clock::now() + timeout_;
    Socket sock = connect();
    std::string host = address_.unix_path.empty() ? address_.text : "localhost";
    std::string request =
        std::string(method) + " " + std::string(target) + " HTTP/1.1\r\nHost: " + host +
        "\r\nUser-Agent: valvectl\r\nAccept: application/json\r\n" +
        (token_.token.empty() ? "" : "Authorization: Bearer " + token_.token + "\r\n") +
        (method == "POST" ? "Content-Length: 0\r\n" : "") + "Connection: close\r\n\r\n";
    send_all(sock.fd(), request);
    std::string raw = read_all(sock.fd());
    std::string why;
    std::optional<HttpResponse> response = parse_response(raw, why);
    if (!response) fail(std::string(method) + " " + std::string(target) + ": " + why);
    if (response->status == 401) {
      if (token_.token.empty()) {
        throw CommandError(kExitUsage, "--admin-token-file: required: " + address_.name() +
                                           " asks for a bearer token (or set VALVE_ADMIN_TOKEN)");
      }
      throw CommandError(kExitUsage,
                         token_.source + ": " + address_.name() + " refused the token (401)");
    }
    return *response;
  }

 private:
  [[noreturn]] void fail(const std::string &what) const {
    throw CommandError(kExitFailure, address_.name() + ": " + what);
  }

  // Waits until fd is ready for `events`, or fails once the deadline has passed.
  void wait(int fd, short events) const {
    while (true) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline_ - Clock::now());
      pollfd p{fd, events, 0};
      int n = left.count() > 0 ? ::poll(&p, 1, static_cast<int>(left.count())) : 0;
      if (n > 0) return;
      if (n == 0) fail("no answer within " + std::to_string(timeout_.count()) + " s");
      if (errno != EINTR) fail(std::string("poll: ") + std::strerror(errno));
    }
  }

  // Connects without blocking past the deadline; returns the error number on failure.
  int try_connect(int fd, const sockaddr *addr, socklen_t len) const {
    if (::connect(fd, addr, len) == 0) return 0;
    if (errno != EINPROGRESS) return errno;
    wait(fd, POLLOUT);
    int err = 0;
    socklen_t err_len = sizeof err;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) != 0) return errno;
    return err;
  }

  Socket connect() const {
    constexpr int kType = SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC;
    if (!address_.unix_path.empty()) {
      Socket sock(::socket(AF_UNIX, kType, 0));
      if (sock.fd() < 0) fail(std::string("socket: ") + std::strerror(errno));
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::memcpy(addr.sun_path, address_.unix_path.data(), address_.unix_path.size());
      int err = try_connect(sock.fd(), reinterpret_cast<const sockaddr *>(&addr), sizeof addr);
      if (err != 0) fail(std::string("cannot connect: ") + std::strerror(err));
      return sock;
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo *found = nullptr;
    if (int rc = ::getaddrinfo(address_.host.c_str(), address_.port.c_str(), &hints, &found);
        rc != 0) {
      fail("cannot resolve " + address_.host + ": " + ::gai_strerror(rc));
    }
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> list(found, ::freeaddrinfo);
    int err = 0;
    for (const addrinfo *ai = list.get(); ai != nullptr; ai = ai->ai_next) {
      Socket sock(::socket(ai->ai_family, kType, ai->ai_protocol));
      if (sock.fd() < 0) {
        err = errno;
        continue;
      }
      err = try_connect(sock.fd(), ai->ai_addr, ai->ai_addrlen);
      if (err == 0) return sock;
    }
    fail(std::string("cannot connect: ") + std::strerror(err));
  }

  void send_all(int fd, std::string_view data) const {
    while (!data.empty()) {
      ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
      if (n >= 0) {
        data.remove_prefix(static_cast<size_t>(n));
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        wait(fd, POLLOUT);
      } else if (errno != EINTR) {
        fail(std::string("connection lost: ") + std::strerror(errno));
      }
    }
  }

  std::string read_all(int fd) const {
    std::string raw;
    char buf[16384];
    while (true) {
      wait(fd, POLLIN);
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n == 0) return raw;
      if (n > 0) {
        raw.append(buf, static_cast<size_t>(n));
        if (raw.size() > kMaxResponseBytes) fail("answer larger than 64 MiB");
      } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        fail(std::string("connection lost: ") + std::strerror(errno));
      }
    }
  }

  const AdminAddress &address_;
  const AdminToken &token_;
  std::chrono::seconds timeout_;
  Clock::time_point deadline_;
};

// The "error" of valve's JSON error answers; else the body itself, or the status.
std::string error_message(const HttpResponse &response) {
  json body = json::parse(response.body, nullptr, false);
  if (body.is_object() && body.contains("error") && body["error"].is_string()) {
    return body["error"].get<std::string>();
  }
  std::string text = response.body;
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return "HTTP " + std::to_string(response.status) + (text.empty() ? "" : ": " + text);
}

json parse_json(const AdminAddress &address, std::string_view what, const HttpResponse &response) {
  json body = json::parse(response.body, nullptr, false);
  if (!body.is_object()) {
    throw CommandError(kExitFailure, address.name() + ": " + std::string(what) + ": not JSON");
  }
  return body;
}

// ---- status ------------------------------------------------------------------------------------

// A JSON member for display: strings as they are, numbers as numbers, "-" when absent or null.
std::string field(const json &object, const char *key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return "-";
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
}

std::optional<double> number(const json &object, const char *key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

// 12s, 3m05s, 2h01m, 4d07h.
std::string human_duration(std::optional<double> seconds) {
  if (!seconds || !(*seconds >= 0)) return "-";
  long long s = std::llround(std::floor(*seconds));
  char buf[32];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%llds", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  } else if (s < 86400) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, s % 3600 / 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
  }
  return buf;
}

std::string megabytes(std::optional<double> bytes) {
  if (!bytes || *bytes <= 0) return "-";
  char buf[32];
  double mb = *bytes / (1024.0 * 1024.0);
  std::snprintf(buf, sizeof buf, mb < 10 ? "%.1fM" : "%.0fM", mb);
  return buf;
}

std::string milliseconds(double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f ms", seconds * 1000);
  return buf;
}

// "Label        : value", continuation lines of a multi-line value indented to match.
void print_line(std::ostream &out, std::string_view label, std::string_view value) {
  constexpr size_t kLabelWidth = 12;
  out << label << std::string(kLabelWidth - std::min(kLabelWidth, label.size()), ' ') << ": ";
  for (size_t start = 0;;) {
    size_t end = value.find('\n', start);
    out << value.substr(start, end - start) << '\n';
    if (end == std::string_view::npos || end + 1 == value.size()) break;
    out << std::string(kLabelWidth + 2, ' ');
    start = end + 1;
  }
}

// Columns separated by two spaces; right-aligned except those marked left.
void print_table(std::ostream &out, const std::vector<std::vector<std::string>> &rows,
                 const std::vector<bool> &left_aligned) {
  std::vector<size_t> widths(left_aligned.size(), 0);
  for (const auto &row : rows) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto &row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      std::string pad(widths[i] - row[i].size(), ' ');
      if (i > 0) line += "  ";
      line += left_aligned[i] ? row[i] + pad : pad + row[i];
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << '\n';
  }
}

void print_status(std::ostream &out, const json &status) {
  print_line(out, "Version", field(status, "version"));
  print_line(out, "State", field(status, "state"));
  print_line(out, "Address", field(status, "address"));
  print_line(out, "Admin", field(status, "admin"));
  print_line(out, "PID", field(status, "pid"));
  print_line(out, "Uptime", human_duration(number(status, "uptime_s")));
  print_line(out, "Generation", field(status, "generation"));
  print_line(out, "Queue", field(status, "queue") + " waiting");
  std::string in_progress = field(status, "requests_in_progress");
  print_line(out, "In progress", in_progress + (in_progress == "1" ? " request" : " requests"));
  print_line(out, "Connections", field(status, "connections"));

  const json none = json::object();
  const json &reload = status.contains("reload") ? status["reload"] : none;
  std::string reload_state = field(reload, "state");
  std::string reload_error = field(reload, "error");
  if (reload_state == "failed" && reload_error != "-" && !reload_error.empty()) {
    reload_state += ": " + reload_error;
  } else if (reload_state != "none" && reload_state != "-") {
    if (reload_state == "in_progress") reload_state = "in progress";
    reload_state += " (generation " + field(reload, "generation") + ")";
  }
  print_line(out, "Reload", reload_state);

  const json &totals = status.contains("totals") ? status["totals"] : none;
  std::string requests = field(totals, "requests") + " (2xx " + field(totals, "2xx") + ", 3xx " +
                         field(totals, "3xx") + ", 4xx " + field(totals, "4xx") + ", 5xx " +
                         field(totals, "5xx") + "), " + field(totals, "rejected") + " rejected, " +
                         field(totals, "timeouts") + " timeouts, " + field(totals, "retries") +
                         " retries";
  double served = number(totals, "requests").value_or(0);
  if (served > 0) {
    requests += ", mean " + milliseconds(number(totals, "latency_sum_s").value_or(0) / served) +
                " (queued " +
                milliseconds(number(totals, "queue_wait_sum_s").value_or(0) / served) + ")";
  }
  print_line(out, "Requests", requests);
  print_line(out, "Processes",
             field(totals, "launches") + " launched, " + field(totals, "exits") + " exited, " +
                 field(totals, "crashes") + " crashed, " + field(totals, "recycles") +
                 " recycled, " + field(totals, "health_check_failures") + " failed health checks");
  out << '\n';

  const json &workers = status.contains("workers") ? status["workers"] : none;
  if (!workers.is_array() || workers.empty()) {
    out << "No workers.\n";
    return;
  }
  // With several apps, each worker's app comes first.
  bool several = status.contains("apps") && status["apps"].is_array() && status["apps"].size() > 1;
  std::vector<std::vector<std::string>> rows = {
      {"ID", "PID", "GEN", "STATE", "REQS", "INFL", "RSS", "AGE", "IDLE", "LAST-USED"}};
  for (const json &w : workers) {
    bool busy = number(w, "in_flight").value_or(0) > 0;
    std::string last_used = field(w, "last_used");
    std::string id = several ? field(w, "app") + "/" + field(w, "id") : field(w, "id");
    rows.push_back({id, field(w, "pid"), field(w, "generation"), field(w, "state"),
                    field(w, "requests"), field(w, "in_flight"), megabytes(number(w, "rss_bytes")),
                    human_duration(number(w, "age_s")),
                    busy ? "-" : human_duration(number(w, "idle_s")),
                    last_used == "-" ? "never" : last_used});
  }
  print_table(out, rows, {false, false, false, true, false, false, false, false, false, true});
}

int run_status(const AdminAddress &address, const AdminToken &token, bool raw_json) {
  HttpResponse response = AdminClient(address, token, kRequestTimeout).request("GET", "/status");
  if (response.status != 200) {
    throw CommandError(kExitFailure, address.name() + ": GET /status: " + error_message(response));
  }
  if (raw_json) {
    std::cout << response.body;
    if (!response.body.ends_with('\n')) std::cout << '\n';
    return kExitOk;
  }
  print_status(std::cout, parse_json(address, "GET /status", response));
  return kExitOk;
}

// ---- reload and scale --------------------------------------------------------------------------

int run_reload(const AdminAddress &address, const AdminToken &token) {
  HttpResponse response = AdminClient(address, token, kReloadTimeout).request("POST", "/reload");
  if (response.status == 502) {
    std::string message = error_message(response);
    print_error("reload failed: " + message);
    if (message.find("keeps serving") == std::string::npos) {
      print_error("the old generation keeps serving");
    }
    return kExitFailure;
  }
  if (response.status != 200) {
    throw CommandError(kExitFailure, address.name() + ": POST /reload: " + error_message(response));
  }
  json body = parse_json(address, "POST /reload", response);
  std::string workers = field(body, "workers");
  std::cout << "reloaded: generation " << field(body, "generation") << ", " << workers
            << (workers == "1" ? " worker" : " workers") << " in "
            << std::llround(number(body, "duration_ms").value_or(0)) << " ms\n";
  return kExitOk;
}

int run_scale(const AdminAddress &address, const AdminToken &token,
              const std::optional<std::string> &n_min, const std::optional<std::string> &n_max,
              const std::string &app) {
  std::string target = "/scale";
  if (!app.empty()) {
    bool plain = std::all_of(app.begin(), app.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
    });
    if (!plain) throw CommandError(kExitUsage, "--app " + app + ": not an app's name");
    target += "?app=" + app;
  }
  for (auto [key, value] : {std::pair{"n-min", &n_min}, std::pair{"n-max", &n_max}}) {
    if (!*value) continue;
    if (!all_digits(**value)) {
      throw CommandError(kExitUsage,
                         std::string("--") + key + " " + **value + ": expected a whole number");
    }
    target += (target.find('?') == std::string::npos ? "?" : "&") + std::string(key) + "=" +
              **value;
  }
  HttpResponse response = AdminClient(address, token, kRequestTimeout).request("POST", target);
  if (response.status == 400) {
    // valve names the option ("n-min 5: must be at most n-max (3)"); valvectl names the flag.
    std::string message = error_message(response);
    if (message.starts_with("n-min ") || message.starts_with("n-max ")) message = "--" + message;
    throw CommandError(kExitUsage, message);
  }
  if (response.status != 200) {
    throw CommandError(kExitFailure, address.name() + ": POST /scale: " + error_message(response));
  }
  json body = parse_json(address, "POST /scale", response);
  std::string scaled = field(body, "app");  // "default": the only app, without a config file
  std::cout << "scaled" << (scaled == "default" || scaled == "-" ? "" : " " + scaled)
            << ": n-min " << field(body, "n_min") << ", n-max " << field(body, "n_max") << '\n';
  return kExitOk;
}

int run_purge(const AdminAddress &address, const AdminToken &token, const std::string &app,
              const std::string &prefix) {
  std::string target = "/cache/purge";
  char sep = '?';
  if (!app.empty()) {
    bool plain = std::all_of(app.begin(), app.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
    });
    if (!plain) throw CommandError(kExitUsage, "--app " + app + ": not an app's name");
    target += "?app=" + app;
    sep = '&';
  }
  if (!prefix.empty()) {
    bool plain = prefix.front() == '/' && std::none_of(prefix.begin(), prefix.end(), [](char c) {
                   return static_cast<unsigned char>(c) <= ' ' || c == '?' || c == '#' ||
                          c == '&' || c == '%' || c == '+';
                 });
    if (!plain) {
      throw CommandError(kExitUsage,
                         "PATH-PREFIX " + prefix + ": expected a path starting with /, like /v1");
    }
    target += sep + std::string("prefix=") + prefix;
  }
  HttpResponse response = AdminClient(address, token, kRequestTimeout).request("POST", target);
  if (response.status == 400) throw CommandError(kExitFailure, error_message(response));
  if (response.status != 200) {
    throw CommandError(kExitFailure,
                       address.name() + ": POST /cache/purge: " + error_message(response));
  }
  json body = parse_json(address, "POST /cache/purge", response);
  std::string purged = field(body, "purged");
  std::cout << "purged " << purged << (purged == "1" ? " answer" : " answers") << '\n';
  return kExitOk;
}

CLI::App *add_command(CLI::App &app, const char *name, const char *description, std::string &admin,
                      std::string &token_file) {
  CLI::App *command = app.add_subcommand(name, description);
  command
      ->add_option("--admin", admin,
                   "the admin interface of a running valvectl: HOST:PORT, [IPv6]:PORT or "
                   "unix:/path (default: $VALVE_ADMIN, else $VALVECTL_ADMIN)")
      ->type_name("ADDR");
  command
      ->add_option("--admin-token-file", token_file,
                   "a file holding the admin interface's bearer token (default: the token in "
                   "$VALVE_ADMIN_TOKEN, else the file $VALVE_ADMIN_TOKEN_FILE, else "
                   "$VALVECTL_ADMIN_TOKEN_FILE)")
      ->type_name("FILE");
  command->footer(
      "Exit status: 0 on success, 1 when valvectl cannot be reached or the request failed, "
      "2 for a bad flag or value.");
  return command;
}

}  // namespace

AdminCommands::AdminCommands(CLI::App &app) {
  status_ = add_command(app, "status", "print the state of a running valvectl and its workers",
                        admin_, token_file_);
  status_->add_flag("--json", raw_json_, "print the admin interface's JSON as it is");
  reload_ = add_command(
      app, "reload",
      "start a new generation of workers, then retire the old one once the new one is ready",
      admin_, token_file_);
  scale_ = add_command(app, "scale", "change the pool's bounds while it runs", admin_, token_file_);
  scale_->add_option("--n-min", n_min_, "the fewest workers kept running")->type_name("N");
  scale_->add_option("--n-max", n_max_, "the most workers run at once")->type_name("M");
  scale_->add_option("--app", app_, "the app to scale, when the config file has several")
      ->type_name("NAME");
  cache_ = app.add_subcommand("cache", "the shared HTTP cache of a running valvectl");
  cache_->require_subcommand(1);
  purge_ = add_command(*cache_, "purge",
                       "drop the cached answers whose path starts with PATH-PREFIX (all of them "
                       "without one)",
                       admin_, token_file_);
  purge_->add_option("--app", app_, "purge only this app's cache (default: every app's)")
      ->type_name("NAME");
  purge_->add_option("prefix", prefix_, "the path prefix of the answers to drop, like /v1")
      ->type_name("PATH-PREFIX");
}

CLI::App *AdminCommands::chosen() const {
  if (purge_->parsed()) return purge_;
  for (CLI::App *command : {status_, reload_, scale_}) {
    if (command->parsed()) return command;
  }
  return nullptr;
}

int AdminCommands::run() const {
  CLI::App *command = chosen();
  try {
    std::optional<std::string> n_min, n_max;
    if (scale_->count("--n-min") > 0) n_min = n_min_;
    if (scale_->count("--n-max") > 0) n_max = n_max_;
    if (command == scale_ && !n_min && !n_max) {
      throw CommandError(kExitUsage, "scale: give --n-min N, --n-max M or both");
    }
    AdminAddress address;
    if (command->count("--admin") > 0) {
      address = parse_address("--admin", admin_);
    } else if (const char *env = std::getenv("VALVE_ADMIN"); env != nullptr && *env != '\0') {
      address = parse_address("VALVE_ADMIN", env);
    } else if (const char *served = std::getenv("VALVECTL_ADMIN");
               served != nullptr && *served != '\0') {
      address = parse_address("VALVECTL_ADMIN", served);  // the one the server was given
    } else {
      throw CommandError(kExitUsage, "--admin: required (or set VALVE_ADMIN)");
    }
    AdminToken token;
    auto env = [](const char *name) -> const char * {
      const char *value = std::getenv(name);
      return value != nullptr && *value != '\0' ? value : nullptr;
    };
    if (command->count("--admin-token-file") > 0) {
      token = read_token_file("--admin-token-file", token_file_);
    } else if (const char *value = env("VALVE_ADMIN_TOKEN")) {
      token = {"VALVE_ADMIN_TOKEN", value};
      if (token.token.find_first_of(" \t\r\n") != std::string::npos) {
        throw CommandError(kExitUsage, "VALVE_ADMIN_TOKEN: holds a space or a line break");
      }
    } else if (const char *file = env("VALVE_ADMIN_TOKEN_FILE")) {
      token = read_token_file("VALVE_ADMIN_TOKEN_FILE", file);
    } else if (const char *served = env("VALVECTL_ADMIN_TOKEN_FILE")) {
      token = read_token_file("VALVECTL_ADMIN_TOKEN_FILE", served);  // the server's own
    }
    if (command == status_) return run_status(address, token, raw_json_);
    if (command == reload_) return run_reload(address, token);
    if (command == purge_) return run_purge(address, token, app_, prefix_);
    return run_scale(address, token, n_min, n_max, app_);
  } catch (const CommandError &e) {
    print_error(e.what());
    return e.status;
  } catch (const json::exception &e) {
    print_error(std::string("unexpected answer: ") + e.what());
    return kExitFailure;
  }
}

}  // namespace valvectl
