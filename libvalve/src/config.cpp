#include "config.hpp"

#include <arpa/inet.h>
#include <sys/un.h>

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>

#include "error_hooks.hpp"
#include "fair_queue.hpp"
#include "json.hpp"
#include "log.hpp"
#include "util.hpp"

namespace valve {

namespace {

struct OptionInfo {
  const char *key;
  const char *default_value;
  const char *help;
  const char *kind;
  bool server;
};

constexpr OptionInfo kOptions[] = {
#define VALVE_OPTION_INFO_(key, member, kind, scope, def, help) \
  {key, def, help, #kind, std::string_view(#scope) == "server"},
    VALVE_OPTIONS(VALVE_OPTION_INFO_)
#undef VALVE_OPTION_INFO_
};

// Not named quoted(): nlohmann/json.hpp brings in <iomanip>, and ADL would prefer std::quoted
// for a std::string.
std::string quote_if_empty(std::string_view v) {
  return v.empty() ? std::string("\"\"") : std::string(v);
}

std::optional<std::string> set_str(std::string &field, std::string_view, std::string_view value) {
  field = std::string(value);
  return std::nullopt;
}

std::optional<std::string> set_uint(uint64_t &field, std::string_view key, std::string_view value) {
  auto v = parse_uint(value);
  if (!v) return fmt::format("{} {}: expected a whole number", key, quote_if_empty(value));
  field = *v;
  return std::nullopt;
}

std::optional<std::string> set_secs(double &field, std::string_view key, std::string_view value) {
  auto v = parse_seconds(value);
  if (!v)
    return fmt::format("{} {}: expected seconds, like 30, 0.5 or 250ms", key,
                       quote_if_empty(value));
  field = *v;
  return std::nullopt;
}

std::optional<std::string> set_bytes(uint64_t &field, std::string_view key,
                                     std::string_view value) {
  auto v = parse_bytes(value);
  if (!v)
    return fmt::format("{} {}: expected a size, like 16384, 64k, 100m or 1g", key,
                       quote_if_empty(value));
  field = *v;
  return std::nullopt;
}

std::optional<std::string> set_bool(bool &field, std::string_view key, std::string_view value) {
  if (value == "true" || value == "1" || value == "yes" || value == "on") {
    field = true;
  } else if (value == "false" || value == "0" || value == "no" || value == "off") {
    field = false;
  } else {
    return fmt::format("{} {}: expected true or false", key, quote_if_empty(value));
  }
  return std::nullopt;
}

std::optional<std::string> set_level(LogLevel &field, std::string_view key,
                                     std::string_view value) {
  for (auto l : {LogLevel::debug, LogLevel::info, LogLevel::warn, LogLevel::error}) {
    if (value == level_name(l)) {
      field = l;
      return std::nullopt;
    }
  }
  return fmt::format("{} {}: expected debug, info, warn or error", key, quote_if_empty(value));
}

std::optional<std::string> set_list(std::vector<std::string> &field, std::string_view,
                                    std::string_view value) {
  if (value.empty()) {
    field.clear();
  } else {
    field.emplace_back(value);
  }
  return std::nullopt;
}

std::string show(const std::string &v) { return v; }
std::string show(const std::vector<std::string> &v) {
  std::string out;
  for (const auto &item : v) out += (out.empty() ? "" : "\n") + item;
  return out;
}
std::string show(uint64_t v) { return std::to_string(v); }
std::string show(double v) { return format_seconds(v); }
std::string show(bool v) { return v ? "true" : "false"; }
std::string show(LogLevel v) { return level_name(v); }

template <typename T>
nlohmann::ordered_json json_value(const T &v) {
  return v;
}
nlohmann::ordered_json json_value(LogLevel v) { return level_name(v); }
nlohmann::ordered_json json_value(double v) { return json_number(v); }  // 60, not 60.0

}  // namespace

Config::Config() {
#define VALVE_OPTION_DEFAULT_(key, member, kind, scope, def, help) assign(key, def);
  VALVE_OPTIONS(VALVE_OPTION_DEFAULT_)
#undef VALVE_OPTION_DEFAULT_
}

std::optional<std::string> Config::set(std::string_view key, std::string_view value) {
  // Parse into a copy, so a value out of range leaves the option as it was.
  Config trial = *this;
  if (auto err = trial.assign(key, value)) return err;
  if (auto err = trial.check(key)) return err;
  *this = std::move(trial);
  if (!was_given(key)) given_.emplace_back(key);
  return std::nullopt;
}

bool Config::was_given(std::string_view key) const {
  return std::find(given_.begin(), given_.end(), key) != given_.end();
}

void Config::copy_from(const Config &other, std::string_view key) {
#define VALVE_OPTION_COPY_(k, member, kind, scope, def, help) \
  if (key == k) member = other.member;
  VALVE_OPTIONS(VALVE_OPTION_COPY_)
#undef VALVE_OPTION_COPY_
}

bool is_server_option(std::string_view key) {
  for (const auto &o : kOptions) {
    if (key == o.key) return o.server;
  }
  return false;
}

std::optional<std::string> Config::assign(std::string_view key, std::string_view value) {
#define VALVE_OPTION_SET_(k, member, kind, scope, def, help) \
  if (key == k) return set_##kind(member, key, value);
  VALVE_OPTIONS(VALVE_OPTION_SET_)
#undef VALVE_OPTION_SET_
  return fmt::format("{} {}: unknown option", key, quote_if_empty(value));
}

std::optional<std::string> Config::check(std::string_view key) const {
  if (key == "port" && port > 65535) return fmt::format("port {}: must be at most 65535", port);
  if (key == "n-max" && n_max < 1) return fmt::format("n-max {}: must be at least 1", n_max);
  if (key == "max-connections" && max_connections < 1)
    return fmt::format("max-connections {}: must be at least 1", max_connections);
  if (key == "type" && type != "plumber" && type != "shiny")
    return fmt::format("type {}: expected plumber or shiny", quote_if_empty(type));
  if (key == "host" && host.empty()) return std::string("host \"\": must not be empty");
  if (key == "max-header-size" && max_header_size < 1024)
    return fmt::format("max-header-size {}: must be at least 1024", max_header_size);
  if (key == "health-path" && !health_path.empty() && health_path.front() != '/')
    return fmt::format("health-path {}: must start with /", health_path);
  if (key == "worker-nice" && worker_nice > 19)
    return fmt::format("worker-nice {}: must be at most 19", worker_nice);
  if (key == "check-status" && (check_status < 400 || check_status > 499))
    return fmt::format("check-status {}: must be from 400 to 499", check_status);
  if (key == "health-rise" && health_rise < 1)
    return fmt::format("health-rise {}: must be at least 1", health_rise);
  if (key == "health-fall" && health_fall < 1)
    return fmt::format("health-fall {}: must be at least 1", health_fall);
  if (key == "env") {
    for (const auto &item : env) {
      std::string_view name = std::string_view(item).substr(0, item.find('='));
      if (!is_env_name(name))
        return fmt::format(
            "env {}: expected NAME=VALUE or NAME, where NAME is letters, digits "
            "and underscores and does not start with a digit",
            item);
    }
  }
  if (key == "client-key" && !valid_client_key_spec(client_key))
    return fmt::format("client-key {}: expected ip, header:NAME or forwarded:N (N from 1 to 32)",
                       quote_if_empty(client_key));
  if (key == "preload-spares" && preload_spares != "auto" && !fixed_preload_spares())
    return fmt::format("preload-spares {}: expected auto or a number from 0 to {}",
                       quote_if_empty(preload_spares), kMaxPreloadSpares);
  if (key == "priority-header" && !priority_header.empty() &&
      priority_header.find_first_of(" \t:()<>@,;\\\"/[]?={}") != std::string::npos)
    return fmt::format("priority-header {}: expected a header name", priority_header);
  if (key == "admin" && !admin.empty()) {
    if (auto err = check_listen_address(admin)) return fmt::format("admin {}: {}", admin, *err);
  }
  if (key == "error-hook-url" && !error_hook_url.empty()) {
    std::string why;
    if (!parse_hook_url(error_hook_url, &why))
      return fmt::format("error-hook-url {}: {}", error_hook_url, why);
  }
  for (auto [k, v] :
       {std::pair{"access-log-format", &access_log_format}, std::pair{"log-format", &log_format}}) {
    if (key == k && *v != "text" && *v != "json")
      return fmt::format("{} {}: expected text or json", k, quote_if_empty(*v));
  }
  struct Positive {
    const char *key;
    double value;
  };
  for (auto [k, v] :
       {Positive{"check-unused", check_unused}, Positive{"startup-timeout", startup_timeout},
        Positive{"timeout", timeout}, Positive{"queue-timeout", queue_timeout},
        Positive{"job-timeout", job_timeout}, Positive{"job-result-ttl", job_result_ttl},
        Positive{"header-timeout", header_timeout},
        Positive{"keepalive-timeout", keepalive_timeout},
        Positive{"health-interval", health_interval}, Positive{"health-timeout", health_timeout},
        Positive{"error-hook-timeout", error_hook_timeout}}) {
    if (key == k && !(v > 0))
      return fmt::format("{} {}: must be more than 0", k, format_seconds(v));
  }
  return std::nullopt;
}

std::optional<std::string> Config::get(std::string_view key) const {
#define VALVE_OPTION_GET_(k, member, kind, scope, def, help) \
  if (key == k) return show(member);
  VALVE_OPTIONS(VALVE_OPTION_GET_)
#undef VALVE_OPTION_GET_
  return std::nullopt;
}

std::optional<std::string> Config::validate() const {
  for (size_t i = 0; const char *key = option_key(i); ++i) {
    if (auto err = check(key)) return err;
  }
  // With a config file, the checks across options are made once it is read (config_file.cpp).
  if (!config.empty()) return std::nullopt;
  if (n_min > n_max) return fmt::format("n-min {}: must be at most n-max ({})", n_min, n_max);
  if (file.empty() && cmd.empty()) return std::string("file \"\": give a plumber file or --cmd");
  if (!cmd.empty() && cmd.find("{port}") == std::string::npos &&
      cmd.find("{socket}") == std::string::npos)
    return fmt::format("cmd {}: must contain {{port}} or {{socket}}", cmd);
  if (preload && !cmd.empty())
    return fmt::format(
        "preload true: cannot be used with --cmd ({}): it forks plumber workers "
        "from a template R process",
        cmd);
  if (preload && shiny())
    return std::string(
        "preload true: cannot be used with --type shiny: the template loads plumber APIs only");
  return std::nullopt;
}

uint64_t Config::concurrency() const {
  if (worker_concurrency > 0) return worker_concurrency;
  // A Shiny process serves many sessions, each holding a WebSocket: 20 as Posit Connect's
  // default "max connections per process"; an R plumber worker serves one request at a time.
  return shiny() ? 20 : 1;
}

uint64_t Config::tunnel_workers() const {
  if (tunnel_workers_max > 0) return tunnel_workers_max;
  // A plumber worker holding a WebSocket serves nothing else (concurrency 1): one is kept for plain
  // requests. A Shiny worker serves its sessions' requests beside their WebSockets.
  return shiny() || n_max <= 1 ? n_max : n_max - 1;
}

uint64_t Config::jobs_workers() const {
  if (jobs_workers_max > 0) return jobs_workers_max;
  // A job holds a plumber worker for minutes: one is kept for plain requests, as for WebSockets.
  return n_max <= 1 ? 1 : n_max - 1;
}

std::optional<unsigned> Config::fixed_preload_spares() const {
  auto n = parse_uint(preload_spares);
  if (!n || *n > kMaxPreloadSpares) return std::nullopt;
  return static_cast<unsigned>(*n);
}

nlohmann::ordered_json Config::to_json_value() const {
  nlohmann::ordered_json doc = nlohmann::ordered_json::object();  // in the table's order
#define VALVE_OPTION_JSON_(k, member, kind, scope, def, help) doc[k] = json_value(member);
  VALVE_OPTIONS(VALVE_OPTION_JSON_)
#undef VALVE_OPTION_JSON_
  return doc;
}

std::string Config::to_json() const {
  // The object's members written here rather than by dump(): nlohmann prints doubles with Grisu2,
  // which is not always the shortest form (0.01207 as 0.012070000000000001), and seconds read as
  // format_seconds() shows them everywhere else.
  nlohmann::ordered_json doc = to_json_value();
  std::string out = "{";
  for (const auto &[key, value] : doc.items()) {
    out += fmt::format(
        "{}\"{}\":{}", out.size() > 1 ? "," : "", key,
        value.is_number_float() ? format_seconds(value.get<double>()) : json_text(value));
  }
  return out + "}";
}

const char *option_key(size_t index) {
  return index < std::size(kOptions) ? kOptions[index].key : nullptr;
}

const char *option_help(std::string_view key) {
  static thread_local std::string text;
  for (const auto &o : kOptions) {
    if (key == o.key) {
      text = *o.default_value ? fmt::format("{} (default: {})", o.help, o.default_value) : o.help;
      return text.c_str();
    }
  }
  return nullptr;
}

const char *option_kind(std::string_view key) {
  for (const auto &o : kOptions) {
    if (key == o.key) return o.kind;
  }
  return nullptr;
}

const char *option_default(std::string_view key) {
  for (const auto &o : kOptions) {
    if (key == o.key) return o.default_value;
  }
  return nullptr;
}

std::optional<ListenAddress> parse_listen_address(std::string_view text, std::string *why) {
  auto fail = [why](std::string reason) -> std::optional<ListenAddress> {
    if (why) *why = std::move(reason);
    return std::nullopt;
  };
  ListenAddress out;
  if (text.starts_with("unix:")) {
    out.path = std::string(text.substr(5));
    if (out.path.empty()) return fail("expected a socket path after unix:");
    if (out.path.size() >= sizeof(sockaddr_un{}.sun_path))
      return fail(fmt::format("the socket path is longer than {} bytes",
                              sizeof(sockaddr_un{}.sun_path) - 1));
    return out;
  }
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos)
    return fail("expected HOST:PORT (like 127.0.0.1:9000) or unix:/path");
  std::string_view host = text.substr(0, colon);
  auto port = parse_uint(text.substr(colon + 1));
  if (!port || *port > 65535) return fail("expected a port from 0 to 65535 after the colon");
  out.port = static_cast<uint16_t>(*port);
  unsigned char buf[sizeof(in6_addr)];
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    out.host = std::string(host.substr(1, host.size() - 2));
    if (inet_pton(AF_INET6, out.host.c_str(), buf) != 1) return fail("not an IPv6 address");
  } else {
    out.host = host == "localhost" ? "127.0.0.1" : std::string(host);
    if (inet_pton(AF_INET, out.host.c_str(), buf) != 1)
      return fail("expected an IPv4 address, [IPv6] or localhost before the port");
  }
  return out;
}

std::optional<std::string> check_listen_address(std::string_view text) {
  std::string why;
  if (parse_listen_address(text, &why)) return std::nullopt;
  return why;
}

bool is_env_name(std::string_view name) {
  if (name.empty() || (name[0] >= '0' && name[0] <= '9')) return false;
  for (char c : name) {
    bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) return false;
  }
  return true;
}

std::optional<uint64_t> parse_uint(std::string_view text) {
  uint64_t v = 0;
  if (text.empty()) return std::nullopt;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size()) return std::nullopt;
  return v;
}

std::optional<double> parse_seconds(std::string_view text) {
  double scale = 1;
  if (text.ends_with("ms")) {
    scale = 0.001;
    text.remove_suffix(2);
  } else if (text.ends_with("s")) {
    text.remove_suffix(1);
  } else if (text.ends_with("m")) {
    scale = 60;
    text.remove_suffix(1);
  }
  if (text.empty()) return std::nullopt;
  double v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size() || !std::isfinite(v) || v < 0)
    return std::nullopt;
  v *= scale;
  if (v > 365.0 * 24 * 3600) return std::nullopt;
  return v;
}

std::optional<uint64_t> parse_bytes(std::string_view text) {
  uint64_t scale = 1;
  if (!text.empty()) {
    switch (text.back()) {
      case 'k':
      case 'K':
        scale = uint64_t{1} << 10;
        break;
      case 'm':
      case 'M':
        scale = uint64_t{1} << 20;
        break;
      case 'g':
      case 'G':
        scale = uint64_t{1} << 30;
        break;
      default:
        break;
    }
    if (scale != 1) text.remove_suffix(1);
  }
  auto v = parse_uint(text);
  if (!v || *v > (UINT64_MAX / scale)) return std::nullopt;
  return *v * scale;
}

}  // namespace valve
