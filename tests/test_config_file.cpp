// config_file.hpp: the apps and routes from a TOML config file (--config), and its mistakes.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "config_file.hpp"
#include "support.hpp"

namespace {

using valve::Route;
using ConfigFile = test::TempFile;

std::optional<valve::Layout> load(const ConfigFile &file, std::vector<valve::Mistake> *mistakes,
                                  valve::Config options = {}) {
  REQUIRE_FALSE(options.set("config", file.path).has_value());
  return valve::load_layout(options, mistakes);
}

}  // namespace

TEST_CASE("config file: without a config file, one app named default serves every path") {
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

TEST_CASE(
    "config file: apps inherit the top level, set their own options, and flags win over both") {
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
priority = "interactive"
timeout = "2m"
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
  CHECK(mount.priority == valve::Priority::normal);
  const Route &canary = layout->routes[1];
  CHECK(canary.hostname == "api.example.com");
  REQUIRE(canary.backends.size() == 2);
  CHECK(canary.backends[0].app == "v1");
  CHECK(canary.backends[0].weight == 90);
  CHECK(canary.sticky.describe() == "cookie:uid");
  CHECK(canary.priority == valve::Priority::interactive);
  CHECK(canary.timeout == 120);
  CHECK(mount.timeout == 0);  // an app's own timeout is its --timeout option
}

TEST_CASE("config file: every mistake is listed with its line and what is expected") {
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

[[routes]]
prefix = "/u"
app = "b"
priority = "urgent"

[[routes]]
prefix = "/w"
app = "b"
timeout = 0
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
  CHECK(by_line[24] == "routes[3].priority \"urgent\": expected interactive, normal or batch");
  CHECK(by_line[29] == "routes[4].timeout: expected seconds more than 0, like 30 or \"2m\"");
  CHECK(valve::format_mistakes("x.toml", {{3, "bad"}, {0, "worse"}}) ==
        "x.toml:3: bad\nx.toml: worse");
}

TEST_CASE("config file: syntax errors, unmounted apps and doubled routes") {
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
    ConfigFile file(
        "[apps.a]\nfile = \"a.R\"\nprefix = \"/x\"\n[[routes]]\nprefix = \"/x/\"\n"
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
