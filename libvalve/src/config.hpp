// The server's configuration: one table of options, from which the setters, getters, help texts and
// the status JSON are all derived.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "log.hpp"

namespace valve {

// XX(key, member, kind, scope, default, help). kind: str, uint (an integer), secs (seconds,
// fractions allowed, with an optional ms/s/m suffix), bytes (with an optional k/m/g suffix), bool,
// level, list (each value set is appended; setting "" empties the list). scope: server (the
// listener, logs, admin interface, signals: one for the whole server) or app (each app in a config
// file may set its own).
// clang-format off
#define VALVE_OPTIONS(XX)                                                                          \
  XX("host", host, str, server, "127.0.0.1", "address to listen on")                               \
  XX("port", port, uint, server, "3000", "port to listen on (0 picks a free one)")                 \
  XX("n-max", n_max, uint, app, "3", "most workers to run at once")                                \
  XX("n-min", n_min, uint, app, "1", "fewest workers to keep running, even when idle")             \
  XX("workers", workers, uint, server, "0",                                                        \
     "accepted for valve-rs compatibility; valve serves all connections from one event loop")      \
  XX("config", config, str, server, "",                                                            \
     "a TOML file holding any of these options, plus apps and routes (flags win over it); read "   \
     "again on each reload")                                                                       \
  XX("type", type, str, app, "plumber",                                                            \
     "what each worker serves: plumber (the --file API) or shiny (the Shiny app directory --file, "  \
     "each browser session pinned to one worker by a cookie)")                                      \
  XX("file", file, str, app, "plumber.R",                                                          \
     "the plumber API file each worker serves (with --type shiny: the app's directory)")           \
  XX("cmd", cmd, str, app, "",                                                                     \
     "run this shell command as a worker instead of plumber; {port} (or {socket}) is replaced by " \
     "its address")                                                                                \
  XX("openapi", openapi, str, app, "",                                                             \
     "an OpenAPI JSON file that describes the API, read at start and on each reload: requests are " \
     "checked against it instead of the spec plumber workers write (with --cmd, the only spec)")   \
  XX("rscript", rscript, str, app, "Rscript", "the Rscript program that runs plumber workers")     \
  XX("env", env, list, app, "",                                                                    \
     "NAME=VALUE to set in the workers' environment, or NAME to pass valve's own value on "        \
     "(repeatable); workers get only these, --env-file and a few basics such as PATH and HOME")    \
  XX("env-file", env_file, str, app, "",                                                           \
     "a file of NAME=VALUE lines for the workers' environment, read at start and on each reload")  \
  XX("user", user, str, app, "",                                                                   \
     "run workers as this user (name or uid; valve must run as root to switch)")                   \
  XX("group", group, str, app, "",                                                                 \
     "run workers with this group (default: the user's primary group)")                            \
  XX("allow-root", allow_root, bool, app, "false",                                                 \
     "let workers run as root; without it valve refuses when it would start them as root")         \
  XX("check-unused", check_unused, secs, app, "10", "seconds between checks for idle workers")     \
  XX("max-age", max_age, secs, app, "300", "seconds an idle worker lives before it is stopped")    \
  XX("startup-timeout", startup_timeout, secs, app, "60",                                          \
     "seconds a new worker has to answer HTTP")                                                    \
  XX("graceful-timeout", graceful_timeout, secs, server, "30",                                     \
     "seconds in-flight requests get to finish on shutdown")                                       \
  XX("kill-timeout", kill_timeout, secs, app, "5",                                                 \
     "seconds between SIGTERM and SIGKILL when a worker is stopped")                               \
  XX("worker-concurrency", worker_concurrency, uint, app, "0",                                     \
     "requests (an open WebSocket counts as one) one worker serves at once; 0: by --type, 1 for "   \
     "plumber, 20 for shiny (where a session's own requests always reach its worker)")              \
  XX("worker-nice", worker_nice, uint, app, "0",                                                   \
     "niceness added to the workers' (and a preload template's), 0 to 19: under overload valve "   \
     "then gets the CPU first, to dispatch and to shed load promptly")                              \
  XX("queue-max", queue_max, uint, app, "1024",                                                    \
     "requests that may wait for a worker; beyond, 503")                                           \
  XX("queue-timeout", queue_timeout, secs, app, "30",                                              \
     "seconds a request may wait for a worker; then 503")                                          \
  XX("client-key", client_key, str, app, "ip",                                                    \
     "what tells clients apart in the queue, which serves them in turn: ip (the peer's address), " \
     "header:NAME (a header's value, such as an API key) or forwarded:N (the Nth address from "    \
     "the right of X-Forwarded-For, behind N trusted proxies)")                                    \
  XX("client-max-in-flight", client_max_in_flight, uint, app, "0",                                 \
     "requests one client may have on workers at once; more wait in the queue (0: no limit)")      \
  XX("client-max-queued", client_max_queued, uint, app, "0",                                       \
     "requests one client may have waiting; beyond, 429 with Retry-After (0: no limit)")           \
  XX("priority-header", priority_header, str, app, "",                                             \
     "a request header whose value, interactive, normal or batch, sets the request's priority "   \
     "class: any client may lower its own, only a trusted (loopback) peer raise it (off when "     \
     "empty)")                                                                                     \
  XX("timeout", timeout, secs, app, "60", "seconds a worker has to answer a request; then 504")    \
  XX("job-timeout", job_timeout, secs, app, "600",                                                 \
     "seconds a job (a request sent with Prefer: respond-async) may run on a worker, and may wait " \
     "for one (at least --queue-timeout); then its stored answer is 504 (or 503)")                 \
  XX("job-result-ttl", job_result_ttl, secs, server, "600",                                        \
     "seconds a finished job's answer is kept at its /_valve/jobs/ID; then 404")                   \
  XX("jobs-max", jobs_max, uint, server, "100",                                                    \
     "jobs kept at once, queued, running or finished; past it a Prefer: respond-async request "   \
     "gets 503 (0: no jobs; the preference is ignored and the request answered at once)")          \
  XX("jobs-max-bytes", jobs_max_bytes, bytes, server, "256m",                                      \
     "bytes of finished jobs' answers kept in memory; past it a new job gets 503, and an answer "  \
     "that does not fit is stored as a 503 instead (0: no limit)")                                 \
  XX("jobs-workers-max", jobs_workers_max, uint, app, "0",                                         \
     "most of an app's workers that jobs may hold at once; more jobs wait in valve (queued) until "\
     "one finishes (0: n-max - 1, at least 1, so that plain requests always have a worker)")       \
  XX("tunnel-idle-timeout", tunnel_idle_timeout, secs, app, "3600",                                \
     "seconds a WebSocket may pass no data (pings aside) before valve closes it, freeing its "     \
     "worker (0: no limit)")                                                                       \
  XX("tunnel-max-lifetime", tunnel_max_lifetime, secs, app, "0",                                   \
     "seconds a WebSocket may stay open, however busy, before valve closes it (0: no limit)")      \
  XX("tunnel-ping-interval", tunnel_ping_interval, secs, app, "30",                                \
     "seconds a WebSocket's client may be silent before valve pings it; with no answer within "    \
     "as long again, valve closes it (0: no pings)")                                               \
  XX("tunnel-workers-max", tunnel_workers_max, uint, app, "0",                                     \
     "most workers that WebSockets may hold at once; a WebSocket past it gets 503 (0: by --type, " \
     "n-max - 1 for plumber so that plain requests always have a worker, n-max for shiny)")        \
  XX("header-timeout", header_timeout, secs, server, "10",                                         \
     "seconds a client has to send a request head (and, for a body valve buffers, each piece of "  \
     "it); then 408")                                                                              \
  XX("keepalive-timeout", keepalive_timeout, secs, server, "60",                                   \
     "seconds an idle client connection is kept")                                                  \
  XX("max-connections", max_connections, uint, server, "10000",                                    \
     "client connections open at once; past it a new one gets 503 and is closed")                 \
  XX("max-header-size", max_header_size, bytes, server, "16k",                                     \
     "largest request line plus headers; beyond, 414 or 431")                                      \
  XX("max-body-size", max_body_size, bytes, app, "1g",                                             \
     "largest request body; beyond, 413 (0: no limit)")                                            \
  XX("request-buffer-size", request_buffer_size, bytes, app, "1m",                                 \
     "a request body up to this size is read whole before the request goes to a worker, so a "     \
     "slow or malformed upload never holds one; larger bodies stream (0: stream every body)")      \
  XX("cache-size", cache_size, bytes, app, "0",                                                    \
     "bytes of the shared HTTP cache in front of this app's workers (0: no cache); it stores only " \
     "answers the app marks fresh (Cache-Control max-age or s-maxage, Expires), least recently "   \
     "used first out")                                                                             \
  XX("cache-entry-max", cache_entry_max, bytes, app, "1m",                                         \
     "largest answer the cache stores; a bigger one streams to its client and is not kept")        \
  XX("cache-lock-timeout", cache_lock_timeout, secs, app, "5",                                     \
     "seconds identical cacheable requests wait for the one a worker is answering, then go on "    \
     "their own (0: they never wait)")                                                             \
  XX("check-requests", check_requests, bool, app, "true",                                          \
     "check each request's query, path and JSON or form body parameters against the types and "     \
     "required parameters the API's spec declares (plumber's @param n:int), before a worker "      \
     "takes it: a request that fails gets --check-status and never reaches R")                     \
  XX("check-status", check_status, uint, app, "422",                                               \
     "the status (400 to 499) of a request that fails --check-requests; its JSON body names each "  \
     "wrong parameter, as FastAPI's does")                                                         \
  XX("underscores-in-headers", underscores_in_headers, bool, app, "false",                         \
     "pass request headers whose names contain _ to workers; off, they are dropped (as nginx "     \
     "does), since plumber reads X_User as the same HTTP_X_USER variable as X-User")               \
  XX("health-path", health_path, str, app, "",                                                     \
     "GET this path to check a ready worker's health (empty: check that it accepts a connection)") \
  XX("health-interval", health_interval, secs, app, "5",                                           \
     "seconds between health checks of an idle worker")                                            \
  XX("health-timeout", health_timeout, secs, app, "2",                                             \
     "seconds a health check may take; then it failed")                                            \
  XX("health-rise", health_rise, uint, app, "2",                                                   \
     "checks in a row that must pass for an unhealthy worker to serve again")                      \
  XX("health-fall", health_fall, uint, app, "3",                                                   \
     "checks in a row that must fail for a worker to be marked unhealthy and replaced")            \
  XX("max-fails", max_fails, uint, app, "3",                                                       \
     "requests in a row the worker itself fails (no connection, an answer that cannot be parsed, " \
     "a closed connection) before it is replaced; any answer that parses counts as a success "      \
     "(0: never)")                                                                                 \
  XX("max-requests", max_requests, uint, app, "0",                                                 \
     "requests after which a worker is replaced gracefully (0: never)")                            \
  XX("max-requests-jitter", max_requests_jitter, uint, app, "0",                                   \
     "up to this many more requests, at random per worker, so workers do not all recycle at once") \
  XX("max-rss", max_rss, uint, app, "0",                                                           \
     "megabytes of resident memory past which a worker is replaced gracefully (0: no limit)")      \
  XX("admin", admin, str, server, "",                                                              \
     "serve the admin interface (status, metrics, probes, reload, scale) on 127.0.0.1:PORT, "      \
     "another HOST:PORT (with --admin-token-file) or unix:/path (off when empty)")                 \
  XX("admin-token-file", admin_token_file, str, server, "",                                        \
     "a file holding the bearer token every admin request but /healthz and /readyz must send "     \
     "(Authorization: Bearer TOKEN); needed for an --admin address beyond loopback; read again "   \
     "on each reload; when empty, the token itself may be in $VALVE_ADMIN_TOKEN")                 \
  XX("error-hook-command", error_hook_command, str, server, "",                                    \
     "run this command for each error report (a worker's 5xx), the report's JSON on its stdin "    \
     "(at most 4 hooks run at once; off when empty)")                                              \
  XX("error-hook-url", error_hook_url, str, server, "",                                            \
     "POST each error report's JSON to this http://HOST[:PORT]/PATH (off when empty)")             \
  XX("error-hook-timeout", error_hook_timeout, secs, server, "10",                                 \
     "seconds an error hook may take: then its command is killed, its POST dropped")               \
  XX("access-log", access_log, str, server, "",                                                    \
     "log each request: - for stdout, or a file path (off when empty)")                            \
  XX("access-log-format", access_log_format, str, server, "text", "text or json")                  \
  XX("log-level", log_level, level, server, "info", "debug, info, warn or error")                  \
  XX("log-format", log_format, str, server, "text", "valve's own log lines: text or json")         \
  XX("runtime-dir", runtime_dir, str, server, "",                                                  \
     "private directory for worker sockets (default: a new one under $TMPDIR)")                    \
  XX("handle-signals", handle_signals, bool, server, "false",                                      \
     "stop gracefully on SIGINT and SIGTERM (valvectl turns this on)")                             \
  XX("reap-orphans", reap_orphans, bool, server, "false",                                          \
     "become a child subreaper and reap every orphan, as PID 1 in a container must")               \
  XX("notify", notify, bool, server, "false",                                                      \
     "tell a service manager (systemd's $NOTIFY_SOCKET) when workers are ready, reloading and "    \
     "stopping (valvectl turns this on)")                                                          \
  XX("preload", preload, bool, app, "false",                                                       \
     "load the API once in a template R process and fork each worker from it: workers start in "  \
     "milliseconds and share the template's memory")                                              \
  XX("preload-spares", preload_spares, str, app, "auto",                                           \
     "with --preload, workers forked ahead of demand and kept waiting, so that the next ones "     \
     "serve within milliseconds; each holds only the memory it wrote (about 12 MB). auto: as "     \
     "many as recent demand may need (all n-max would launch until 5 minutes have been seen), "    \
     "within n-max and memory; or a fixed number, 0 to 64")
// clang-format on

// The most spares a preload template keeps (preload_helper.c's MAX_SPARES).
constexpr unsigned kMaxPreloadSpares = 64;

struct Config {
  // Each kind's C++ type, for the members the table declares.
  using str_type = std::string;
  using uint_type = uint64_t;
  using secs_type = double;
  using bytes_type = uint64_t;
  using bool_type = bool;
  using level_type = LogLevel;
  using list_type = std::vector<std::string>;

#define VALVE_OPTION_MEMBER_(key, member, kind, scope, def, help) kind##_type member{};
  VALVE_OPTIONS(VALVE_OPTION_MEMBER_)
#undef VALVE_OPTION_MEMBER_

  Config();  // every default from the table

  // Sets one option; on failure returns a message naming the key and value.
  std::optional<std::string> set(std::string_view key, std::string_view value);
  std::optional<std::string> get(std::string_view key) const;
  // Every option's range, then the checks across options (n-min <= n-max, ...).
  std::optional<std::string> validate() const;
  // One option's range.
  std::optional<std::string> check(std::string_view key) const;
  // Every option as a JSON object, in the table's order.
  nlohmann::ordered_json to_json_value() const;
  std::string to_json() const;  // the same as text, seconds as format_seconds() writes them
  // The options set() was called for (flags, in valvectl): a config file's values yield to them.
  const std::vector<std::string> &given() const { return given_; }
  bool was_given(std::string_view key) const;
  // Copies one option's value from another configuration.
  void copy_from(const Config &other, std::string_view key);
  // The worker concurrency in force: worker-concurrency, or when 0 the default for the type.
  uint64_t concurrency() const;
  // The workers WebSockets may hold in force: tunnel-workers-max, or when 0 the default for the
  // type (at least 1).
  uint64_t tunnel_workers() const;
  // The jobs that may run at once: jobs-workers-max, or when 0 n-max - 1 (at least 1).
  uint64_t jobs_workers() const;
  // preload-spares as a fixed number; nullopt for auto.
  std::optional<unsigned> fixed_preload_spares() const;
  bool shiny() const { return type == "shiny"; }

 private:
  std::vector<std::string> given_;
  std::optional<std::string> assign(std::string_view key, std::string_view value);
};

const char *option_key(size_t index);
const char *option_help(std::string_view key);
const char *option_default(std::string_view key);  // as the table writes it; nullptr if unknown
// The option's kind as the table names it (str, uint, secs, bytes, bool, level, list); nullptr if
// unknown.
const char *option_kind(std::string_view key);

// Where a listener binds: a Unix socket path, or an IP address (IPv6 without brackets) and port.
struct ListenAddress {
  std::string path;  // set for unix:PATH
  std::string host;
  uint16_t port = 0;
  bool is_unix() const { return !path.empty(); }
};
// Parses unix:/path, IPv4:PORT, [IPv6]:PORT or localhost:PORT; nullopt with *why on failure.
std::optional<ListenAddress> parse_listen_address(std::string_view text,
                                                  std::string *why = nullptr);
std::optional<std::string> check_listen_address(std::string_view text);

// Options of the server as a whole (its listener, logs, admin interface, signals), as opposed to
// those each app may set for its own pool.
bool is_server_option(std::string_view key);

// True for a valid environment variable name: a letter or underscore, then letters, digits and
// underscores.
bool is_env_name(std::string_view name);

// Parsers, exposed for tests. Each returns nullopt on a malformed value.
std::optional<double> parse_seconds(std::string_view text);
std::optional<uint64_t> parse_bytes(std::string_view text);
std::optional<uint64_t> parse_uint(std::string_view text);

}  // namespace valve
