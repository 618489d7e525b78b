// pool.hpp: the pending queue, dispatch, launching and retiring workers, crashes, reloads and
// shutdown, driven by a test loop with the native backend as workers and fake requests.
#include "pool.hpp"

#include <doctest/doctest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "fair_queue.hpp"
#include "http.hpp"
#include "json.hpp"
#include "loop_support.hpp"
#include "pool_support.hpp"
#include "support.hpp"
#include "worker.hpp"

using test::FakeRequest;
using test::PoolHarness;

namespace {

bool has(const std::vector<std::string> &env, const std::string &entry) {
  for (const auto &e : env)
    if (e == entry) return true;
  return false;
}

std::vector<uint64_t> ids_in_state(const valve::Pool &pool, std::string_view state) {
  std::vector<uint64_t> ids;
  for (const auto &w : test::workers_of(pool))
    if (w.state == state) ids.push_back(w.id);
  return ids;
}

// Every worker's generation (exited ones are forgotten).
std::vector<uint64_t> generations(const valve::Pool &pool) {
  std::vector<uint64_t> out;
  for (const auto &w : test::workers_of(pool)) out.push_back(w.generation);
  return out;
}

// A command that runs the backend, which exits at start while `marker` exists.
std::string backend_unless(const std::string &marker) {
  std::string backend = test::backend_path();
  return "if [ -e '" + marker + "' ]; then exec '" + backend +
         "' --port {port} --exit-at-start 3; fi; exec '" + backend + "' --port {port}";
}

valve::Config shell_config(const std::string &cmd, const test::Options &options) {
  valve::Config config = test::backend_config();
  REQUIRE_FALSE(config.set("cmd", cmd).has_value());
  return PoolHarness::with_options(std::move(config), options);
}

// A path for a marker file, removed when it goes out of scope.
struct Marker {
  std::string path;
  Marker() {
    char templ[] = "/tmp/valve-marker-XXXXXX";
    int fd = mkstemp(templ);
    REQUIRE(fd >= 0);
    close(fd);
    path = templ;
    unlink(path.c_str());
  }
  ~Marker() { unlink(path.c_str()); }
  void create() const { std::ofstream(path) << "x\n"; }
  void remove() const { unlink(path.c_str()); }
};

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

TEST_CASE("pool: starts n-min workers, dispatches to a ready one, ends them all on terminate") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "2"}});
  valve::Pool &pool = h.start_ready();
  CHECK(h.stats().launches == 1);
  FakeRequest &req = h.request();
  pool.submit(req);
  CHECK(req.holding());
  CHECK_FALSE(req.queued);
  CHECK(req.dispatches == 1);
  req.finish();
  h.finish();
  CHECK(h.stats().exits == 1);
  CHECK(h.stats().crashes == 0);
}

TEST_CASE("pool: a request is answered by the worker it is dispatched to") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &req = h.request("/status?code=201");
  pool.submit(req);
  REQUIRE(req.holding());
  req.send();
  REQUIRE(h.run_until([&] { return req.answered || !req.failure.empty(); }));
  CHECK(req.answered);
  CHECK(req.answer_status == 201);
  CHECK(test::workers_of(pool).at(0).requests == 1);
  h.finish();
}

TEST_CASE("pool: queued requests are served first come, first served; a retry at the front first") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &a = h.request(), &b = h.request(), &c = h.request(), &retry = h.request();
  pool.submit(a);
  REQUIRE(a.holding());
  pool.submit(b);
  pool.submit(c);
  CHECK(b.queued);
  CHECK(c.queued);
  pool.submit(retry, true);
  CHECK(retry.queued);
  CHECK(pool.queue_depth() == 3);
  a.finish();
  CHECK(retry.holding());
  CHECK_FALSE(b.dispatched());
  CHECK(pool.queue_depth() == 2);
  retry.finish();
  CHECK(b.holding());
  CHECK_FALSE(c.dispatched());
  b.finish();
  CHECK(c.holding());
  CHECK(pool.queue_depth() == 0);
  c.finish();
  // One worker served them all, one at a time.
  CHECK(h.stats().launches == 1);
  CHECK(a.worker_id == c.worker_id);
  h.finish();
}

TEST_CASE("pool: a cancelled request leaves the queue") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &a = h.request(), &b = h.request(), &c = h.request();
  pool.submit(a);
  pool.submit(b);
  pool.submit(c);
  REQUIRE(pool.queue_depth() == 2);
  pool.cancel(b);
  CHECK(pool.queue_depth() == 1);
  a.finish();
  CHECK_FALSE(b.dispatched());
  CHECK(c.holding());
  c.finish();
  h.finish();
  CHECK(b.rejected == 0);  // a cancelled request is not the pool's to refuse
}

// ---- fair queueing between clients (fair_queue.hpp)

namespace {

// The order in which requests got a worker: each finishes as soon as it has one, so that a pool
// of one worker takes the next.
struct Served {
  std::vector<std::string> order;
  void run(PoolHarness &h, std::vector<std::pair<std::string, FakeRequest *>> reqs) {
    for (size_t round = 0; round < reqs.size() * 2; ++round) {
      for (auto &[name, r] : reqs) {
        if (r->holding()) {
          order.push_back(name);
          r->finish();
        }
      }
    }
    (void)h;
  }
};

}  // namespace

TEST_CASE("pool: queued requests are served round-robin across clients, in order within each") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &a1 = h.request(), &a2 = h.request(), &a3 = h.request(), &a4 = h.request();
  FakeRequest &b1 = h.request(), &b2 = h.request();
  for (FakeRequest *r : {&a1, &a2, &a3, &a4}) r->key = "10.0.0.1";
  for (FakeRequest *r : {&b1, &b2}) r->key = "10.0.0.2";
  pool.submit(a1);
  REQUIRE(a1.holding());
  for (FakeRequest *r : {&a2, &a3, &a4, &b1, &b2}) pool.submit(*r);
  CHECK(pool.queue_depth() == 5);
  CHECK(pool.queue().keys() == 2);
  CHECK(pool.queue().waiting_keys() == 2);
  Served s;
  s.run(h, {{"a1", &a1}, {"a2", &a2}, {"a3", &a3}, {"a4", &a4}, {"b1", &b1}, {"b2", &b2}});
  // First come first served would have been a1 a2 a3 a4 b1 b2: b1 waits for one of a's, not all.
  CHECK(s.order == std::vector<std::string>{"a1", "a2", "b1", "a3", "b2", "a4"});
  CHECK(pool.queue_depth() == 0);
  CHECK(pool.queue().keys() == 0);  // a client with nothing waiting or in flight is forgotten
  h.finish();
}

TEST_CASE("pool: with one client the queue is first come, first served; a retry at the front") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &a = h.request(), &b = h.request(), &c = h.request(), &retry = h.request();
  FakeRequest &other = h.request();
  other.key = "10.0.0.9";
  pool.submit(a);
  pool.submit(b);
  pool.submit(other);
  pool.submit(c);
  pool.submit(retry, true);  // a retry goes first, its client's turn too
  Served s;
  s.run(h, {{"a", &a}, {"b", &b}, {"c", &c}, {"retry", &retry}, {"other", &other}});
  CHECK(s.order == std::vector<std::string>{"a", "retry", "other", "b", "c"});
  h.finish();
}

TEST_CASE("pool: past client-max-queued a client is refused with 429; other clients still queue") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}, {"client-max-queued", "2"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &a1 = h.request(), &a2 = h.request(), &a3 = h.request(), &a4 = h.request();
  FakeRequest &b1 = h.request(), &retry = h.request();
  pool.submit(a1);
  REQUIRE(a1.holding());  // in flight, not waiting: it does not count
  pool.submit(a2);
  pool.submit(a3);
  pool.submit(a4);
  CHECK(a2.queued);
  CHECK(a3.queued);
  CHECK(a4.rejected == 429);
  CHECK(a4.why ==
        "too many requests from this client are waiting (2, the limit of "
        "client-max-queued)");
  b1.key = "10.0.0.2";
  pool.submit(b1);
  CHECK(b1.queued);
  pool.submit(retry, true);  // a retry was let in once: it is not refused again
  CHECK(retry.queued);
  CHECK(pool.queue_depth() == 4);
  a1.finish();  // the retry
  retry.finish();
  CHECK(b1.holding());
  b1.finish();
  CHECK(a2.holding());
  // Room again for a: one of its two left the queue.
  FakeRequest &a5 = h.request();
  pool.submit(a5);
  CHECK(a5.queued);
  a2.finish();
  CHECK(a3.holding());
  h.finish();
  CHECK(a5.rejected == 503);  // shutdown refuses those still waiting
}

TEST_CASE(
    "pool: a client at client-max-in-flight waits while workers are free; no worker is "
    "launched for it") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "3"}, {"client-max-in-flight", "1"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &a1 = h.request(), &a2 = h.request(), &a3 = h.request(), &b1 = h.request();
  b1.key = "10.0.0.2";
  pool.submit(a1);
  REQUIRE(a1.holding());
  pool.submit(a2);
  pool.submit(a3);
  CHECK(a2.queued);
  CHECK(a3.queued);
  CHECK(pool.queue().takeable() == 0);
  h.run_for(0.3);
  CHECK(h.stats().launches == 1);  // nothing waits that a new worker could take
  CHECK_FALSE(a2.dispatched());
  pool.submit(b1);  // another client takes a worker: it is launched for it
  REQUIRE(h.run_until([&] { return b1.holding(); }));
  CHECK(h.stats().launches == 2);
  CHECK_FALSE(a2.dispatched());
  a1.finish();  // a's next goes at once, to a free worker
  CHECK(a2.holding());
  CHECK_FALSE(a3.dispatched());
  a2.finish();
  CHECK(a3.holding());
  a3.finish();
  b1.finish();
  CHECK(pool.queue().keys() == 0);
  h.finish();
}

TEST_CASE("pool: priority classes are strict: interactive, then normal, then batch") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &first = h.request(), &batch1 = h.request(), &batch2 = h.request();
  FakeRequest &normal = h.request(), &inter1 = h.request(), &inter2 = h.request();
  batch1.priority_class = batch2.priority_class = valve::Priority::batch;
  inter1.priority_class = inter2.priority_class = valve::Priority::interactive;
  inter2.key = batch2.key = "10.0.0.2";
  pool.submit(first);
  for (FakeRequest *r : {&batch1, &batch2, &normal, &inter1, &inter2}) pool.submit(*r);
  CHECK(pool.queue().waiting(valve::Priority::batch) == 2);
  CHECK(pool.queue().waiting(valve::Priority::interactive) == 2);
  Served s;
  s.run(h, {{"first", &first},
            {"batch1", &batch1},
            {"batch2", &batch2},
            {"normal", &normal},
            {"inter1", &inter1},
            {"inter2", &inter2}});
  CHECK(s.order ==
        std::vector<std::string>{"first", "inter1", "inter2", "normal", "batch1", "batch2"});
  h.finish();
}

TEST_CASE("pool: the status shows the clients waiting, the busiest few first") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &a = h.request();
  pool.submit(a);
  std::vector<FakeRequest *> waiting;
  for (int client = 1; client <= 7; ++client) {
    for (int n = 0; n < client; ++n) {
      FakeRequest &r = h.request();
      r.key = "10.0.0." + std::to_string(client);
      pool.submit(r);
    }
  }
  auto doc = pool.queue().json(3);
  CHECK(doc["keys"] == 8);  // a's client is in flight only
  CHECK(doc["waiting_keys"] == 7);
  CHECK(doc["waiting_by_priority"]["normal"] == 28);
  REQUIRE(doc["top_waiting"].size() == 3);
  CHECK(doc["top_waiting"][0]["key"] == "10.0.0.7");
  CHECK(doc["top_waiting"][0]["queued"] == 7);
  CHECK(doc["top_waiting"][2]["key"] == "10.0.0.5");
  a.finish();
  h.finish();
}

TEST_CASE("pool: client_key: the address, a header's value hashed, or an X-Forwarded-For hop") {
  valve::Head head;
  head.headers = {{"X-Api-Key", "secret-key"},
                  {"X-Forwarded-For", "1.1.1.1, 2.2.2.2"},
                  {"X-Forwarded-For", "3.3.3.3"}};
  CHECK(valve::client_key("ip", head, "127.0.0.2") == "127.0.0.2");
  std::string hashed = valve::client_key("header:x-api-key", head, "127.0.0.2");
  CHECK(hashed.starts_with("header:"));
  CHECK(hashed.size() == 7 + 16);
  CHECK(hashed.find("secret") == std::string::npos);  // never shown
  head.headers[0].value = std::string(100000, 'k');
  CHECK(valve::client_key("header:x-api-key", head, "127.0.0.2").size() == 7 + 16);
  CHECK(valve::client_key("header:x-other", head, "127.0.0.2") == "127.0.0.2");
  CHECK(valve::client_key("forwarded:1", head, "127.0.0.2") == "3.3.3.3");
  CHECK(valve::client_key("forwarded:2", head, "127.0.0.2") == "2.2.2.2");
  CHECK(valve::client_key("forwarded:3", head, "127.0.0.2") == "1.1.1.1");
  CHECK(valve::client_key("forwarded:5", head, "127.0.0.2") == "1.1.1.1");  // fewer: leftmost
  head.headers[2].value = std::string(500, 'x');  // a forged hop is bounded too
  CHECK(valve::client_key("forwarded:1", head, "127.0.0.2").size() == 10 + 16);
  head.headers.clear();
  CHECK(valve::client_key("forwarded:1", head, "127.0.0.2") == "127.0.0.2");
  for (const char *bad : {"", "peer", "header:", "forwarded:0", "forwarded:33", "forwarded:x"})
    CHECK_FALSE(valve::valid_client_key_spec(bad));
  valve::Config config;
  CHECK(config.set("client-key", "forwarded:0") ==
        "client-key forwarded:0: expected ip, header:NAME or forwarded:N (N from 1 to 32)");
  CHECK(config.set("priority-header", "X Priority") ==
        "priority-header X Priority: expected a header name");
}

TEST_CASE("pool: request_priority: a client may lower its class; only a trusted peer raise it") {
  using valve::Priority;
  valve::Head head;
  CHECK(valve::request_priority(Priority::normal, "x-priority", head, false) == Priority::normal);
  head.headers = {{"X-Priority", " Batch "}};
  CHECK(valve::request_priority(Priority::normal, "x-priority", head, false) == Priority::batch);
  CHECK(valve::request_priority(Priority::normal, "", head, false) == Priority::normal);
  head.headers[0].value = "interactive";
  CHECK(valve::request_priority(Priority::normal, "x-priority", head, false) == Priority::normal);
  CHECK(valve::request_priority(Priority::normal, "x-priority", head, true) ==
        Priority::interactive);
  CHECK(valve::request_priority(Priority::batch, "x-priority", head, true) ==
        Priority::interactive);
  head.headers[0].value = "urgent";
  CHECK(valve::request_priority(Priority::batch, "x-priority", head, true) == Priority::batch);
}

TEST_CASE("pool: past queue-max a request is refused with 503, saying how many wait") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}, {"queue-max", "2"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &a = h.request(), &b = h.request(), &c = h.request(), &d = h.request();
  pool.submit(a);
  pool.submit(b);
  pool.submit(c);
  CHECK(pool.queue_depth() == 2);
  CHECK(b.rejected == 0);
  CHECK(c.rejected == 0);
  pool.submit(d);
  CHECK(d.rejected == 503);
  CHECK(d.why == "all workers are busy and the queue is full (2 waiting)");
  CHECK_FALSE(d.queued);
  CHECK(pool.queue_depth() == 2);
  CHECK(h.logged("queue full (2 waiting): rejecting GET /hello") == 1);
  // Room again once one leaves the queue.
  a.finish();
  FakeRequest &e = h.request();
  pool.submit(e);
  CHECK(e.queued);
  CHECK(e.rejected == 0);
  h.finish();
  // Shutdown refuses those still waiting.
  CHECK(c.rejected == 503);
  CHECK(e.rejected == 503);
}

TEST_CASE("pool: with queue-max 0 a request no worker can take at once is refused") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "2"}, {"queue-max", "0"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &a = h.request(), &b = h.request();
  pool.submit(a);
  CHECK(a.holding());
  pool.submit(b);
  CHECK(b.rejected == 503);
  CHECK(b.why == "all workers are busy and the queue is full (0 waiting)");
  CHECK(h.stats().launches == 1);  // a refused request launches nothing
  a.finish();
  h.finish();
}

TEST_CASE("pool: a request goes to the most recently used idle worker") {
  PoolHarness h({{"n-min", "2"}, {"n-max", "2"}});
  valve::Pool &pool = h.start();
  REQUIRE_MESSAGE(h.until_ready(2), h.log_text());
  FakeRequest &a = h.request(), &b = h.request();
  pool.submit(a);
  pool.submit(b);
  REQUIRE(a.holding());
  REQUIRE(b.holding());
  uint64_t x = a.worker_id, y = b.worker_id;
  CHECK(x != y);
  // y is used last: it gets the next request, though both are idle.
  a.finish();
  h.run_for(0.01);
  b.finish();
  FakeRequest &c = h.request();
  pool.submit(c);
  CHECK(c.worker_id == y);
  // While c holds y, d goes to x; x is then used last.
  FakeRequest &d = h.request();
  pool.submit(d);
  CHECK(d.worker_id == x);
  c.finish();
  h.run_for(0.01);
  d.finish();
  FakeRequest &e = h.request();
  pool.submit(e);
  CHECK(e.worker_id == x);
  e.finish();
  h.finish();
}

TEST_CASE("pool: a worker being retired serves only when no other can") {
  PoolHarness h({{"n-min", "2"}, {"n-max", "2"}});
  valve::Pool &pool = h.start();
  REQUIRE_MESSAGE(h.until_ready(2), h.log_text());
  FakeRequest &a = h.request();
  pool.submit(a);
  valve::Worker *x = a.worker;
  uint64_t x_id = a.worker_id;
  a.finish();  // x is the most recently used
  pool.retire(*x, "max-requests", "the test retires it");
  CHECK(x->retiring());
  CHECK(h.logged("retires: the test retires it; its replacement starts first") == 1);
  // Its replacement is launched at once; it serves meanwhile.
  CHECK(h.stats().launches == 3);
  CHECK(ids_in_state(pool, "retiring") == std::vector<uint64_t>{x_id});
  FakeRequest &b = h.request(), &c = h.request();
  pool.submit(b);
  CHECK(b.holding());
  CHECK(b.worker_id != x_id);
  pool.submit(c);  // the other one is busy, the replacement still starting
  CHECK(c.worker_id == x_id);
  b.finish();
  c.finish();
  // Once the replacement is ready, x drains and exits.
  REQUIRE_MESSAGE(h.run_until([&] {
    return h.stats().exits == 1 && test::count_in_state(pool, "ready") == 2;
  }),
                  h.log_text());
  for (const auto &w : test::workers_of(pool)) CHECK(w.id != x_id);
  CHECK(h.stats().recycles["max-requests"] == 1);
  CHECK(h.stats().crashes == 0);
  h.finish();
}

TEST_CASE("pool: max-requests retires a worker; its replacement starts first, even at n-max") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}, {"max-requests", "2"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &a = h.request(), &b = h.request();
  pool.submit(a);
  uint64_t old_id = a.worker_id;
  a.finish();
  CHECK(h.stats().launches == 1);
  pool.submit(b);
  b.finish();
  // The second request retired it: a replacement is starting; the old worker still serves.
  CHECK(h.stats().launches == 2);
  CHECK(ids_in_state(pool, "retiring") == std::vector<uint64_t>{old_id});
  CHECK(test::count_in_state(pool, "starting") == 1);
  FakeRequest &c = h.request();
  pool.submit(c);
  CHECK(c.worker_id == old_id);
  c.finish();
  REQUIRE_MESSAGE(h.run_until([&] {
    auto all = test::workers_of(pool);
    return all.size() == 1 && all[0].state == "ready" && all[0].id != old_id;
  }),
                  h.log_text());
  CHECK(h.stats().recycles["max-requests"] == 1);
  CHECK(h.stats().launches == 2);
  CHECK(h.logged("served 2 requests (max-requests)") == 1);
  FakeRequest &d = h.request();
  pool.submit(d);
  CHECK(d.holding());
  CHECK(d.worker_id != old_id);
  d.finish();
  h.finish();
}

TEST_CASE("pool: a retry avoids the worker that failed it while another can serve") {
  PoolHarness h({{"n-min", "2"}, {"n-max", "2"}});
  valve::Pool &pool = h.start();
  REQUIRE_MESSAGE(h.until_ready(2), h.log_text());
  h.run_for(0.01);  // the last use below is later than either's readiness
  FakeRequest &a = h.request();
  pool.submit(a);
  uint64_t x = a.worker_id;
  a.finish();  // x is used last, and would be picked
  FakeRequest &retry = h.request();
  retry.excluded = x;
  pool.submit(retry, true);
  REQUIRE(retry.holding());
  uint64_t y = retry.worker_id;
  CHECK(y != x);
  h.run_for(0.01);
  retry.finish();  // y is used last

  // Both busy; a retry that avoids y waits at the front, and lets a request behind it pass when
  // only y frees up.
  FakeRequest &on_y = h.request(), &on_x = h.request();
  pool.submit(on_y);
  pool.submit(on_x);
  REQUIRE(on_y.worker_id == y);
  REQUIRE(on_x.worker_id == x);
  FakeRequest &retry2 = h.request(), &plain = h.request();
  retry2.excluded = y;
  pool.submit(retry2, true);
  pool.submit(plain);
  CHECK(pool.queue_depth() == 2);
  on_y.finish();
  CHECK(plain.worker_id == y);
  CHECK_FALSE(retry2.dispatched());
  CHECK(pool.queue_depth() == 1);
  on_x.finish();
  CHECK(retry2.worker_id == x);
  retry2.finish();
  plain.finish();
  h.finish();
}

TEST_CASE("pool: a retry goes to the only worker a pool can have") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}});
  valve::Pool &pool = h.start_ready();
  uint64_t x = test::workers_of(pool).at(0).id;
  FakeRequest &retry = h.request();
  retry.excluded = x;
  pool.submit(retry, true);
  CHECK(retry.worker_id == x);
  retry.finish();
  h.finish();
}

// The excluded worker's free slot is no room for the retry: without a launch it would wait until its
// queue timeout (a 503 after 30 s by default).
TEST_CASE("pool: a retry that avoids the only worker gets a new one launched when n-max allows") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "2"}});
  valve::Pool &pool = h.start_ready();
  uint64_t x = test::workers_of(pool).at(0).id;
  FakeRequest &retry = h.request();
  retry.excluded = x;
  pool.submit(retry, true);
  CHECK(retry.queued);
  CHECK(h.stats().launches == 2);
  REQUIRE_MESSAGE(h.run_until([&] { return retry.dispatched(); }, 2), h.log_text());
  CHECK(retry.worker_id != x);
  retry.finish();
  h.finish();
}

TEST_CASE("pool: waiting requests launch workers up to n-max, and no more") {
  PoolHarness h({{"n-min", "2"}, {"n-max", "4"}});
  valve::Pool &pool = h.start();
  CHECK(h.stats().launches == 2);  // n-min, at once
  REQUIRE_MESSAGE(h.until_ready(2), h.log_text());
  CHECK(h.stats().launches == 2);
  std::vector<FakeRequest *> reqs;
  for (int i = 0; i < 8; ++i) reqs.push_back(&h.request());
  pool.submit(*reqs[0]);
  pool.submit(*reqs[1]);
  CHECK(h.stats().launches == 2);  // two idle workers took them
  // One launch per waiting request, counting those already starting...
  pool.submit(*reqs[2]);
  CHECK(h.stats().launches == 3);
  pool.submit(*reqs[3]);
  CHECK(h.stats().launches == 4);
  // ... up to n-max.
  for (int i = 4; i < 8; ++i) pool.submit(*reqs[i]);
  CHECK(h.stats().launches == 4);
  CHECK(pool.queue_depth() == 6);
  REQUIRE_MESSAGE(h.run_until([&] { return reqs[2]->dispatched() && reqs[3]->dispatched(); }),
                  h.log_text());
  CHECK(pool.queue_depth() == 4);
  h.run_for(0.05);
  CHECK(h.stats().launches == 4);
  CHECK(test::workers_of(pool).size() == 4);
  // They are served in turn as workers free up.
  for (int i = 0; i < 8; ++i) {
    REQUIRE(reqs[i]->holding());
    reqs[i]->finish();
  }
  CHECK(pool.queue_depth() == 0);
  CHECK(h.stats().launches == 4);
  h.finish();
}

TEST_CASE("pool: a worker its requests find unhealthy is replaced; requests wait for the new one") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}, {"max-fails", "2"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &a = h.request();
  pool.submit(a);
  uint64_t sick = a.worker_id;
  // As a proxy reports requests the worker itself failed.
  a.worker->note_request_result(false);
  CHECK(h.stats().launches == 1);
  a.worker->note_request_result(false);
  // Its replacement starts at once, even at n-max; it takes nothing new meanwhile.
  CHECK(h.stats().launches == 2);
  CHECK(ids_in_state(pool, "unhealthy") == std::vector<uint64_t>{sick});
  a.finish();
  FakeRequest &b = h.request();
  pool.submit(b);
  CHECK(b.queued);
  REQUIRE_MESSAGE(h.run_until([&] { return b.dispatched() && h.stats().exits == 1; }),
                  h.log_text());
  CHECK(b.worker_id != sick);
  CHECK(h.stats().recycles["unhealthy"] == 1);
  CHECK(h.stats().crashes == 0);
  b.finish();
  h.finish();
}

TEST_CASE("pool: failing health checks get a worker replaced") {
  PoolHarness h({{"n-min", "1"},
                 {"n-max", "1"},
                 {"health-path", "/status?code=500"},
                 {"health-interval", "0.02"},
                 {"health-fall", "2"}});
  valve::Pool &pool = h.start_ready();
  uint64_t first = test::workers_of(pool).at(0).id;
  // Replaced, it drains and exits. (Its replacement fails the same checks in turn.)
  REQUIRE_MESSAGE(h.run_until([&] {
    bool gone = true;
    for (const auto &w : test::workers_of(pool)) gone &= w.id != first;
    return h.stats().recycles["unhealthy"] >= 1 && gone;
  }),
                  h.log_text());
  CHECK(h.logged("worker " + std::to_string(first) + " (pid") >= 1);
  CHECK(h.logged("is unhealthy: 2 health checks in a row failed (last: GET /status?code=500 "
                 "answered 500)") >= 1);
  CHECK(h.stats().launches >= 2);
  h.finish();
}

TEST_CASE("pool: workers idle past max-age stop, least recently used first, down to n-min") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "3"}, {"max-age", "0.08"}, {"check-unused", "0.02"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &a = h.request(), &b = h.request(), &c = h.request();
  pool.submit(a);
  pool.submit(b);
  pool.submit(c);
  REQUIRE_MESSAGE(h.run_until([&] { return b.dispatched() && c.dispatched(); }), h.log_text());
  CHECK(h.stats().launches == 3);
  // Used last: c's worker, which outlives the others.
  b.finish();
  h.run_for(0.01);
  a.finish();
  h.run_for(0.01);
  c.finish();
  REQUIRE_MESSAGE(h.run_until([&] { return h.stats().exits == 2; }), h.log_text());
  CHECK(h.logged("unused for") == 2);
  h.run_for(0.1);  // several more checks: n-min stays
  auto left = test::workers_of(pool);
  REQUIRE(left.size() == 1);
  CHECK(left[0].id == c.worker_id);
  CHECK(left[0].state == "ready");
  CHECK(h.stats().exits == 2);
  CHECK(h.stats().crashes == 0);
  CHECK(h.stats().launches == 3);
  h.finish();
}

TEST_CASE("pool: a worker that crashes after answering requests is replaced at once") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &a = h.request();
  pool.submit(a);
  a.send();
  REQUIRE(h.run_until([&] { return a.answered; }));
  REQUIRE(::kill(a.worker_pid, SIGKILL) == 0);  // the pool's worker, started by this test
  REQUIRE(h.run_until([&] { return h.stats().crashes == 1; }));
  // Replaced in the same turn: no back-off for a worker that worked.
  CHECK(h.stats().launches == 2);
  CHECK(h.logged("crashed; replacing it if needed") == 1);
  CHECK(h.logged("next launch in") == 0);
  REQUIRE_MESSAGE(h.until_ready(1), h.log_text());
  FakeRequest &b = h.request();
  pool.submit(b);
  CHECK(b.holding());
  CHECK(b.worker_id != a.worker_id);
  b.finish();
  h.finish();
  CHECK(h.observer().failures.empty());
}

TEST_CASE("pool: a request the worker dies on fails; the worker is replaced") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}});
  valve::Pool &pool = h.start_ready();
  FakeRequest &a = h.request("/crash");
  pool.submit(a);
  a.send();
  REQUIRE(h.run_until([&] { return !a.failure.empty(); }));
  CHECK_FALSE(a.answered);
  CHECK_FALSE(a.holding());
  REQUIRE_MESSAGE(h.run_until([&] { return h.stats().crashes == 1; }), h.log_text());
  CHECK(h.logged("worker " + std::to_string(a.worker_id) + " (pid " +
                 std::to_string(a.worker_pid) + ") exited with status 1 unexpectedly") == 1);
  // It never answered: its replacement waits out the first back-off (the next case).
  CHECK(h.logged("crashed; replacing it if needed") == 1);
  h.finish();
}

TEST_CASE("pool: workers that die young are relaunched after a back-off; a crash loop says so") {
  Marker marker;
  // The first launch serves and makes the marker; every later one exits at once.
  std::string backend = test::backend_path();
  std::string cmd = "if [ -e '" + marker.path + "' ]; then exec '" + backend +
                    "' --port {port} --exit-at-start 3; fi; touch '" + marker.path +
                    "'; exec '" + backend + "' --port {port}";
  PoolHarness h(shell_config(cmd, {{"n-min", "1"}, {"n-max", "1"}}));
  valve::Pool &pool = h.start_ready();
  pid_t first = test::workers_of(pool).at(0).pid;
  REQUIRE(::kill(first, SIGKILL) == 0);  // the pool's worker; it never answered a request
  REQUIRE(h.run_until([&] { return h.stats().crashes == 1; }));
  auto crashed = std::chrono::steady_clock::now();
  CHECK(h.logged("crashed; replacing it if needed") == 1);
  CHECK(h.stats().launches == 1);  // not at once
  REQUIRE(h.run_until([&] { return h.stats().launches == 2; }));
  CHECK(seconds_since(crashed) >= 0.45);  // the first back-off: 0.5 s
  REQUIRE_MESSAGE(h.run_until([&] { return h.logged("crash loop:") == 1; }), h.log_text());
  CHECK(h.logged("failed to start; next launch in 1 s (2 launches in a row failed)") == 1);
  h.run_for(0.1);
  CHECK(h.stats().launches == 2);
  std::string why;
  CHECK_FALSE(pool.ready(&why));
  CHECK(why == "no worker is ready: 2 launches in a row failed");
  // After a good start, a crash loop does not fail the pool.
  CHECK(h.observer().failures.empty());
  h.finish();
}

TEST_CASE("pool: terminate refuses queued requests with 503 and ends every worker") {
  PoolHarness h({{"n-min", "2"}, {"n-max", "2"}});
  valve::Pool &pool = h.start();
  REQUIRE_MESSAGE(h.until_ready(2), h.log_text());
  FakeRequest &a = h.request(), &b = h.request(), &c = h.request(), &d = h.request();
  pool.submit(a);
  pool.submit(b);
  pool.submit(c);
  pool.submit(d);
  REQUIRE(pool.queue_depth() == 2);
  pool.terminate();
  CHECK(pool.terminating());
  CHECK(pool.queue_depth() == 0);
  CHECK(c.rejected == 503);
  CHECK(c.why == "the server is shutting down");
  CHECK(d.rejected == 503);
  CHECK(a.rejected == 0);
  // After it, requests and reloads are refused at once.
  FakeRequest &e = h.request();
  pool.submit(e);
  CHECK(e.rejected == 503);
  std::optional<valve::ReloadResult> reloaded;
  pool.reload([&](const valve::ReloadResult &r) { reloaded = r; });
  REQUIRE(reloaded);
  CHECK_FALSE(reloaded->ok);
  CHECK(reloaded->error == "the server is shutting down");
  std::string why;
  CHECK_FALSE(pool.ready(&why));
  CHECK(why == "the server is shutting down");
  // The requests on the workers fail as the workers end.
  REQUIRE(h.run_until([&] { return h.observer().terminated == 1; }));
  CHECK_FALSE(a.failure.empty());
  CHECK_FALSE(b.failure.empty());
  CHECK(h.stats().exits == 2);
  CHECK(h.stats().crashes == 0);
  CHECK(h.logged("stopping worker") == 2);
  h.finish();
}

TEST_CASE("pool: terminate with no worker reports the pool terminated from the loop") {
  PoolHarness h({{"n-min", "0"}, {"n-max", "1"}});
  valve::Pool &pool = h.start();
  CHECK(h.stats().launches == 0);
  std::string why;
  CHECK(pool.ready(&why));  // scaled to zero: a request would launch one
  pool.terminate();
  CHECK(h.observer().terminated == 0);
  REQUIRE(h.run_until([&] { return h.observer().terminated == 1; }));
  h.finish();
}

TEST_CASE("pool: a reload starts a new generation; the old one drains once it is ready") {
  PoolHarness h({{"n-min", "2"}, {"n-max", "2"}});
  valve::Pool &pool = h.start();
  REQUIRE_MESSAGE(h.until_ready(2), h.log_text());
  auto old = test::workers_of(pool);
  FakeRequest &a = h.request();
  pool.submit(a);
  std::vector<valve::ReloadResult> results;
  pool.reload([&](const valve::ReloadResult &r) { results.push_back(r); });
  CHECK(h.observer().reloads_started == 1);
  CHECK(pool.generation() == 2);
  CHECK(h.stats().launches == 4);
  CHECK(test::count_in_state(pool, "retiring") == 2);
  // Until the new generation is ready, the old one serves.
  FakeRequest &b = h.request();
  pool.submit(b);
  CHECK(b.holding());
  CHECK(b.worker_id != a.worker_id);
  b.finish();
  REQUIRE_MESSAGE(h.run_until([&] { return results.size() == 1; }), h.log_text());
  CHECK(results[0].ok);
  CHECK(results[0].generation == 2);
  CHECK(results[0].workers == 2);
  CHECK(results[0].error.empty());
  CHECK(h.observer().reloads_finished == std::vector<bool>{true});
  // a still holds its old worker, which drains; the other old one has stopped.
  bool draining = false;
  for (const auto &w : test::workers_of(pool)) draining |= w.id == a.worker_id && w.state == "draining";
  CHECK(draining);
  FakeRequest &c = h.request();
  pool.submit(c);
  CHECK(c.holding());
  for (const auto &w : old) CHECK(c.worker_id != w.id);
  c.finish();
  a.finish();
  REQUIRE_MESSAGE(h.run_until([&] { return h.stats().exits == 2; }), h.log_text());
  CHECK(generations(pool) == std::vector<uint64_t>{2, 2});
  CHECK(h.stats().recycles["reload"] == 2);
  CHECK(h.stats().reloads["ok"] == 1);
  h.finish();
}

TEST_CASE("pool: a reload asked for during another runs after it, once for all who asked") {
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}});
  valve::Pool &pool = h.start_ready();
  std::vector<std::pair<std::string, valve::ReloadResult>> heard;
  auto done = [&](std::string who) {
    return [&heard, who](const valve::ReloadResult &r) { heard.emplace_back(who, r); };
  };
  pool.reload(done("first"));
  pool.reload(done("second"));
  pool.reload(done("third"));
  CHECK(h.observer().reloads_started == 1);
  CHECK(h.logged("a reload to generation 2 is in progress: the new one runs after it") == 2);
  REQUIRE_MESSAGE(h.run_until([&] { return heard.size() == 3; }), h.log_text());
  CHECK(heard[0].first == "first");
  CHECK(heard[0].second.generation == 2);
  CHECK(heard[1].first == "second");
  CHECK(heard[2].first == "third");
  CHECK(heard[1].second.generation == 3);
  CHECK(heard[2].second.generation == 3);
  for (const auto &[who, r] : heard) CHECK(r.ok);
  CHECK(h.observer().reloads_started == 2);
  CHECK(pool.generation() == 3);
  h.run_for(0.05);
  CHECK(heard.size() == 3);
  REQUIRE(h.run_until([&] { return generations(pool) == std::vector<uint64_t>{3}; }));
  h.finish();
}

TEST_CASE("pool: a reload whose new workers fail to start leaves the old generation serving") {
  Marker marker;
  PoolHarness h(shell_config(backend_unless(marker.path), {{"n-min", "2"}, {"n-max", "2"}}));
  valve::Pool &pool = h.start();
  REQUIRE_MESSAGE(h.until_ready(2), h.log_text());
  auto old = test::workers_of(pool);
  marker.create();
  std::optional<valve::ReloadResult> result;
  pool.reload([&](const valve::ReloadResult &r) { result = r; });
  REQUIRE_MESSAGE(h.run_until([&] { return result.has_value(); }), h.log_text());
  CHECK_FALSE(result->ok);
  CHECK(result->generation == 1);
  CHECK(result->workers == 2);
  CHECK(result->error.find("reload to generation 2 failed; generation 1 keeps serving: new worker") == 0);
  CHECK(result->error.find("exited with status 3 before it was ready") != std::string::npos);
  CHECK(result->error.find("backend: exiting at start as asked") != std::string::npos);
  CHECK(pool.generation() == 1);
  CHECK(h.observer().reloads_finished == std::vector<bool>{false});
  CHECK(h.stats().reloads["failed"] == 1);
  // The old workers serve on, no longer retiring.
  REQUIRE(h.run_until([&] { return test::workers_of(pool).size() == 2; }));
  auto now = test::workers_of(pool);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(now[i].id == old[i].id);
    CHECK(now[i].state == "ready");
  }
  FakeRequest &a = h.request();
  pool.submit(a);
  CHECK(a.holding());
  a.finish();
  h.run_for(0.05);
  CHECK(test::workers_of(pool).size() == 2);  // nothing relaunched meanwhile
  // Fixed, the next reload succeeds.
  marker.remove();
  result.reset();
  pool.reload([&](const valve::ReloadResult &r) { result = r; });
  REQUIRE_MESSAGE(h.run_until([&] { return result.has_value(); }), h.log_text());
  CHECK(result->ok);
  // The failed reload's number is not used again: generation 2 was the workers that failed.
  CHECK(result->generation == 3);
  CHECK(result->generation == pool.generation());
  CHECK(h.stats().reloads["ok"] == 1);
  h.finish();
}

TEST_CASE("pool: a reload reads env-file again; a malformed one fails it before any launch") {
  test::TempFile env("GREETING=one\n");
  PoolHarness h({{"n-min", "1"}, {"n-max", "1"}, {"env-file", env.path}});
  valve::Pool &pool = h.start_ready();
  CHECK(has(pool.worker_environment(), "GREETING=one"));
  std::ofstream(env.path) << "GREETING=two\n";
  std::optional<valve::ReloadResult> result;
  pool.reload([&](const valve::ReloadResult &r) { result = r; });
  REQUIRE_MESSAGE(h.run_until([&] { return result.has_value(); }), h.log_text());
  CHECK(result->ok);
  CHECK(has(pool.worker_environment(), "GREETING=two"));
  CHECK_FALSE(has(pool.worker_environment(), "GREETING=one"));
  uint64_t launches = h.stats().launches;
  std::ofstream(env.path) << "GREETING=three\nthis is not a variable\n";
  result.reset();
  pool.reload([&](const valve::ReloadResult &r) { result = r; });
  // Refused as it begins: no worker is launched.
  REQUIRE(result.has_value());
  CHECK_FALSE(result->ok);
  CHECK(result->error.find("reload to generation 3 failed; generation 2 keeps serving: env-file " +
                           env.path + ":2") == 0);
  CHECK(h.stats().launches == launches);
  CHECK(pool.generation() == 2);
  CHECK(has(pool.worker_environment(), "GREETING=two"));
  CHECK(h.observer().reloads_started == 1);  // the failed one never started workers
  CHECK(h.observer().reloads_finished == std::vector<bool>{true, false});
  h.finish();
}

TEST_CASE("pool: on_scaled stops workers above a lowered n-max, starting and idle ones first") {
  valve::Config config = PoolHarness::with_options(test::backend_config(),
                                                   {{"n-min", "3"}, {"n-max", "3"}});
  PoolHarness h(config);
  valve::Pool &pool = h.start();
  REQUIRE_MESSAGE(h.until_ready(3), h.log_text());
  FakeRequest &busy = h.request();
  pool.submit(busy);
  REQUIRE(h.config_for_scaling().set("n-max", "1") == std::nullopt);
  REQUIRE(h.config_for_scaling().set("n-min", "1") == std::nullopt);
  pool.on_scaled();
  // The busy worker stays; the two idle ones go.
  CHECK(h.logged("stopping worker") == 2);
  REQUIRE(h.run_until([&] { return h.stats().exits == 2; }));
  auto left = test::workers_of(pool);
  REQUIRE(left.size() == 1);
  CHECK(left[0].id == busy.worker_id);
  busy.finish();
  h.finish();
}

TEST_CASE("pool: check_environment names the option at fault") {
  test::TestLoop t;
  test::PoolObserver observer;
  auto problem = [&](const test::Options &options) {
    valve::Config config;
    if (geteuid() == 0) REQUIRE_FALSE(config.set("allow-root", "true").has_value());
    for (const auto &[k, v] : options.items) REQUIRE_FALSE(config.set(k, v).has_value());
    valve::Pool pool(t.ctx(), observer, config, "default", 1);
    return pool.check_environment().value_or("");
  };
  CHECK(problem({{"rscript", "no-such-rscript-for-valve"}}).find(
            "rscript no-such-rscript-for-valve: not found") == 0);
  CHECK(problem({{"rscript", "/usr/bin/Rscript"}, {"file", "/nonexistent/plumber.R"}}) ==
        "file /nonexistent/plumber.R: no such file");
  CHECK(problem({{"rscript", "/usr/bin/Rscript"}, {"file", "/tmp"}}) == "file /tmp: no such file");
  char dir[] = "/tmp/valve-empty-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  CHECK(problem({{"type", "shiny"}, {"rscript", "/usr/bin/Rscript"}, {"file", dir}})
            .find("file " + std::string(dir) + ": not a Shiny app directory") == 0);
  rmdir(dir);
  CHECK(problem({{"cmd", "true"}, {"env-file", "/nonexistent/env"}}).find("/nonexistent/env") !=
        std::string::npos);
  // With --cmd neither Rscript nor the file matters.
  CHECK(problem({{"cmd", "true"}, {"rscript", "no-such-rscript-for-valve"}}).empty());
}
