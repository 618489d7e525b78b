// util.hpp: handle ownership, Timer, write_string, write_now, and the string helpers; json.hpp's
// helpers.
#include "util.hpp"

#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <set>
#include <string>
#include <thread>

#include "json.hpp"
#include "log.hpp"
#include "support.hpp"

namespace {

// A loop of the test's own; the destructor checks it ends with no handle left.
struct TestLoop {
  uv_loop_t loop{};
  TestLoop() { REQUIRE(uv_loop_init(&loop) == 0); }
  ~TestLoop() {
    uv_run(&loop, UV_RUN_DEFAULT);  // runs pending close callbacks
    CHECK(uv_loop_close(&loop) == 0);
  }
  uv_loop_t *get() { return &loop; }
};

}  // namespace

TEST_CASE("util: a Timer fires once") {
  TestLoop l;
  int fired = 0;
  {
    valve::Timer t(l.get(), [&] { ++fired; });
    CHECK_FALSE(t.active());
    // A timer counts from the loop's cached time, which is as old as the loop's last turn (here,
    // its creation: on a busy machine, more than 5 ms ago).
    uv_update_time(l.get());
    uint64_t before = uv_hrtime();
    t.start(0.005);
    CHECK(t.active());
    uv_run(l.get(), UV_RUN_DEFAULT);  // returns once the timer is done: it keeps nothing alive
    CHECK(uv_hrtime() - before >= 4'000'000u);
    CHECK(fired == 1);
    CHECK_FALSE(t.active());
  }
  CHECK(fired == 1);
}

TEST_CASE("util: a Timer repeats until stopped from its callback") {
  TestLoop l;
  int fired = 0;
  std::unique_ptr<valve::Timer> t;
  t = std::make_unique<valve::Timer>(l.get(), [&] {
    if (++fired == 5) t->stop();
  });
  t->start(0.001, 0.001);
  uv_run(l.get(), UV_RUN_DEFAULT);
  CHECK(fired == 5);
  CHECK_FALSE(t->active());
  // Restarted, it fires again.
  t->start(0);
  uv_run(l.get(), UV_RUN_DEFAULT);
  CHECK(fired == 6);
  t.reset();
}

TEST_CASE("util: stop() before the deadline means no call") {
  TestLoop l;
  int fired = 0;
  valve::Timer t(l.get(), [&] { ++fired; });
  t.start(0.001);
  t.stop();
  CHECK_FALSE(t.active());
  usleep(3000);
  CHECK(uv_run(l.get(), UV_RUN_NOWAIT) == 0);
  CHECK(fired == 0);
}

TEST_CASE("util: destroying a Timer's owner before it fires means no call") {
  TestLoop l;
  int fired = 0;
  auto t = std::make_unique<valve::Timer>(l.get(), [&] { ++fired; });
  t->start(0);
  t.reset();  // the handle closes later, on the loop; its callback must find no owner
  usleep(2000);
  uv_run(l.get(), UV_RUN_DEFAULT);
  CHECK(fired == 0);
}

TEST_CASE("util: one Timer's callback may destroy another due in the same loop turn") {
  TestLoop l;
  int first = 0, second = 0;
  std::unique_ptr<valve::Timer> b;
  valve::Timer a(l.get(), [&] {
    ++first;
    b.reset();
  });
  b = std::make_unique<valve::Timer>(l.get(), [&] { ++second; });
  a.start(0.002);
  b->start(0.002);
  usleep(3000);
  uv_run(l.get(), UV_RUN_DEFAULT);
  CHECK(first == 1);
  CHECK(second == 0);
}

namespace {
int g_write_done = 0;
int g_write_status = 1;

// A libuv pipe (its handle with an owner) on one end of a socketpair; the test reads the other.
struct SocketPipe {
  test::FdGuard peer;
  int owner = 0;
  uv_pipe_t *pipe = nullptr;
  explicit SocketPipe(uv_loop_t *loop) {
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    peer.fd = fds[1];
    pipe = valve::new_handle<uv_pipe_t>(&owner);
    REQUIRE(uv_pipe_init(loop, pipe, 0) == 0);
    REQUIRE(uv_pipe_open(pipe, fds[0]) == 0);
  }
  uv_stream_t *stream() { return reinterpret_cast<uv_stream_t *>(pipe); }
};
}  // namespace

TEST_CASE("util: write_string writes, and reports only to a living owner") {
  TestLoop l;
  SocketPipe sp(l.get());
  auto *stream = sp.stream();
  auto &peer = sp.peer;
  g_write_done = 0;
  g_write_status = 1;
  auto done = [](uv_stream_t *s, int status) {
    CHECK(s->data != nullptr);
    ++g_write_done;
    g_write_status = status;
  };

  CHECK(valve::write_string(stream, "", done) == 0);  // nothing to write: no callback
  REQUIRE(valve::write_string(stream, "hello ", done) == 0);
  REQUIRE(valve::write_string(stream, "world", done) == 0);
  uv_run(l.get(), UV_RUN_DEFAULT);
  CHECK(g_write_done == 2);
  CHECK(g_write_status == 0);
  CHECK(valve::write_queue_size(stream) == 0);
  char buf[64];
  ssize_t n = read(peer.fd, buf, sizeof buf);
  CHECK(std::string(buf, n > 0 ? static_cast<size_t>(n) : 0) == "hello world");

  // The owner goes away with a write queued: the write completes (or is cancelled) silently.
  REQUIRE(valve::write_string(stream, "late", done) == 0);
  valve::close_handle(sp.pipe);
  CHECK(sp.pipe == nullptr);
  uv_run(l.get(), UV_RUN_DEFAULT);
  CHECK(g_write_done == 2);
}

TEST_CASE("util: write_now writes at once, queues only what the socket does not take, in order") {
  TestLoop l;
  SocketPipe sp(l.get());
  auto *stream = sp.stream();
  auto &peer = sp.peer;
  g_write_done = 0;
  g_write_status = 1;
  auto done = [](uv_stream_t *, int status) {
    ++g_write_done;
    g_write_status = status;
  };

  // Room in the socket: all of it goes at once, with no request and no callback.
  REQUIRE(valve::write_now(stream, {"ab", "", "cd"}, done) == 0);
  CHECK(valve::write_queue_size(stream) == 0);
  char buf[16];
  ssize_t n = read(peer.fd, buf, sizeof buf);
  CHECK(std::string(buf, n > 0 ? static_cast<size_t>(n) : 0) == "abcd");
  CHECK(g_write_done == 0);

  // More than the socket takes: the rest is queued, and a later write goes after it.
  std::string big(8 << 20, 'x');
  for (size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>('a' + i / 4096 % 26);
  REQUIRE(valve::write_now(stream, {big, "|"}, done) == 0);
  CHECK(valve::write_queue_size(stream) > 0);
  REQUIRE(valve::write_now(stream, {"tail"}, done) == 0);
  std::string got;
  std::thread reader([&] {
    char chunk[65536];
    while (got.size() < big.size() + 5) {
      ssize_t r = read(peer.fd, chunk, sizeof chunk);
      if (r <= 0) break;
      got.append(chunk, static_cast<size_t>(r));
    }
  });
  uv_run(l.get(), UV_RUN_DEFAULT);
  reader.join();
  CHECK(g_write_done == 2);
  CHECK(g_write_status == 0);
  CHECK(got == big + "|tail");
  valve::close_handle(sp.pipe);
}

TEST_CASE("json: json_text escapes strings, keeps members in order and never throws") {
  auto text = [](std::string s) { return valve::json_text(valve::Json(std::move(s))); };
  CHECK(text("") == R"("")");
  CHECK(text("plain text") == R"("plain text")");
  CHECK(text("a\"b\\c") == R"("a\"b\\c")");
  CHECK(text("\n\r\t\b\f") == R"("\n\r\t\b\f")");
  CHECK(text(std::string("\x01\x1f\0", 3)) == R"("\u0001\u001f\u0000")");
  CHECK(text("\x7f") == "\"\x7f\"");                // DEL is allowed in JSON strings
  CHECK(text("caf\xc3\xa9") == "\"caf\xc3\xa9\"");  // UTF-8 passes through
  CHECK(text("</script>") == R"("</script>")");
  // Bytes that are not UTF-8 (a request target, a flag) become U+FFFD.
  CHECK(text("a\xff"
             "b\xc3") ==
        "\"a\xef\xbf\xbd"
        "b\xef\xbf\xbd\"");
  // Whatever goes in comes back out of a JSON reader.
  std::string all;
  for (int c = 1; c < 128; ++c) all += static_cast<char>(c);
  CHECK(test::parse_json(text(all)).text == all);
  // Members in the order they were set; compact, on one line.
  valve::Json doc = valve::Json::object();
  doc["z"] = 1;
  doc["a"] = {true, nullptr, "x"};
  doc["m"] = valve::Json::object();
  CHECK(valve::json_text(doc) == R"({"z":1,"a":[true,null,"x"],"m":{}})");
}

TEST_CASE("json: json_rounded and json_number") {
  CHECK(valve::json_rounded(12.3456789, 3) == 12.346);
  CHECK(valve::json_rounded(0.0001234564, 6) == 0.000123);
  CHECK(valve::json_rounded(-1.23456, 3) == -1.235);
  CHECK(valve::json_text(valve::json_rounded(0.1234999, 3)) == "0.123");
  CHECK(valve::json_text(valve::json_rounded(5.0001, 3)) == "5.0");  // still a float
  // Whole numbers as integers, as fmt's {} writes them (60, not 60.0).
  CHECK(valve::json_text(valve::json_number(60)) == "60");
  CHECK(valve::json_text(valve::json_number(0)) == "0");
  CHECK(valve::json_text(valve::json_number(0.5)) == "0.5");
  CHECK(valve::json_text(valve::json_number(-2)) == "-2");
  CHECK(valve::json_number(3).is_number_integer());
}

TEST_CASE("util: iequals") {
  CHECK(valve::iequals("Content-Length", "content-length"));
  CHECK(valve::iequals("", ""));
  CHECK(valve::iequals("ABC", "abc"));
  CHECK_FALSE(valve::iequals("abc", "abd"));
  CHECK_FALSE(valve::iequals("abc", "ab"));
  CHECK_FALSE(valve::iequals("ab", "abc"));
  CHECK_FALSE(valve::iequals("a", ""));
  CHECK(valve::iequals("\xc3\xa9", "\xc3\xa9"));
  CHECK_FALSE(valve::iequals("[", "{"));  // 0x5b and 0x7b differ by 0x20 but are not letters
}

TEST_CASE("util: trim removes spaces and tabs at both ends only") {
  CHECK(valve::trim("  a b \t") == "a b");
  CHECK(valve::trim("\t\t") == "");
  CHECK(valve::trim("") == "");
  CHECK(valve::trim("x") == "x");
  CHECK(valve::trim(" \tx y\t ") == "x y");
  CHECK(valve::trim("\r\nx\r\n") == "\r\nx\r\n");  // line ends are the parser's business
}

TEST_CASE("util: format_seconds, random_hex, uv_message, monotonic_ms") {
  CHECK(valve::format_seconds(30) == "30");
  CHECK(valve::format_seconds(0.25) == "0.25");
  CHECK(valve::format_seconds(0) == "0");

  std::string h = valve::random_hex(8);
  CHECK(h.size() == 16);
  CHECK(h.find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(valve::random_hex(3).size() == 6);
  CHECK(valve::random_hex(0).empty());
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) seen.insert(valve::random_hex(16));
  CHECK(seen.size() == 100);

  CHECK(valve::uv_message(UV_EADDRINUSE) == "address already in use (EADDRINUSE)");

  uint64_t a = valve::monotonic_ms();
  usleep(20000);
  uint64_t b = valve::monotonic_ms();
  CHECK(b - a >= 19);
  CHECK(b - a < 2000);
}

TEST_CASE("util: format_utc writes UTC to the millisecond, the same second after second") {
  CHECK(valve::format_utc(0) == "1970-01-01T00:00:00.000Z");
  CHECK(valve::format_utc(1795946400123) == "2026-11-29T10:00:00.123Z");
  CHECK(valve::format_utc(1795946400999) == "2026-11-29T10:00:00.999Z");  // the cached second
  CHECK(valve::format_utc(1795946401007) == "2026-11-29T10:00:01.007Z");  // the next one
  CHECK(valve::format_utc(951782400050) == "2000-02-29T00:00:00.050Z");   // and back
  CHECK(valve::format_utc(1795946401007) == "2026-11-29T10:00:01.007Z");
}

TEST_CASE("log: LogThrottle lets one line a period through and counts those it held back") {
  valve::LogThrottle throttle(1000);
  uint64_t suppressed = 99;
  CHECK(throttle.allow(5000, suppressed));  // the first one, at once
  CHECK(suppressed == 0);
  CHECK_FALSE(throttle.allow(5000, suppressed));
  CHECK_FALSE(throttle.allow(5999, suppressed));
  CHECK(throttle.allow(6000, suppressed));  // a period later, with the count of the rest
  CHECK(suppressed == 2);
  CHECK(throttle.allow(9000, suppressed));  // after a quiet spell, at once again
  CHECK(suppressed == 0);
  valve::LogThrottle from_zero;
  CHECK(from_zero.allow(0, suppressed));  // a loop clock that starts at 0 logs the first too
  CHECK_FALSE(from_zero.allow(999, suppressed));
}

TEST_CASE("util: fnv1a64 gives FNV-1a's published 64-bit values, and continues a hash") {
  static_assert(valve::fnv1a64("") == 0xcbf29ce484222325ull);
  CHECK(valve::fnv1a64("a") == 0xaf63dc4c8601ec8cull);
  CHECK(valve::fnv1a64("foobar") == 0x85944171f73967e8ull);
  CHECK(valve::fnv1a64("bar", valve::fnv1a64("foo")) == valve::fnv1a64("foobar"));
}
