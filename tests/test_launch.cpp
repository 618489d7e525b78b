// launch.hpp: the spawn spec of each kind of worker (plumber, shiny, --cmd with {port} and
// {socket}), and the R script plumber and shiny workers run.
#include "launch.hpp"

#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "loop_support.hpp"
#include "pool.hpp"
#include "pool_support.hpp"
#include "process.hpp"
#include "support.hpp"

namespace {

// What a pool hands plan_worker_launch(), spelled out: a test sets the parts it is about.
struct Planner {
  valve::Config config;
  std::string runtime_dir = "/run/valve-test";
  std::string rscript = "/opt/R/bin/Rscript";
  std::string api_file = "/srv/api/plumber.R";
  std::string api_dir = "/srv/api/";
  std::vector<std::string> env = {"PATH=/usr/bin:/bin", "HOME=/home/valve"};
  std::optional<valve::Credentials> as;

  explicit Planner(const test::Options &options = {}) {
    for (const auto &[key, value] : options.items) {
      auto problem = config.set(key, value);
      REQUIRE_MESSAGE(!problem, problem.value_or(""));
    }
  }

  valve::WorkerLaunch plan(uint64_t id) {
    valve::LaunchSettings settings{config, runtime_dir, rscript, api_file, api_dir, env, as};
    valve::WorkerLaunch out;
    REQUIRE(valve::plan_worker_launch(settings, id, &out) == 0);
    return out;
  }
};

// The value of NAME in env, if it is set there (once).
std::optional<std::string> variable(const std::vector<std::string> &env, const std::string &name) {
  std::optional<std::string> found;
  for (const auto &e : env) {
    if (e.rfind(name + "=", 0) == 0) {
      REQUIRE_MESSAGE(!found, name << " is set twice");
      found = e.substr(name.size() + 1);
    }
  }
  return found;
}

std::string source_root() {
  // The test binary is BUILD/tests/valve-unit-tests; the sources are BUILD's parent.
  std::string exe = test::self_exe();
  for (int up = 0; up < 3; ++up) exe = exe.substr(0, exe.rfind('/'));
  return exe;
}

std::string hello_api() {
  std::string path = source_root() + "/examples/hello/plumber.R";
  REQUIRE_MESSAGE(access(path.c_str(), R_OK) == 0, path << " is not readable");
  return path;
}

}  // namespace

TEST_CASE("launch: --cmd with {port} runs the program directly on a free port") {
  std::string backend = test::backend_path();
  Planner p({{"cmd", backend + " --port {port} --delay-start 5"}});
  valve::WorkerLaunch out = p.plan(7);
  REQUIRE(out.port > 0);
  CHECK(out.port < 65536);
  CHECK(out.socket_path.empty());
  CHECK_FALSE(out.preloadable);
  CHECK(out.spec.path == backend);
  CHECK(out.spec.argv == std::vector<std::string>{backend, "--port", std::to_string(out.port),
                                                  "--delay-start", "5"});
  CHECK(variable(out.spec.env, "VALVE_PORT") == std::to_string(out.port));
  CHECK(variable(out.spec.env, "VALVE_WORKER_ID") == "7");
  CHECK_FALSE(variable(out.spec.env, "VALVE_SOCKET"));
  CHECK(out.spec.cwd.empty());
  // Each launch picks its own port.
  valve::WorkerLaunch next = p.plan(8);
  CHECK(variable(next.spec.env, "VALVE_WORKER_ID") == "8");
  CHECK(next.port > 0);
}

TEST_CASE("launch: --cmd with {socket} serves on a socket in the runtime directory") {
  std::string backend = test::backend_path();
  Planner p({{"cmd", backend + " --socket {socket}"}});
  valve::WorkerLaunch out = p.plan(3);
  std::string socket = p.runtime_dir + "/w3.sock";
  CHECK(out.socket_path == socket);
  CHECK(out.port == 0);
  CHECK(out.spec.argv == std::vector<std::string>{backend, "--socket", socket});
  CHECK(variable(out.spec.env, "VALVE_SOCKET") == socket);
  CHECK_FALSE(variable(out.spec.env, "VALVE_PORT"));
}

TEST_CASE("launch: --cmd with both {port} and {socket}: both are filled in, traffic goes to the port") {
  Planner p({{"cmd", "/bin/echo {socket} {port} {port}"}});
  valve::WorkerLaunch out = p.plan(4);
  std::string socket = p.runtime_dir + "/w4.sock";
  REQUIRE(out.port > 0);
  CHECK(out.socket_path.empty());
  std::string port = std::to_string(out.port);
  CHECK(out.spec.argv == std::vector<std::string>{"/bin/echo", socket, port, port});
  CHECK(variable(out.spec.env, "VALVE_PORT") == port);
  CHECK(variable(out.spec.env, "VALVE_SOCKET") == socket);
}

TEST_CASE("launch: --cmd with shell syntax runs under /bin/sh -c, a simple one is exec'd") {
  SUBCASE("a pipe") {
    Planner p({{"cmd", "echo {port} | cat"}});
    valve::WorkerLaunch out = p.plan(1);
    CHECK(out.spec.path == "/bin/sh");
    CHECK(out.spec.argv ==
          std::vector<std::string>{"/bin/sh", "-c", "echo " + std::to_string(out.port) + " | cat"});
  }
  SUBCASE("a variable") {
    Planner p({{"cmd", "exec $PROGRAM --socket {socket}"}});
    valve::WorkerLaunch out = p.plan(2);
    CHECK(out.spec.path == "/bin/sh");
    CHECK(out.spec.argv == std::vector<std::string>{"/bin/sh", "-c",
                                                    "exec $PROGRAM --socket " + out.socket_path});
  }
  SUBCASE("a program found in PATH, with quoted words") {
    Planner p({{"cmd", "sleep '1 2' {port}"}});
    valve::WorkerLaunch out = p.plan(3);
    auto sleep = valve::find_executable("sleep");
    REQUIRE(sleep);
    CHECK(out.spec.path == *sleep);
    CHECK(out.spec.path.front() == '/');
    CHECK(out.spec.argv == std::vector<std::string>{"sleep", "1 2", std::to_string(out.port)});
  }
  SUBCASE("a program that does not exist: the shell reports it") {
    Planner p({{"cmd", "no-such-program-for-valve --port {port}"}});
    valve::WorkerLaunch out = p.plan(4);
    CHECK(out.spec.path == "/bin/sh");
    CHECK(out.spec.argv.size() == 3);
    CHECK(out.spec.argv.back() ==
          "no-such-program-for-valve --port " + std::to_string(out.port));
  }
}

TEST_CASE("launch: the pool's environment is passed on, with VALVE_WORKER_ID, without NOTIFY_SOCKET") {
  Planner p({{"cmd", "/bin/true {port}"}, {"worker-nice", "7"}});
  p.env.push_back("GREETING=hello");
  p.env.push_back("NOTIFY_SOCKET=/run/systemd/notify");
  p.env.push_back("VALVE_WORKER_ID=99");
  p.as = valve::Credentials{1234, 5678, {5678, 42}};
  valve::WorkerLaunch out = p.plan(5);
  CHECK(variable(out.spec.env, "GREETING") == "hello");
  CHECK(variable(out.spec.env, "PATH") == "/usr/bin:/bin");
  CHECK(variable(out.spec.env, "HOME") == "/home/valve");
  CHECK_FALSE(variable(out.spec.env, "NOTIFY_SOCKET"));
  CHECK(variable(out.spec.env, "VALVE_WORKER_ID") == "5");
  REQUIRE(out.spec.as.has_value());
  CHECK(out.spec.as->uid == 1234);
  CHECK(out.spec.as->gid == 5678);
  CHECK(out.spec.as->groups == std::vector<gid_t>{5678, 42});
  CHECK(out.spec.nice == 7);
  // Nothing but those and the address variables.
  CHECK(out.spec.env.size() == 5);
  Planner none({{"cmd", "/bin/true {port}"}});
  valve::WorkerLaunch plain = none.plan(1);
  CHECK_FALSE(plain.spec.as.has_value());
  CHECK(plain.spec.nice == 0);
}

TEST_CASE("launch: a plumber worker runs Rscript on the worker script, told its file and socket") {
  Planner p;
  valve::WorkerLaunch out = p.plan(9);
  CHECK(out.preloadable);
  CHECK(out.port == 0);
  CHECK(out.socket_path == "/run/valve-test/w9.sock");
  CHECK(out.spec.path == "/opt/R/bin/Rscript");
  CHECK(out.spec.argv == std::vector<std::string>{"/opt/R/bin/Rscript", "--no-echo",
                                                  "--no-restore", "/run/valve-test/worker.R"});
  CHECK(variable(out.spec.env, "VALVE_FILE") == "/srv/api/plumber.R");
  CHECK(variable(out.spec.env, "VALVE_SOCKET") == "/run/valve-test/w9.sock");
  CHECK(variable(out.spec.env, "VALVE_TYPE") == "plumber");
  CHECK(variable(out.spec.env, "VALVE_WORKER_ID") == "9");
  CHECK_FALSE(variable(out.spec.env, "VALVE_PORT"));
  CHECK(out.spec.cwd == "/srv/api/");
}

TEST_CASE("launch: a pool plans its workers from its resolved Rscript, API file and environment") {
  REQUIRE_MESSAGE(access("/usr/bin/Rscript", X_OK) == 0, "/usr/bin/Rscript is needed");
  std::string api = hello_api();
  test::EnvGuard notify("NOTIFY_SOCKET", "/run/systemd/notify");
  test::TestLoop t;
  valve::Config config;
  if (geteuid() == 0) REQUIRE_FALSE(config.set("allow-root", "true").has_value());
  for (auto [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"file", api}, {"rscript", "/usr/bin/Rscript"}, {"env", "GREETING=hello"},
           {"env", "NOTIFY_SOCKET"}})
    REQUIRE_FALSE(config.set(key, value).has_value());
  test::PoolObserver observer;
  valve::Pool pool(t.ctx(), observer, config, "default", 1);
  auto problem = pool.check_environment();
  REQUIRE_MESSAGE(!problem, problem.value_or(""));
  char resolved[PATH_MAX];
  REQUIRE(realpath(api.c_str(), resolved) != nullptr);
  std::string real = resolved;
  CHECK(pool.rscript_path() == "/usr/bin/Rscript");
  CHECK(pool.api_file() == real);
  CHECK(pool.api_dir() == real.substr(0, real.rfind('/') + 1));
  // --env named it, so the pool's environment has it; the launch takes it out.
  CHECK(variable(pool.worker_environment(), "NOTIFY_SOCKET") == "/run/systemd/notify");
  valve::WorkerLaunch out;
  REQUIRE(pool.plan_launch(3, &out) == 0);
  std::string socket = t.ctx().runtime_dir() + "/w3.sock";
  CHECK(out.socket_path == socket);
  CHECK(out.spec.path == "/usr/bin/Rscript");
  CHECK(out.spec.argv.back() == valve::worker_script_path(t.ctx().runtime_dir()));
  CHECK(out.spec.cwd == pool.api_dir());
  CHECK(variable(out.spec.env, "VALVE_FILE") == real);
  CHECK(variable(out.spec.env, "VALVE_SOCKET") == socket);
  CHECK(variable(out.spec.env, "GREETING") == "hello");
  CHECK_FALSE(variable(out.spec.env, "NOTIFY_SOCKET"));
  CHECK(variable(out.spec.env, "VALVE_WORKER_ID") == "3");
}

TEST_CASE("launch: a shiny worker is told its type; it starts in the app directory") {
  Planner p({{"type", "shiny"}});
  p.api_file = p.api_dir = "/srv/app";
  valve::WorkerLaunch out = p.plan(2);
  CHECK(out.preloadable);
  CHECK(variable(out.spec.env, "VALVE_TYPE") == "shiny");
  CHECK(variable(out.spec.env, "VALVE_FILE") == "/srv/app");
  CHECK(out.spec.cwd == "/srv/app");
  CHECK(out.socket_path == "/run/valve-test/w2.sock");
}

TEST_CASE("launch: a pool with a shiny app directory serves it from there") {
  char dir[] = "/tmp/valve-shiny-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string app = std::string(dir) + "/app.R";
  std::ofstream(app) << "shiny::shinyApp(shiny::fluidPage(), function(input, output) {})\n";
  {
    test::TestLoop t;
    valve::Config config;
    if (geteuid() == 0) REQUIRE_FALSE(config.set("allow-root", "true").has_value());
    REQUIRE_FALSE(config.set("type", "shiny").has_value());
    REQUIRE_FALSE(config.set("file", dir).has_value());
    REQUIRE_FALSE(config.set("rscript", "/usr/bin/Rscript").has_value());
    test::PoolObserver observer;
    valve::Pool pool(t.ctx(), observer, config, "default", 1);
    auto problem = pool.check_environment();
    REQUIRE_MESSAGE(!problem, problem.value_or(""));
    CHECK(pool.api_file() == pool.api_dir());
    valve::WorkerLaunch out;
    REQUIRE(pool.plan_launch(2, &out) == 0);
    CHECK(variable(out.spec.env, "VALVE_TYPE") == "shiny");
    CHECK(variable(out.spec.env, "VALVE_FILE") == pool.api_file());
    CHECK(out.spec.cwd == pool.api_file());
  }
  unlink(app.c_str());
  rmdir(dir);
}

TEST_CASE("launch: the worker script is written readable, and serves on VALVE_SOCKET") {
  char dir[] = "/tmp/valve-script-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string path = valve::worker_script_path(dir);
  CHECK(path == std::string(dir) + "/worker.R");
  REQUIRE(valve::write_worker_script(dir));
  struct stat st {};
  REQUIRE(stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0644);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  for (const char *expected :
       {"VALVE_FILE", "VALVE_SOCKET", "VALVE_TYPE", "startPipeServer", "status = 78"}) {
    INFO(expected);
    CHECK(text.str().find(expected) != std::string::npos);
  }
  unlink(path.c_str());
  // A directory it cannot write in.
  CHECK_FALSE(valve::write_worker_script(std::string(dir) + "/missing"));
  rmdir(dir);
}
