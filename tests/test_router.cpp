// router.hpp: which app a request goes to, and weighted sticky splits.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "http.hpp"
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

}  // namespace

TEST_CASE("routing: the longest prefix on whole path segments wins; host routes before any-host") {
  std::vector<Route> routes = {route("/", "root"), route("/api", "api"), route("/api/v2", "v2"),
                               route("/api", "api-host", "api.example.com")};
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
