// router.hpp and layout.hpp: which app a request goes to, weighted sticky splits, and config files.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "http.hpp"
#include "layout.hpp"
#include "router.hpp"
#include "support.hpp"

namespace {

using valve::Route;

Route route(std::string prefix, std::string app, std::string hostname = {}) {
  Route r;
  r.prefix = std::move(prefix);
  r.hostname = std::move(hostname);
  r.backends.push_back({std::move(app), 1});
  return r;
}

const char *app_for(const std::vector<Route> &routes, const char *host, const char *target) {
  const Route *r = valve::match_route(routes, host, target);
  return r ? r->backends.front().app.c_str() : "none";
}

Route split(double a, double b) {
  Route r;
  r.prefix = "/";
  r.backends = {{"v1", a}, {"v2", b}};
  return r;
}

using ConfigFile = test::TempFile;

std::optional<valve::Layout> load(const ConfigFile &file, std::vector<valve::Mistake> *mistakes,
                                  valve::Config options = {}) {
  REQUIRE_FALSE(options.set("config", file.path).has_value());
  return valve::load_layout(options, mistakes);
}

}  // namespace

TEST_CASE("routing: the longest prefix on whole path segments wins; host routes before any-host") {
  std::vector<Route> routes = {route("/", "root"), route("/api", "api"),
                               route("/api/v2", "v2"), route("/api", "api-host", "api.example.com")};
  CHECK(std::string(app_for(routes, "x", "/")) == "root");
  CHECK(std::string(app_for(routes, "x", "/other?q=1")) == "root");
  CHECK(std::string(app_for(routes, "x", "/api")) == "api");
  CHECK(std::string(app_for(routes, "x", "/api?x=/api/v2")) == "api");
  CHECK(std::string(app_for(routes, "x", "/api/v2/predict")) == "v2");
  CHECK(std::string(app_for(routes, "x", "/api/v20")) == "api");  // not a segment of /api/v2
  CHECK(std::string(app_for(routes, "x", "/apix")) == "root");
  CHECK(std::string(app_for(routes, "API.Example.com:8080", "/api/x")) == "api-host");
  CHECK(std::string(app_for(routes, "api.example.com.", "/api")) == "api-host");
  CHECK(std::string(app_for(routes, "api.example.com", "/api/v2")) == "v2");  // longer prefix
  std::vector<Route> no_root = {route("/a", "a")};
  CHECK(std::string(app_for(no_root, "x", "/b")) == "none");
  std::vector<Route> by_host = {route("/", "one", "one.test"), route("/", "two", "two.test")};
  CHECK(std::string(app_for(by_host, "two.test", "/")) == "two");
  CHECK(std::string(app_for(by_host, "[::1]:3000", "/")) == "none");
}

TEST_CASE("routing: strip_prefix keeps the rest of the target, and / for nothing") {
  using valve::strip_prefix;
  CHECK(strip_prefix("/v1/predict?x=1", "/v1") == "/predict?x=1");
  CHECK(strip_prefix("/v1", "/v1") == "/");
  CHECK(strip_prefix("/v1?x", "/v1") == "/?x");
  CHECK(strip_prefix("/v1/", "/v1") == "/");
  CHECK(strip_prefix("/anything", "/") == "/anything");
}

TEST_CASE("routing: cookie values and sticky keys") {
  CHECK(valve::cookie_value("a=1; user=alice; b=2", "user") == "alice");
  CHECK(valve::cookie_value("user=\"bob\"", "user") == "bob");
  CHECK(valve::cookie_value("username=x", "user").empty());
  Route r = split(1, 1);
  valve::Head head;
  head.headers.push_back({"Cookie", "theme=dark; uid=42"});
  head.headers.push_back({"X-User", " carol "});
  CHECK(valve::sticky_key(r, head, "10.0.0.1") == "ip:10.0.0.1");
  REQUIRE(r.sticky.parse("header:x-user"));
  CHECK(valve::sticky_key(r, head, "10.0.0.1") == "h:carol");
  REQUIRE(r.sticky.parse("cookie:uid"));
  CHECK(valve::sticky_key(r, head, "10.0.0.1") == "c:42");
  REQUIRE(r.sticky.parse("cookie:missing"));
  CHECK(valve::sticky_key(r, head, "10.0.0.1") == "ip:10.0.0.1");  // absent: the address
  CHECK_FALSE(r.sticky.parse("header:"));
  CHECK_FALSE(r.sticky.parse("address"));
}

TEST_CASE("routing: a weighted split gives each app its share of 10,000 keys, within 2 points") {
  for (auto weights : {std::pair{90.0, 10.0}, std::pair{50.0, 50.0}, std::pair{1.0, 3.0}}) {
    double a = weights.first, b = weights.second;
    Route r = split(a, b);
    int to_v2 = 0;
    for (int i = 0; i < 10000; ++i) to_v2 += valve::pick_backend(r, "user-" + std::to_string(i));
    double share = to_v2 / 10000.0, want = b / (a + b);
    CAPTURE(a);
    CAPTURE(b);
    CHECK(share > want - 0.02);
    CHECK(share < want + 0.02);
  }
  Route off = split(1, 0);
  for (int i = 0; i < 1000; ++i) CHECK(valve::pick_backend(off, std::to_string(i)) == 0);
}

TEST_CASE("routing: keys stay put while weights stay, and move only toward an app that grows") {
  Route before = split(90, 10), after = split(80, 20);
  int moved = 0;
  for (int i = 0; i < 10000; ++i) {
    std::string key = "k" + std::to_string(i);
    size_t first = valve::pick_backend(before, key);
    CHECK(valve::pick_backend(before, key) == first);  // the same answer every time
    size_t second = valve::pick_backend(after, key);
    if (first == 1) CHECK(second == 1);  // v2 grew: none of its keys leaves it
    moved += first != second;
  }
  // About 10% of keys must move from v1 to v2, and no more than that.
  CHECK(moved > 800);
  CHECK(moved < 1200);
  // Adding a third app takes keys only for itself.
  Route three = split(90, 10);
  three.backends.push_back({"v3", 10});
  for (int i = 0; i < 5000; ++i) {
    std::string key = "k" + std::to_string(i);
    size_t now = valve::pick_backend(three, key);
    if (now != 2) CHECK(now == valve::pick_backend(before, key));
  }
}

TEST_CASE("layout: without a config file, one app named default serves every path") {
  valve::Config options;
  std::vector<valve::Mistake> mistakes;
  auto layout = valve::load_layout(options, &mistakes);
  REQUIRE(layout);
  CHECK_FALSE(layout->from_file);
  REQUIRE(layout->apps.size() == 1);
  CHECK(layout->apps[0].name == "default");
  REQUIRE(layout->routes.size() == 1);
  CHECK(layout->routes[0].prefix == "/");
}

TEST_CASE("layout: apps inherit the top level, set their own options, and flags win over both") {
  ConfigFile file(R"(port = 8080
n-max = 4
timeout = "30s"
env = ["SHARED=1"]

[apps.v1]
file = "v1/plumber.R"
prefix = "/v1"
strip-prefix = true

[apps.v2]
file = "/srv/v2/plumber.R"
n-max = 2
env = ["ONLY_V2=yes"]
worker-concurrency = 4

[[routes]]
prefix = "/predict"
hostname = "api.example.com"
split = { v1 = 90, v2 = 10 }
sticky = "cookie:uid"
)");
  std::vector<valve::Mistake> mistakes;
  valve::Config flags;
  REQUIRE_FALSE(flags.set("timeout", "5").has_value());
  REQUIRE_FALSE(flags.set("env", "FROM_FLAG=1").has_value());
  auto layout = load(file, &mistakes, flags);
  for (const auto &m : mistakes) FAIL_CHECK(m.line << ": " << m.message);
  REQUIRE(layout);
  CHECK(layout->from_file);
  CHECK(layout->server.port == 8080);
  REQUIRE(layout->apps.size() == 2);
  const valve::AppSpec *v1 = layout->find("v1");
  const valve::AppSpec *v2 = layout->find("v2");
  REQUIRE(v1);
  REQUIRE(v2);
  std::string dir = file.path.substr(0, file.path.rfind('/') + 1);
  CHECK(v1->config.file == dir + "v1/plumber.R");  // relative to the file's directory
  CHECK(v2->config.file == "/srv/v2/plumber.R");
  CHECK(v1->config.n_max == 4);
  CHECK(v2->config.n_max == 2);
  CHECK(v2->config.worker_concurrency == 4);
  CHECK(v1->config.timeout == 5);  // the flag
  CHECK(v2->config.timeout == 5);
  CHECK(v1->config.env == std::vector<std::string>{"SHARED=1", "FROM_FLAG=1"});
  CHECK(v2->config.env == std::vector<std::string>{"SHARED=1", "ONLY_V2=yes", "FROM_FLAG=1"});
  REQUIRE(layout->routes.size() == 2);
  const Route &mount = layout->routes[0];
  CHECK(mount.prefix == "/v1");
  CHECK(mount.strip_prefix);
  const Route &canary = layout->routes[1];
  CHECK(canary.hostname == "api.example.com");
  REQUIRE(canary.backends.size() == 2);
  CHECK(canary.backends[0].app == "v1");
  CHECK(canary.backends[0].weight == 90);
  CHECK(canary.sticky.describe() == "cookie:uid");
}

TEST_CASE("layout: every mistake is listed with its line and what is expected") {
  ConfigFile file(R"(nmax = 3
port = "high"

[apps.a]
file = "a.R"
port = 4
prefix = "v1"

[apps.b]
file = "b.R"

[[routes]]
prefix = "/s"
split = { a = 1, c = 2 }

[[routes]]
prefix = "/t"
app = "a"
weight = 3
)");
  std::vector<valve::Mistake> mistakes;
  CHECK_FALSE(load(file, &mistakes));
  std::map<int, std::string> by_line;
  for (const auto &m : mistakes) by_line[m.line] += m.message;
  CHECK(by_line[1] == "nmax: unknown option (did you mean n-max?)");
  CHECK(by_line[2] == "port: expected a whole number, got a string");
  CHECK(by_line[6].find("port: an option of the whole server") == 0);
  CHECK(by_line[7] == "apps.a.prefix \"v1\": expected a path starting with /, like \"/v1\"");
  CHECK(by_line[12] == "route /s: no app is named c");
  CHECK(by_line[19].find("routes[2].weight: unknown key") == 0);
  CHECK(valve::format_mistakes("x.toml", {{3, "bad"}, {0, "worse"}}) == "x.toml:3: bad\nx.toml: worse");
}

TEST_CASE("layout: syntax errors, unmounted apps and doubled routes") {
  {
    ConfigFile file("port = 3000\n[apps.a\n");
    std::vector<valve::Mistake> mistakes;
    CHECK_FALSE(load(file, &mistakes));
    REQUIRE(mistakes.size() == 1);
    CHECK(mistakes[0].line == 2);
  }
  {
    ConfigFile file("[apps.a]\nfile = \"a.R\"\n[apps.b]\nfile = \"b.R\"\nprefix = \"/b\"\n");
    std::vector<valve::Mistake> mistakes;
    CHECK_FALSE(load(file, &mistakes));
    REQUIRE(mistakes.size() == 1);
    CHECK(mistakes[0].line == 1);
    CHECK(mistakes[0].message.find("apps.a: not mounted") == 0);
  }
  {
    ConfigFile file("[apps.a]\nfile = \"a.R\"\nprefix = \"/x\"\n[[routes]]\nprefix = \"/x/\"\n"
                    "app = \"a\"\n");
    std::vector<valve::Mistake> mistakes;
    CHECK_FALSE(load(file, &mistakes));
    REQUIRE(mistakes.size() == 1);
    CHECK(mistakes[0].line == 4);
    CHECK(mistakes[0].message == "route /x: already routed on line 1");
  }
  {
    ConfigFile file("[apps.only]\nfile = \"a.R\"\nn-min = 5\nn-max = 2\n");
    std::vector<valve::Mistake> mistakes;
    CHECK_FALSE(load(file, &mistakes));
    REQUIRE(mistakes.size() == 1);
    CHECK(mistakes[0].message == "apps.only: n-min 5: must be at most n-max (2)");
  }
}
