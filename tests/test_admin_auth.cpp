// admin_auth.hpp: the token file, the Authorization header, the comparison, loopback; and the C
// API's refusal of an admin address beyond loopback without a token.
#include "admin_auth.hpp"
#include "util.hpp"

#include <doctest/doctest.h>
#include <sys/stat.h>

#include <string>

#include "support.hpp"
#include "valve/valve.h"

using valve::bearer_token;
using valve::read_admin_token;
using valve::tokens_equal;
using test::TempFile;

TEST_CASE("admin_auth: a token file loses one trailing newline and nothing else") {
  std::string why;
  for (const char *text :
       {"s3cret-token-0123456789", "s3cret-token-0123456789\n", "s3cret-token-0123456789\r\n"}) {
    TempFile f(text);
    auto t = read_admin_token(f.path, &why);
    REQUIRE(t);
    CHECK(t->token == "s3cret-token-0123456789");
    CHECK(t->warning.empty());
  }
}

TEST_CASE("admin_auth: an empty, blank, two-line or missing token file is refused") {
  std::string why;
  for (const char *text : {"", "\n", "\r\n"}) {
    TempFile f(text);
    CHECK_FALSE(read_admin_token(f.path, &why));
    CHECK(why.starts_with("is empty"));
  }
  for (const char *text : {"abc def", "token\n\n", "one\ntwo", "tab\there", " lead"}) {
    TempFile f(text);
    CHECK_FALSE(read_admin_token(f.path, &why));
    CHECK(why.find("one line of visible ASCII") != std::string::npos);
  }
  TempFile big(std::string(valve::kMaxAdminTokenSize + 1, 'a'));
  CHECK_FALSE(read_admin_token(big.path, &why));
  CHECK(why.find("more than 4096 bytes") != std::string::npos);
  TempFile most(std::string(valve::kMaxAdminTokenSize, 'a') + "\n");
  CHECK(read_admin_token(most.path, &why));
  CHECK_FALSE(read_admin_token("/nonexistent/valve-token", &why));
  CHECK(why.starts_with("cannot read: No such file"));
  CHECK_FALSE(read_admin_token("/tmp", &why));
  CHECK(why == "not a regular file");
}

TEST_CASE("admin_auth: a world-readable or short token is read with a warning that hides it") {
  std::string why;
  TempFile f("s3cret-token-0123456789\n");
  REQUIRE(chmod(f.path.c_str(), 0644) == 0);
  auto t = read_admin_token(f.path, &why);
  REQUIRE(t);
  CHECK(t->warning == "is readable by every user (mode 0644): chmod o-r it");
  REQUIRE(chmod(f.path.c_str(), 0640) == 0);
  CHECK(read_admin_token(f.path, &why)->warning.empty());
  TempFile s("abc12");
  t = read_admin_token(s.path, &why);
  REQUIRE(t);
  CHECK(t->token == "abc12");
  CHECK(t->warning.find("short token (5 characters)") != std::string::npos);
  CHECK(t->warning.find("abc12") == std::string::npos);  // the warning never shows the token
}

TEST_CASE("admin_auth: the bearer token of an Authorization header") {
  CHECK(bearer_token("Bearer abc") == "abc");
  CHECK(bearer_token("bearer abc") == "abc");
  CHECK(bearer_token("BEARER   abc  ") == "abc");
  CHECK(bearer_token("Bearer\tabc") == "abc");
  CHECK_FALSE(bearer_token("Bearer"));
  CHECK_FALSE(bearer_token("Bearer "));
  CHECK_FALSE(bearer_token("Bearerabc"));
  CHECK_FALSE(bearer_token("Basic YWRtaW46YWRtaW4="));
  CHECK_FALSE(bearer_token(""));
  CHECK_FALSE(bearer_token("abc"));
}

TEST_CASE("admin_auth: tokens_equal") {
  CHECK(tokens_equal("abc", "abc"));
  CHECK_FALSE(tokens_equal("abd", "abc"));
  CHECK_FALSE(tokens_equal("xbc", "abc"));
  CHECK_FALSE(tokens_equal("ab", "abc"));
  CHECK_FALSE(tokens_equal("abcabc", "abc"));  // given's bytes are compared to expected's in turn
  CHECK_FALSE(tokens_equal("abca", "abc"));
  CHECK_FALSE(tokens_equal("", "abc"));
  CHECK_FALSE(tokens_equal("", ""));  // no token set never matches
  CHECK_FALSE(tokens_equal("a", ""));
}

TEST_CASE("admin_auth: loopback addresses") {
  auto loopback = [](const char *text) {
    auto a = valve::parse_listen_address(text);
    REQUIRE(a);
    return valve::is_loopback(*a);
  };
  CHECK(loopback("127.0.0.1:9000"));
  CHECK(loopback("127.0.0.2:9000"));
  CHECK(loopback("127.255.255.254:0"));
  CHECK(loopback("localhost:9000"));
  CHECK(loopback("[::1]:9000"));
  CHECK_FALSE(loopback("0.0.0.0:9000"));
  CHECK_FALSE(loopback("10.0.0.5:9000"));
  CHECK_FALSE(loopback("128.0.0.1:9000"));
  CHECK_FALSE(loopback("[::]:9000"));
  // 127.x mapped into IPv6 reaches only this machine, as a client of a dual-stack listener does.
  CHECK(loopback("[::ffff:127.0.0.1]:9000"));
  CHECK_FALSE(loopback("[::ffff:10.0.0.1]:9000"));
  CHECK_FALSE(loopback("unix:/tmp/admin.sock"));
}

TEST_CASE("util: is_loopback_ip, for listen addresses and peers alike") {
  for (const char *ip : {"127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.2"})
    CHECK_MESSAGE(valve::is_loopback_ip(ip), ip);
  for (const char *ip : {"10.0.0.1", "128.0.0.1", "::", "::2", "::ffff:10.0.0.1", "::127.0.0.1",
                         "unknown", "", "127.0.0.1 ", "localhost"})
    CHECK_FALSE_MESSAGE(valve::is_loopback_ip(ip), ip);
}

namespace {

// valve_server_new() with these settings: its result, and the config's last error.
std::pair<int, std::string> new_server(
    std::initializer_list<std::pair<const char *, std::string>> set) {
  valve_config_t *cfg = nullptr;
  REQUIRE(valve_config_new(&cfg) == 0);
  REQUIRE(valve_config_set(cfg, "cmd", "true {port}") == 0);
  REQUIRE(valve_config_set(cfg, "allow-root", "true") == 0);  // the tests may run as root
  for (const auto &[key, value] : set) REQUIRE(valve_config_set(cfg, key, value.c_str()) == 0);
  valve_server_t *sv = nullptr;
  int rc = valve_server_new(&sv, cfg);
  std::string error = valve_config_last_error(cfg);
  valve_server_free(sv);
  valve_config_free(cfg);
  return {rc, error};
}

}  // namespace

TEST_CASE("admin_auth: the C API refuses an admin address beyond loopback without a token") {
  int rc = 0;
  std::string error;  // not a structured binding: clang cannot capture one in CHECK_MESSAGE
  std::tie(rc, error) = new_server({{"admin", "0.0.0.0:9000"}});
  CHECK(rc == VALVE_EINVALID);
  CHECK(error.starts_with("admin 0.0.0.0:9000: beyond loopback"));
  CHECK(error.find("admin-token-file") != std::string::npos);
  std::tie(rc, error) = new_server({{"admin", "127.0.0.1:9000"}});
  CHECK_MESSAGE(rc == 0, error);
  CHECK(new_server({{"admin", "unix:/tmp/valve-test-admin.sock"}}).first == 0);

  // The token itself in VALVE_ADMIN_TOKEN will do, checked as a file's would be.
  setenv("VALVE_ADMIN_TOKEN", "s3cret-token-from-the-environment", 1);
  std::tie(rc, error) = new_server({{"admin", "0.0.0.0:9000"}});
  CHECK_MESSAGE(rc == 0, error);
  setenv("VALVE_ADMIN_TOKEN", "two words", 1);
  std::tie(rc, error) = new_server({{"admin", "127.0.0.1:9000"}});
  CHECK(rc == VALVE_EINVALID);
  CHECK(error.starts_with("VALVE_ADMIN_TOKEN: holds a space"));
  unsetenv("VALVE_ADMIN_TOKEN");

  TempFile token("s3cret-token-0123456789\n");
  CHECK(new_server({{"admin", "0.0.0.0:9000"}, {"admin-token-file", token.path}}).first == 0);
  TempFile empty("\n");
  std::tie(rc, error) = new_server({{"admin", "0.0.0.0:9000"}, {"admin-token-file", empty.path}});
  CHECK(rc == VALVE_EINVALID);
  CHECK(error == "admin-token-file " + empty.path +
                     ": is empty: write the token in it (like openssl rand -hex 32)");
}
