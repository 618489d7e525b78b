// sandbox.hpp: the workers' user (--user, --group, --allow-root) and environment (--env,
// --env-file).
#include "sandbox.hpp"
#include "support.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace {

using valve::Config;

using test::TempFile;

std::vector<std::string> read_ok(const std::string &text) {
  TempFile f(text);
  std::string error;
  auto entries = valve::read_env_file(f.path, &error);
  INFO("error: " << error);
  REQUIRE(entries.has_value());
  return *entries;
}

// The error after its "env-file PATH:".
std::string read_error(const std::string &text) {
  TempFile f(text);
  std::string error;
  CHECK_FALSE(valve::read_env_file(f.path, &error).has_value());
  std::string prefix = "env-file " + f.path + ":";
  REQUIRE(error.starts_with(prefix));
  return error.substr(prefix.size());
}

Config with(std::initializer_list<std::pair<const char *, const char *>> options) {
  Config c;
  for (auto [key, value] : options) REQUIRE_FALSE(c.set(key, value).has_value());
  return c;
}

std::string value_of(const std::vector<std::string> &env, const std::string &name) {
  std::string found = "(unset)";
  for (const auto &e : env) {
    if (e.starts_with(name + "=")) {
      CHECK_MESSAGE(found == "(unset)", name << " is set twice");
      found = e.substr(name.size() + 1);
    }
  }
  return found;
}

}  // namespace

TEST_CASE("sandbox: read_env_file takes NAME=VALUE lines, comments, export and quotes") {
  auto entries = read_ok(
      "# database\n"
      "\n"
      "DB_HOST=db.internal\n"
      "  export DB_USER = api  \r\n"
      "DB_PASS=\"p@ss word # not a comment\"\n"
      "QUOTED_SINGLE='$HOME stays'\n"
      "EMPTY=\n"
      "HALF=\"unclosed\n"
      "EQUALS=a=b=c\n");
  CHECK(entries == std::vector<std::string>{
                       "DB_HOST=db.internal", "DB_USER=api", "DB_PASS=p@ss word # not a comment",
                       "QUOTED_SINGLE=$HOME stays", "EMPTY=", "HALF=\"unclosed", "EQUALS=a=b=c"});
  CHECK(read_ok("").empty());
}

TEST_CASE("sandbox: read_env_file names the file and line of a mistake") {
  CHECK(read_error("A=1\n\nnot a setting\n") == "3: expected NAME=VALUE");
  CHECK(read_error("1ABC=x\n").starts_with("1: 1ABC: not a variable name"));
  CHECK(read_error("A B=x\n").starts_with("1: A B: not a variable name"));
  CHECK(read_error("=x\n").starts_with("1: : not a variable name"));
  std::string error;
  CHECK_FALSE(valve::read_env_file("/nonexistent/valve.env", &error).has_value());
  CHECK(error == "env-file /nonexistent/valve.env: cannot read: No such file or directory");
}

TEST_CASE("sandbox: workers get the basics, the env-file, then --env; nothing else of valve's") {
  const std::vector<std::string> inherited = {"PATH=/usr/bin:/bin",
                                              "HOME=/root",
                                              "LANG=C.UTF-8",
                                              "LC_ALL=C",
                                              "TZ=UTC",
                                              "AWS_SECRET=xyz",
                                              "VALVE_ADMIN=127.0.0.1:1",
                                              "R_LIBS_USER=/r/lib",
                                              "PASSED=from valve",
                                              "OVERRIDDEN=valve",
                                              "NOT_A_BASIC=1"};
  Config c = with({{"env", "FROM_FLAG=1"},
                   {"env", "PASSED"},
                   {"env", "ABSENT"},
                   {"env", "OVERRIDDEN=flag"},
                   {"env", "FILE_AND_FLAG=flag"}});
  std::vector<std::string> file = {"FROM_FILE=f", "FILE_AND_FLAG=file", "PATH=/opt/bin"};
  auto env = valve::worker_environment(c, valve::Identity{}, file, inherited);
  CHECK(value_of(env, "HOME") == "/root");
  CHECK(value_of(env, "LANG") == "C.UTF-8");
  CHECK(value_of(env, "LC_ALL") == "C");
  CHECK(value_of(env, "TZ") == "UTC");
  CHECK(value_of(env, "R_LIBS_USER") == "/r/lib");
  CHECK(value_of(env, "PATH") == "/opt/bin");  // the file over valve's own
  CHECK(value_of(env, "FROM_FILE") == "f");
  CHECK(value_of(env, "FROM_FLAG") == "1");
  CHECK(value_of(env, "FILE_AND_FLAG") == "flag");  // --env over the file
  CHECK(value_of(env, "PASSED") == "from valve");   // NAME alone passes valve's value on
  CHECK(value_of(env, "OVERRIDDEN") == "flag");
  CHECK(value_of(env, "ABSENT") == "(unset)");  // ...and nothing when valve has none
  CHECK(value_of(env, "AWS_SECRET") == "(unset)");
  CHECK(value_of(env, "VALVE_ADMIN") == "(unset)");
  CHECK(value_of(env, "NOT_A_BASIC") == "(unset)");
}

TEST_CASE("sandbox: a switched user gets its own HOME, USER and LOGNAME") {
  valve::Identity id;
  id.credentials = valve::Credentials{65534, 65534, {65534}};
  id.name = "nobody";
  id.home = "/nonexistent";
  auto env = valve::worker_environment(Config{}, id, {}, {"HOME=/root", "USER=root"});
  CHECK(value_of(env, "HOME") == "/nonexistent");
  CHECK(value_of(env, "USER") == "nobody");
  CHECK(value_of(env, "LOGNAME") == "nobody");
}

TEST_CASE("sandbox: resolve_identity") {
  std::string error;
  CHECK_FALSE(
      valve::resolve_identity(with({{"user", "no-such-user-xyz"}, {"allow-root", "1"}}), &error));
  CHECK(error == "user no-such-user-xyz: no such user");
  CHECK_FALSE(valve::resolve_identity(with({{"group", "nogroup"}}), &error));
  CHECK(error == "group nogroup: give --user as well");
  CHECK_FALSE(
      valve::resolve_identity(with({{"user", "nobody"}, {"group", "no-such-group-xyz"}}), &error));
  CHECK(error == "group no-such-group-xyz: no such group");

  if (geteuid() == 0) {
    // Root: workers would be root too unless told otherwise.
    CHECK_FALSE(valve::resolve_identity(Config{}, &error));
    CHECK(error.starts_with("user \"\": valve runs as root, so its workers would too"));
    CHECK_FALSE(valve::resolve_identity(with({{"user", "root"}}), &error));
    CHECK(error == "user root: workers would run as root; add --allow-root if you mean it");
    CHECK_FALSE(valve::resolve_identity(with({{"user", "0"}}), &error));
    auto as_root = valve::resolve_identity(with({{"allow-root", "true"}}), &error);
    REQUIRE(as_root);
    CHECK_FALSE(as_root->credentials);

    auto nobody = valve::resolve_identity(with({{"user", "nobody"}}), &error);
    REQUIRE(nobody);
    REQUIRE(nobody->credentials);
    CHECK(nobody->credentials->uid == 65534);
    CHECK(nobody->name == "nobody");
    CHECK(std::count(nobody->credentials->groups.begin(), nobody->credentials->groups.end(),
                     nobody->credentials->gid) == 1);
    auto by_number = valve::resolve_identity(with({{"user", "65534"}, {"group", "0"}}), &error);
    REQUIRE(by_number);
    CHECK(by_number->credentials->uid == 65534);
    CHECK(by_number->credentials->gid == 0);
  } else {
    // Not root: workers run as valve's user, and no switch is possible.
    auto own = valve::resolve_identity(Config{}, &error);
    REQUIRE(own);
    CHECK_FALSE(own->credentials);
    CHECK_FALSE(valve::resolve_identity(with({{"user", "root"}, {"allow-root", "1"}}), &error));
    CHECK(error == "user root: valve must run as root to start workers as another user");
  }
}
