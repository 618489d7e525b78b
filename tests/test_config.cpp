// config.hpp: the option table, its parsers, set/get/validate and the JSON view.
#include "config.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "support.hpp"

using valve::Config;
using valve::parse_bytes;
using valve::parse_seconds;
using valve::parse_uint;

namespace {

// What get() shows for a default as the table spells it: sizes come back in bytes.
std::string canonical_str(const char *def) { return def; }
std::string canonical_uint(const char *def) { return def; }
std::string canonical_secs(const char *def) { return def; }
std::string canonical_bool(const char *def) { return def; }
std::string canonical_level(const char *def) { return def; }
std::string canonical_list(const char *def) { return def; }
std::string canonical_bytes(const char *def) { return std::to_string(parse_bytes(def).value()); }

size_t option_count() {
  size_t n = 0;
  while (valve::option_key(n)) ++n;
  return n;
}

}  // namespace

TEST_CASE("config: get() returns every default of the VALVE_OPTIONS table") {
  Config c;
#define CHECK_DEFAULT_(key, member, kind, scope, def, help) \
  {                                                         \
    INFO("option " << key);                                 \
    auto got = c.get(key);                                  \
    REQUIRE(got.has_value());                               \
    CHECK(*got == canonical_##kind(def));                   \
  }
  VALVE_OPTIONS(CHECK_DEFAULT_)
#undef CHECK_DEFAULT_
}

TEST_CASE("config: the defaults, spelled out independently of the table") {
  // A second oracle: a changed default must be a deliberate change here too.
  const std::pair<const char *, const char *> expected[] = {
      {"host", "127.0.0.1"},
      {"port", "3000"},
      {"n-max", "3"},
      {"n-min", "1"},
      {"workers", "0"},
      {"config", ""},
      {"type", "plumber"},
      {"file", "plumber.R"},
      {"cmd", ""},
      {"openapi", ""},
      {"rscript", "Rscript"},
      {"env", ""},
      {"env-file", ""},
      {"user", ""},
      {"group", ""},
      {"allow-root", "false"},
      {"check-unused", "10"},
      {"max-age", "300"},
      {"startup-timeout", "60"},
      {"graceful-timeout", "30"},
      {"kill-timeout", "5"},
      {"worker-concurrency", "0"},
      {"worker-nice", "0"},
      {"queue-max", "1024"},
      {"queue-timeout", "30"},
      {"client-key", "ip"},
      {"client-max-in-flight", "0"},
      {"client-max-queued", "0"},
      {"priority-header", ""},
      {"timeout", "60"},
      {"job-timeout", "600"},
      {"job-result-ttl", "600"},
      {"jobs-max", "100"},
      {"jobs-max-bytes", "268435456"},
      {"jobs-workers-max", "0"},
      {"tunnel-idle-timeout", "3600"},
      {"tunnel-max-lifetime", "0"},
      {"tunnel-ping-interval", "30"},
      {"tunnel-workers-max", "0"},
      {"header-timeout", "10"},
      {"keepalive-timeout", "60"},
      {"max-connections", "10000"},
      {"max-header-size", "16384"},
      {"max-body-size", "1073741824"},
      {"request-buffer-size", "1048576"},
      {"cache-size", "0"},
      {"cache-entry-max", "1048576"},
      {"cache-lock-timeout", "5"},
      {"check-requests", "true"},
      {"check-status", "422"},
      {"underscores-in-headers", "false"},
      {"health-path", ""},
      {"health-interval", "5"},
      {"health-timeout", "2"},
      {"health-rise", "2"},
      {"health-fall", "3"},
      {"max-fails", "3"},
      {"max-requests", "0"},
      {"max-requests-jitter", "0"},
      {"max-rss", "0"},
      {"admin", ""},
      {"admin-token-file", ""},
      {"error-hook-command", ""},
      {"error-hook-url", ""},
      {"error-hook-timeout", "10"},
      {"access-log", ""},
      {"access-log-format", "text"},
      {"log-level", "info"},
      {"log-format", "text"},
      {"runtime-dir", ""},
      {"handle-signals", "false"},
      {"reap-orphans", "false"},
      {"notify", "false"},
      {"preload", "false"},
      {"preload-spares", "auto"},
  };
  Config c;
  CHECK(option_count() == std::size(expected));
  for (const auto &entry : expected) {  // no structured binding: INFO captures it
    INFO("option " << entry.first);
    CHECK(c.get(entry.first) == std::optional<std::string>(entry.second));
  }
  // The typed members agree with the strings.
  CHECK(c.port == 3000);
  CHECK(c.n_max == 3);
  CHECK(c.n_min == 1);
  CHECK(c.worker_concurrency == 0);
  CHECK(c.concurrency() == 1);  // 0: by type, one request at a time for plumber
  CHECK(c.max_header_size == 16 * 1024);
  CHECK(c.max_body_size == uint64_t{1} << 30);
  CHECK(c.queue_timeout == 30.0);
  CHECK(c.log_level == valve::LogLevel::info);
  CHECK_FALSE(c.handle_signals);
  CHECK_FALSE(c.validate().has_value());  // the defaults are a valid configuration
}

// The members come from the table, each typed by its kind: code using them sees these types.
static_assert(std::is_same_v<decltype(Config::host), std::string>);
static_assert(std::is_same_v<decltype(Config::port), uint64_t>);
static_assert(std::is_same_v<decltype(Config::timeout), double>);
static_assert(std::is_same_v<decltype(Config::max_body_size), uint64_t>);
static_assert(std::is_same_v<decltype(Config::allow_root), bool>);
static_assert(std::is_same_v<decltype(Config::log_level), valve::LogLevel>);
static_assert(std::is_same_v<decltype(Config::env), std::vector<std::string>>);

TEST_CASE("config: the server options, spelled out independently of the table") {
  // A second oracle for the table's scope column: these are read once, by the server as a whole.
  // clang-format off
  const char *const expected[] = {
      "host", "port", "workers", "config", "graceful-timeout", "header-timeout",
      "job-result-ttl", "jobs-max", "jobs-max-bytes",
      "keepalive-timeout", "max-connections", "max-header-size", "admin", "admin-token-file",
      "error-hook-command", "error-hook-url", "error-hook-timeout",
      "access-log", "access-log-format", "log-level", "log-format", "runtime-dir", "handle-signals",
      "reap-orphans", "notify"};
  // clang-format on
  std::set<std::string> got;
  for (size_t i = 0; const char *key = valve::option_key(i); ++i) {
    if (valve::is_server_option(key)) got.insert(key);
  }
  CHECK(got == std::set<std::string>(std::begin(expected), std::end(expected)));
  CHECK_FALSE(valve::is_server_option("no-such-option"));
}

TEST_CASE("config: the workers WebSockets may hold, by type unless set") {
  Config c;
  CHECK(c.tunnel_workers() == 2);  // plumber, n-max 3: one is kept for plain requests
  REQUIRE_FALSE(c.set("n-max", "1"));
  CHECK(c.tunnel_workers() == 1);  // the only worker: nothing can be kept
  REQUIRE_FALSE(c.set("n-max", "8"));
  REQUIRE_FALSE(c.set("type", "shiny"));
  CHECK(c.tunnel_workers() == 8);  // Shiny workers serve requests beside their sockets
  REQUIRE_FALSE(c.set("tunnel-workers-max", "3"));
  CHECK(c.tunnel_workers() == 3);
  CHECK(c.set("tunnel-idle-timeout", "-1"));
  REQUIRE_FALSE(c.set("tunnel-ping-interval", "500ms"));
  CHECK(c.tunnel_ping_interval == 0.5);
}

TEST_CASE("config: the jobs that may run at once, n-max - 1 unless set") {
  Config c;
  CHECK(c.jobs_workers() == 2);  // n-max 3: one worker is kept for plain requests
  REQUIRE_FALSE(c.set("n-max", "1"));
  CHECK(c.jobs_workers() == 1);  // the only worker: nothing can be kept
  REQUIRE_FALSE(c.set("n-max", "8"));
  REQUIRE_FALSE(c.set("type", "shiny"));
  CHECK(c.jobs_workers() == 7);  // whatever the type: a job holds its worker's request
  REQUIRE_FALSE(c.set("jobs-workers-max", "8"));
  CHECK(c.jobs_workers() == 8);  // as many as n-max: no worker kept
  auto err = c.set("jobs-workers-max", "-1");
  REQUIRE(err);
  CHECK(err->find("jobs-workers-max -1") != std::string::npos);
}

TEST_CASE("config: preload-spares is auto or a number up to 64") {
  Config c;
  CHECK_FALSE(c.fixed_preload_spares().has_value());  // auto
  REQUIRE_FALSE(c.set("preload-spares", "9"));
  CHECK(c.fixed_preload_spares() == 9u);
  REQUIRE_FALSE(c.set("preload-spares", "0"));
  CHECK(c.fixed_preload_spares() == 0u);
  REQUIRE_FALSE(c.set("preload-spares", "auto"));
  CHECK_FALSE(c.fixed_preload_spares().has_value());
  for (const char *bad : {"65", "-1", "many", ""}) {
    auto err = c.set("preload-spares", bad);
    REQUIRE(err.has_value());
    CHECK(err->find("preload-spares") != std::string::npos);
    CHECK(err->find("expected auto or a number from 0 to 64") != std::string::npos);
  }
}

TEST_CASE("config: option_key lists each option once, in table order, then nullptr") {
  std::set<std::string> seen;
  size_t i = 0;
  for (; valve::option_key(i); ++i) {
    INFO("index " << i);
    CHECK(seen.insert(valve::option_key(i)).second);
  }
  CHECK(i == 75);
  CHECK(std::string(valve::option_key(0)) == "host");
  CHECK(std::string(valve::option_key(i - 1)) == "preload-spares");
  CHECK(valve::option_key(i + 1000) == nullptr);
  CHECK(std::string(valve::option_help("n-max")) == "most workers to run at once (default: 3)");
  // An empty default is not shown.
  CHECK(std::string(valve::option_help("runtime-dir")) ==
        "private directory for worker sockets (default: a new one under $TMPDIR)");
  CHECK(std::string(valve::option_help("cmd")).find("(default:") == std::string::npos);
  CHECK(std::string(valve::option_help("cmd")).starts_with("run this shell command as a worker"));
  CHECK(valve::option_help("no-such-option") == nullptr);
}

TEST_CASE("config: parse_seconds") {
  CHECK(parse_seconds("30") == 30.0);
  CHECK(parse_seconds("0.5") == 0.5);
  CHECK(parse_seconds("0") == 0.0);
  CHECK(parse_seconds("250ms") == doctest::Approx(0.25));
  CHECK(parse_seconds("30s") == 30.0);
  CHECK(parse_seconds("2m") == 120.0);
  CHECK(parse_seconds("1.5m") == 90.0);
  CHECK(parse_seconds(std::to_string(365 * 24 * 3600)) == 365.0 * 24 * 3600);  // a year: the cap

  for (const char *bad : {"-1", "-0.5", "abc", "1e400", "", "ms", "s", "m", "inf", "nan", "1 s",
                          " 1", "1 ", "+1", "0x10", "1h", "5mss", "31536001", "1,5"}) {
    INFO("input '" << bad << "'");
    CHECK_FALSE(parse_seconds(bad).has_value());
  }
}

TEST_CASE("config: parse_bytes") {
  CHECK(parse_bytes("0") == uint64_t{0});
  CHECK(parse_bytes("1024") == uint64_t{1024});
  CHECK(parse_bytes("16k") == uint64_t{16384});
  CHECK(parse_bytes("16K") == uint64_t{16384});
  CHECK(parse_bytes("100m") == uint64_t{100} << 20);
  CHECK(parse_bytes("1g") == uint64_t{1} << 30);
  CHECK(parse_bytes("18446744073709551615") == UINT64_MAX);
  // The largest multiple that fits, and the first that does not.
  CHECK(parse_bytes("17179869183g") == (uint64_t{17179869183} << 30));
  CHECK_FALSE(parse_bytes("17179869184g").has_value());
  CHECK_FALSE(parse_bytes("18014398509481984k").has_value());
  CHECK_FALSE(parse_bytes("18446744073709551616").has_value());

  for (const char *bad : {"", "k", "-1", "1kb", "1.5k", " 1k", "1t", "abc", "0x10"}) {
    INFO("input '" << bad << "'");
    CHECK_FALSE(parse_bytes(bad).has_value());
  }
}

TEST_CASE("config: parse_uint") {
  CHECK(parse_uint("0") == uint64_t{0});
  CHECK(parse_uint("42") == uint64_t{42});
  CHECK(parse_uint("007") == uint64_t{7});
  CHECK(parse_uint("18446744073709551615") == UINT64_MAX);
  for (const char *bad :
       {"", "-1", "+1", " 1", "1 ", "1.0", "0x10", "1e3", "18446744073709551616", "abc"}) {
    INFO("input '" << bad << "'");
    CHECK_FALSE(parse_uint(bad).has_value());
  }
}

TEST_CASE("config: set() parses each kind and get() shows it back") {
  Config c;
  CHECK_FALSE(c.set("n-max", "8").has_value());
  CHECK(c.n_max == 8);
  CHECK(c.get("n-max") == "8");

  CHECK_FALSE(c.set("timeout", "250ms").has_value());
  CHECK(c.timeout == doctest::Approx(0.25));
  CHECK(c.get("timeout") == "0.25");

  CHECK_FALSE(c.set("max-body-size", "2m").has_value());
  CHECK(c.max_body_size == uint64_t{2} << 20);
  CHECK(c.get("max-body-size") == "2097152");

  for (const auto &entry : {std::pair{"true", true},
                            {"1", true},
                            {"yes", true},
                            {"on", true},
                            {"false", false},
                            {"0", false},
                            {"no", false},
                            {"off", false}}) {
    auto [text, value] = entry;
    INFO("bool '" << entry.first << "'");
    CHECK_FALSE(c.set("handle-signals", text).has_value());
    CHECK(c.handle_signals == value);
    CHECK(c.get("handle-signals") == (value ? "true" : "false"));
  }

  CHECK_FALSE(c.set("log-level", "debug").has_value());
  CHECK(c.log_level == valve::LogLevel::debug);
  CHECK_FALSE(c.set("log-level", "error").has_value());
  CHECK(c.get("log-level") == "error");

  CHECK_FALSE(c.set("host", "::1").has_value());
  CHECK(c.get("host") == "::1");
  CHECK_FALSE(c.get("no-such-option").has_value());

  // A list appends each value, shows them a line each, and empties on "".
  CHECK_FALSE(c.set("env", "A=1").has_value());
  CHECK_FALSE(c.set("env", "B=two words").has_value());
  CHECK_FALSE(c.set("env", "HOME").has_value());
  CHECK(c.env == std::vector<std::string>{"A=1", "B=two words", "HOME"});
  CHECK(c.get("env") == "A=1\nB=two words\nHOME");
  CHECK_FALSE(c.set("env", "").has_value());
  CHECK(c.env.empty());
}

TEST_CASE("config: env entries must be NAME=VALUE or NAME with a valid name") {
  Config c;
  REQUIRE_FALSE(c.set("env", "OK_1=x=y").has_value());
  for (const char *bad : {"=x", "1A=x", "A-B=x", "A B=x", "Ä=x"}) {
    INFO("env " << bad);
    auto err = c.set("env", bad);
    REQUIRE(err.has_value());
    CHECK(err->starts_with(std::string("env ") + bad + ": expected NAME=VALUE or NAME"));
  }
  CHECK(c.env == std::vector<std::string>{"OK_1=x=y"});  // refused values were not appended
  test::Json doc = test::parse_json(c.to_json());
  REQUIRE(doc["env"].kind == test::Json::Kind::array);
  REQUIRE(doc["env"].items.size() == 1);
  CHECK(doc["env"].items[0].text == "OK_1=x=y");
}

TEST_CASE("config: every value get() shows is accepted by set() unchanged") {
  Config c;
  for (size_t i = 0; valve::option_key(i); ++i) {
    const char *key = valve::option_key(i);
    INFO("option " << key);
    std::string shown = c.get(key).value();
    CHECK_FALSE(c.set(key, shown).has_value());
    CHECK(c.get(key) == shown);
  }
}

TEST_CASE("config: seconds with more than 6 significant digits survive get()") {
  Config c;
  REQUIRE_FALSE(c.set("max-age", "1234567").has_value());
  CHECK(c.max_age == 1234567.0);
  CHECK(c.get("max-age") == "1234567");
  REQUIRE_FALSE(c.set("timeout", "0.1234567").has_value());
  CHECK(c.get("timeout") == "0.1234567");
}

TEST_CASE("config: set() errors start with the key and the value") {
  Config c;
  const std::pair<std::pair<const char *, const char *>, const char *> cases[] = {
      {{"n-max", "abc"}, "n-max abc: expected a whole number"},
      {{"n-max", ""}, "n-max \"\": expected a whole number"},
      {{"port", "-1"}, "port -1: expected a whole number"},
      {{"timeout", "soon"}, "timeout soon: expected seconds, like 30, 0.5 or 250ms"},
      {{"timeout", "-1"}, "timeout -1: expected seconds, like 30, 0.5 or 250ms"},
      {{"max-body-size", "1t"}, "max-body-size 1t: expected a size, like 16384, 64k, 100m or 1g"},
      {{"handle-signals", "maybe"}, "handle-signals maybe: expected true or false"},
      {{"log-level", "loud"}, "log-level loud: expected debug, info, warn or error"},
      {{"no-such-option", "x"}, "no-such-option x: unknown option"},
  };
  for (const auto &entry : cases) {
    const auto &[kv, message] = entry;
    INFO("set " << entry.first.first << " " << entry.first.second);
    auto err = c.set(kv.first, kv.second);
    REQUIRE(err.has_value());
    CHECK(*err == message);
  }
  // A failed set() leaves the old value.
  CHECK(c.n_max == 3);
  CHECK(c.timeout == 60.0);
  CHECK(c.log_level == valve::LogLevel::info);
}

TEST_CASE("config: worker-concurrency 0 takes the type's default; any other value wins") {
  Config c;
  CHECK(c.concurrency() == 1);
  REQUIRE_FALSE(c.set("type", "shiny"));
  CHECK(c.shiny());
  CHECK(c.concurrency() == 20);
  REQUIRE_FALSE(c.set("worker-concurrency", "3"));
  CHECK(c.concurrency() == 3);
  REQUIRE_FALSE(c.set("type", "plumber"));
  CHECK(c.concurrency() == 3);
  REQUIRE_FALSE(c.set("worker-concurrency", "0"));
  CHECK(c.concurrency() == 1);
}

TEST_CASE("config: set() refuses a value out of range at once, naming it, and keeps the old one") {
  auto refused = [](const char *key, const char *value) {
    Config c;
    auto before = c.get(key);
    auto err = c.set(key, value);
    if (err) CHECK(c.get(key) == before);
    return err.value_or("(accepted)");
  };
  CHECK(refused("n-max", "0") == "n-max 0: must be at least 1");
  CHECK(refused("type", "flask") == "type flask: expected plumber or shiny");
  CHECK(refused("type", "") == "type \"\": expected plumber or shiny");
  CHECK(refused("port", "65536") == "port 65536: must be at most 65535");
  CHECK(refused("host", "") == "host \"\": must not be empty");
  CHECK(refused("timeout", "0") == "timeout 0: must be more than 0");
  CHECK(refused("header-timeout", "0ms") == "header-timeout 0: must be more than 0");
  CHECK(refused("max-header-size", "1023") == "max-header-size 1023: must be at least 1024");
  CHECK(refused("port", "65535") == "(accepted)");
  CHECK(refused("health-path", "health") == "health-path health: must start with /");
  CHECK(refused("health-interval", "0") == "health-interval 0: must be more than 0");
  CHECK(refused("health-fall", "0") == "health-fall 0: must be at least 1");
  CHECK(refused("health-rise", "0") == "health-rise 0: must be at least 1");
  CHECK(refused("access-log-format", "xml") == "access-log-format xml: expected text or json");
  CHECK(refused("log-format", "") == "log-format \"\": expected text or json");
  CHECK(refused("admin", "9000") ==
        "admin 9000: expected HOST:PORT (like 127.0.0.1:9000) or unix:/path");
  CHECK(refused("admin", "127.0.0.1:99999") ==
        "admin 127.0.0.1:99999: expected a port from 0 to 65535 after the colon");
  CHECK(refused("admin", "example.com:80") ==
        "admin example.com:80: expected an IPv4 address, [IPv6] or localhost before the port");
  CHECK(refused("admin", "unix:") == "admin unix:: expected a socket path after unix:");
  CHECK(refused("admin", "") == "(accepted)");  // off
  CHECK(refused("health-path", "/healthz") == "(accepted)");
}

TEST_CASE("config: parse_listen_address") {
  auto tcp = valve::parse_listen_address("127.0.0.1:9000");
  REQUIRE(tcp);
  CHECK_FALSE(tcp->is_unix());
  CHECK(tcp->host == "127.0.0.1");
  CHECK(tcp->port == 9000);
  auto v6 = valve::parse_listen_address("[::1]:0");
  REQUIRE(v6);
  CHECK(v6->host == "::1");
  CHECK(v6->port == 0);
  auto local = valve::parse_listen_address("localhost:80");
  REQUIRE(local);
  CHECK(local->host == "127.0.0.1");
  auto unix_socket = valve::parse_listen_address("unix:/run/valve/admin.sock");
  REQUIRE(unix_socket);
  CHECK(unix_socket->is_unix());
  CHECK(unix_socket->path == "/run/valve/admin.sock");
  std::string why;
  CHECK_FALSE(valve::parse_listen_address("unix:" + std::string(200, 'a'), &why));
  CHECK(why == "the socket path is longer than 107 bytes");
  for (const char *bad : {"", ":", "127.0.0.1:", "127.0.0.1:x", "[::1:80", "[zz]:80", "1.2.3:80"}) {
    INFO("address " << bad);
    CHECK_FALSE(valve::parse_listen_address(bad));
  }
}

TEST_CASE("config: validate() checks the options together") {
  auto invalid = [](std::initializer_list<std::pair<const char *, const char *>> settings) {
    Config c;
    for (auto [k, v] : settings) REQUIRE_FALSE(c.set(k, v).has_value());
    return c.validate().value_or("(valid)");
  };
  CHECK(invalid({{"n-min", "5"}, {"n-max", "2"}}) == "n-min 5: must be at most n-max (2)");
  CHECK(invalid({{"cmd", "my-server --listen 8080"}}) ==
        "cmd my-server --listen 8080: must contain {port} or {socket}");
  CHECK(invalid({{"file", ""}}) == "file \"\": give a plumber file or --cmd");
  CHECK(invalid({{"preload", "true"}, {"cmd", "srv --port {port}"}}) ==
        "preload true: cannot be used with --cmd (srv --port {port}): it forks plumber workers "
        "from a template R process");
  CHECK(invalid({{"preload", "true"}, {"type", "shiny"}}) ==
        "preload true: cannot be used with --type shiny: the template loads plumber APIs only");

  // And what is fine.
  CHECK(invalid({{"n-min", "0"}, {"n-max", "1"}}) == "(valid)");
  CHECK(invalid({{"n-min", "4"}, {"n-max", "4"}}) == "(valid)");
  CHECK(invalid({{"port", "0"}}) == "(valid)");
  CHECK(invalid({{"port", "65535"}}) == "(valid)");
  CHECK(invalid({{"cmd", "srv --port {port}"}}) == "(valid)");
  CHECK(invalid({{"cmd", "srv --socket {socket}"}, {"file", ""}}) == "(valid)");
  CHECK(invalid({{"max-header-size", "1k"}}) == "(valid)");
  CHECK(invalid({{"preload", "true"}}) == "(valid)");
}

TEST_CASE("config: to_json() is a well-formed object with every option, typed") {
  Config c;
  std::string json = c.to_json();
  CHECK(json.find("\"n-max\":3") != std::string::npos);
  CHECK(json.find("\"host\":\"127.0.0.1\"") != std::string::npos);

  test::Json doc = test::parse_json(json);
  REQUIRE(doc.kind == test::Json::Kind::object);
  REQUIRE(doc.members.size() == option_count());
  for (size_t i = 0; i < doc.members.size(); ++i)
    CHECK(doc.members[i].first == valve::option_key(i));
  CHECK(doc["n-max"].kind == test::Json::Kind::number);
  CHECK(doc["n-max"].number == 3);
  CHECK(doc["port"].number == 3000);
  CHECK(doc["timeout"].number == 60);
  CHECK(doc["max-header-size"].number == 16384);
  CHECK(doc["host"].text == "127.0.0.1");
  CHECK(doc["cmd"].kind == test::Json::Kind::string);
  CHECK(doc["cmd"].text == "");
  CHECK(doc["log-level"].text == "info");
  CHECK(doc["handle-signals"].kind == test::Json::Kind::boolean);
  CHECK_FALSE(doc["handle-signals"].boolean);

  // Strings are escaped: quotes, backslashes and control characters survive a round trip.
  std::string tricky = "sh -c \"srv\\x --port {port}\"\t\n\x01";
  REQUIRE_FALSE(c.set("cmd", tricky).has_value());
  REQUIRE_FALSE(c.set("queue-timeout", "250ms").has_value());
  test::Json doc2 = test::parse_json(c.to_json());
  CHECK(doc2["cmd"].text == tricky);
  CHECK(doc2["queue-timeout"].number == doctest::Approx(0.25));
}

TEST_CASE("config: to_json() writes seconds as get() shows them, the shortest that round-trips") {
  Config c;
  REQUIRE_FALSE(c.set("queue-timeout", "12.07ms").has_value());
  REQUIRE_FALSE(c.set("timeout", "0.5").has_value());
  std::string json = c.to_json();
  CHECK(json.find("\"queue-timeout\":0.01207,") != std::string::npos);  // not 0.012070000000000001
  CHECK(json.find("\"timeout\":0.5,") != std::string::npos);
  CHECK(json.find("\"max-age\":300,") != std::string::npos);  // not 300.0
  CHECK(json.find("\"env\":[],") != std::string::npos);

  // Bytes that are not UTF-8 (a flag may hold any) become U+FFFD: the JSON stays valid.
  REQUIRE_FALSE(c.set("cmd", "srv\xff {port}").has_value());
  CHECK(c.to_json().find("\"cmd\":\"srv\xef\xbf\xbd {port}\",") != std::string::npos);
}
