// cache.hpp: what may be stored, for how long, which stored answer serves which request, the
// byte bound, and the flights that collapse identical requests. The clock is given (Unix seconds).
#include <doctest/doctest.h>

#include <string>
#include <utility>
#include <vector>

#include "cache.hpp"

namespace {

using valve::Cache;
using valve::CacheCounts;
using valve::CacheForward;
using valve::Head;

constexpr double kNow = 1'000'000'000;  // 2001-09-09T01:46:40Z

Head request(std::vector<std::pair<std::string, std::string>> headers = {},
             std::string method = "GET", std::string target = "/x") {
  Head h;
  h.method = std::move(method);
  h.target = std::move(target);
  for (auto &[n, v] : headers) h.headers.push_back({n, v});
  return h;
}

Head response(std::vector<std::pair<std::string, std::string>> headers, int status = 200) {
  Head h;
  h.status = status;
  h.reason = "OK";
  for (auto &[n, v] : headers) h.headers.push_back({n, v});
  return h;
}

// Stores response to rq under the GET key of /x, as it arrived at kNow.
void put(Cache &cache, const Head &rq, const Head &rs, std::string body = "body") {
  REQUIRE_FALSE(Cache::refuses(rq, rs).has_value());
  valve::CachedAnswer a = Cache::make_answer(rq, rs, kNow, kNow);
  a.body = std::move(body);
  cache.store(Cache::key(rq.method, "h", rq.target), std::move(a));
}

Cache::Lookup get(Cache &cache, const Head &rq, double now) {
  return cache.lookup(Cache::key(rq.method, "h", rq.target), rq, now);
}

}  // namespace

TEST_CASE("cache: Cache-Control is read directive by directive, quoted lists and all") {
  auto cc = valve::parse_cache_control(
      response({{"Cache-Control", "public, max-age=60, no-cache=\"Set-Cookie, X\""},
                {"cache-control", "S-MAXAGE=\"30\", max-age=5, must-revalidate"}}));
  CHECK(cc.is_public);
  CHECK(cc.no_cache);
  CHECK(cc.must_revalidate);
  CHECK(cc.max_age == 60);  // the first one given
  CHECK(cc.s_maxage == 30);
  CHECK_FALSE(cc.no_store);
  auto bad = valve::parse_cache_control(response({{"Cache-Control", "max-age=soon, max-stale"}}));
  CHECK(bad.max_age == 0);  // invalid: stale at once
  CHECK(bad.max_stale_any);
  auto big =
      valve::parse_cache_control(response({{"Cache-Control", "max-age=99999999999999999999"}}));
  CHECK(big.max_age == int64_t{1} << 31);
}

TEST_CASE("cache: the three HTTP date formats, and what is not one") {
  CHECK(valve::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777);
  CHECK(valve::parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777);
  CHECK(valve::parse_http_date("Sun Nov  6 08:49:37 1994") == 784111777);
  for (const char *bad : {"0", "", "-1", "Sun, 06 Nov 1994 08:49:37 PST",
                          "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 8:49:37 GMT"})
    CHECK_FALSE(valve::parse_http_date(bad).has_value());
}

TEST_CASE("cache: only answers with explicit freshness are stored, never by heuristic") {
  Head rq = request();
  CHECK(Cache::refuses(rq, response({{"Cache-Control", "max-age=60"}})) == std::nullopt);
  CHECK(Cache::refuses(rq, response({{"Cache-Control", "s-maxage=60"}})) == std::nullopt);
  CHECK(Cache::refuses(rq, response({{"Expires", "Sun, 06 Nov 2044 08:49:37 GMT"}})) ==
        std::nullopt);
  // Last-Modified alone would allow a heuristic lifetime (RFC 9111 4.2.2): not here.
  CHECK(Cache::refuses(rq, response({{"Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT"}})) ==
        "no explicit freshness");
  CHECK(Cache::refuses(rq, response({{"Cache-Control", "public"}})) == "no explicit freshness");
  CHECK(Cache::refuses(rq, response({{"Cache-Control", "max-age=60, no-store"}})) == "no-store");
  CHECK(Cache::refuses(rq, response({{"Cache-Control", "max-age=60, private"}})) == "private");
  CHECK(Cache::refuses(rq, response({{"Cache-Control", "max-age=60, no-cache"}})) == "no-cache");
  CHECK(Cache::refuses(rq, response({{"Cache-Control", "max-age=60"}, {"Set-Cookie", "a=1"}})) ==
        "set-cookie");
  CHECK(Cache::refuses(rq, response({{"Cache-Control", "max-age=60"}, {"Vary", "Accept, *"}})) ==
        "vary *");
  CHECK(Cache::refuses(rq, response({{"Cache-Control", "max-age=60"}}, 206)) == "status");
  CHECK(Cache::refuses(rq, response({{"Cache-Control", "max-age=60"}}, 304)) == "status");
  CHECK(Cache::refuses(rq, response({{"Cache-Control", "max-age=60"}}, 404)) == std::nullopt);
  CHECK(Cache::refuses(request({{"Cache-Control", "no-store"}}),
                       response({{"Cache-Control", "max-age=60"}})) == "request no-store");
  // Authorization: only when the answer says it may be shared.
  Head auth = request({{"Authorization", "Bearer x"}});
  CHECK(Cache::refuses(auth, response({{"Cache-Control", "max-age=60"}})) == "authorization");
  for (const char *ok : {"max-age=60, public", "s-maxage=60", "max-age=60, must-revalidate"})
    CHECK(Cache::refuses(auth, response({{"Cache-Control", ok}})) == std::nullopt);
}

TEST_CASE("cache: freshness lifetime, Age and expiry") {
  CHECK(Cache::freshness_lifetime(response({{"Cache-Control", "max-age=10, s-maxage=20"}}), kNow) ==
        20);
  // Expires counts from the answer's Date, and without one from its arrival.
  Head expires = response(
      {{"Date", "Sun, 06 Nov 1994 08:49:37 GMT"}, {"Expires", "Sun, 06 Nov 1994 08:50:37 GMT"}});
  CHECK(Cache::freshness_lifetime(expires, kNow) == 60);
  CHECK(Cache::freshness_lifetime(response({{"Expires", "0"}}), kNow) == 0);
  CHECK(Cache::freshness_lifetime(response({{"Cache-Control", "max-age=5"},
                                            {"Expires", "Sun, 06 Nov 2044 08:49:37 GMT"}}),
                                  kNow) == 5);

  Cache cache(1 << 20, 1 << 20);
  Head rq = request();
  put(cache, rq, response({{"Cache-Control", "max-age=10"}, {"Age", "3"}}));
  auto hit = get(cache, rq, kNow + 2);
  REQUIRE(hit.answer);
  CHECK(hit.age == 5);  // 3 on arrival, 2 since
  CHECK(hit.ttl == 5);
  CHECK(get(cache, rq, kNow + 7).forward == CacheForward::stale);
  CHECK(get(cache, request({}, "GET", "/y"), kNow).forward == CacheForward::miss);
}

TEST_CASE("cache: request directives") {
  Cache cache(1 << 20, 1 << 20);
  put(cache, request(), response({{"Cache-Control", "max-age=10"}}));
  auto with = [&](const char *cc, double at) {
    return get(cache, request({{"Cache-Control", cc}}), kNow + at);
  };
  CHECK(with("no-cache", 0).forward == CacheForward::request);
  CHECK(with("max-age=2", 3).forward == CacheForward::request);
  CHECK(with("max-age=2", 1).answer);
  CHECK(with("min-fresh=5", 6).forward == CacheForward::request);
  CHECK(with("min-fresh=5", 4).answer);
  CHECK(with("max-stale=5", 14).answer);  // 4 s stale
  CHECK(with("max-stale=5", 16).forward == CacheForward::stale);
  CHECK(with("max-stale", 1000).answer);
  // must-revalidate: never served stale, whatever the client accepts.
  Cache strict(1 << 20, 1 << 20);
  put(strict, request(), response({{"Cache-Control", "max-age=10, must-revalidate"}}));
  CHECK(get(strict, request({{"Cache-Control", "max-stale"}}), kNow + 11).forward ==
        CacheForward::stale);
}

TEST_CASE("cache: Vary picks the variant; HEAD shares GET's answer") {
  Cache cache(1 << 20, 1 << 20);
  put(cache, request({{"Accept", "text/csv"}}),
      response({{"Cache-Control", "max-age=10"}, {"Vary", "accept"}}), "csv");
  put(cache, request({{"Accept", "application/json"}}),
      response({{"Cache-Control", "max-age=10"}, {"Vary", "Accept"}}), "json");
  auto csv = get(cache, request({{"accept", "text/csv"}}), kNow);
  REQUIRE(csv.answer);
  CHECK(csv.answer->body == "csv");
  auto json = get(cache, request({{"Accept", "application/json"}}, "HEAD"), kNow);
  REQUIRE(json.answer);
  CHECK(json.answer->body == "json");
  CHECK(get(cache, request({{"Accept", "text/html"}}), kNow).forward == CacheForward::vary_miss);
  CHECK(get(cache, request(), kNow).forward == CacheForward::vary_miss);  // no Accept at all
  CHECK(cache.entries() == 2);
  // The same variant again replaces the old one.
  put(cache, request({{"Accept", "text/csv"}}),
      response({{"Cache-Control", "max-age=10"}, {"Vary", "accept"}}), "csv2");
  CHECK(cache.entries() == 2);
  CHECK(get(cache, request({{"Accept", "text/csv"}}), kNow).answer->body == "csv2");
}

TEST_CASE("cache: validators answer 304 from the store") {
  Cache cache(1 << 20, 1 << 20);
  put(cache, request(),
      response({{"Cache-Control", "max-age=10"},
                {"ETag", "W/\"v1\""},
                {"Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT"}}));
  CHECK(get(cache, request({{"If-None-Match", "\"v0\", \"v1\""}}), kNow).not_modified);
  CHECK(get(cache, request({{"If-None-Match", "*"}}), kNow).not_modified);
  CHECK_FALSE(get(cache, request({{"If-None-Match", "\"v2\""}}), kNow).not_modified);
  CHECK(get(cache, request({{"If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT"}}), kNow)
            .not_modified);
  CHECK_FALSE(get(cache, request({{"If-Modified-Since", "Sun, 06 Nov 1994 08:49:36 GMT"}}), kNow)
                  .not_modified);
  // If-None-Match wins over If-Modified-Since.
  CHECK_FALSE(get(cache,
                  request({{"If-None-Match", "\"v2\""},
                           {"If-Modified-Since", "Sun, 06 Nov 2024 08:49:37 GMT"}}),
                  kNow)
                  .not_modified);
  auto found = get(cache, request({{"If-None-Match", "\"v1\""}}), kNow);
  std::string head = valve::cached_head(*found.answer, found, "valve; hit", "");
  CHECK(head.starts_with("HTTP/1.1 304 Not Modified\r\n"));
  CHECK(head.find("ETag: W/\"v1\"\r\n") != std::string::npos);
  CHECK(head.find("Last-Modified") == std::string::npos);
  CHECK(head.find("Content-Length") == std::string::npos);
}

TEST_CASE("cache: the stored head is the worker's, bar Age, with Cache-Status") {
  Cache cache(1 << 20, 1 << 20);
  put(cache, request(),
      response({{"Content-Type", "text/plain"},
                {"Cache-Control", "max-age=10"},
                {"Age", "2"},
                {"Connection", "close, X-Hop"},
                {"X-Hop", "1"},
                {"Content-Length", "4"},
                {"X-App", "a"}}));
  auto found = get(cache, request(), kNow + 1);
  CHECK(valve::cached_head(*found.answer, found, "valve; hit", "X-Request-Id: r\r\n") ==
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=10\r\n"
        "Content-Length: 4\r\nX-App: a\r\nAge: 3\r\nCache-Status: valve; hit\r\n"
        "X-Request-Id: r\r\n\r\n");
}

TEST_CASE("cache: bounded in bytes, least recently used out first") {
  CacheCounts totals;
  Cache cache(3000, 1500, &totals);
  auto at = [](const char *path) { return request({}, "GET", path); };
  Head fresh = response({{"Cache-Control", "max-age=100"}});
  auto store = [&](const char *path) {
    valve::CachedAnswer a = Cache::make_answer(at(path), fresh, kNow, kNow);
    a.body = std::string(800, 'x');
    cache.store(Cache::key("GET", "h", path), std::move(a));
  };
  store("/a");
  store("/b");
  CHECK(cache.entries() == 2);
  CHECK(cache.bytes() <= 3000);
  CHECK(get(cache, at("/a"), kNow).answer);  // /a is now the most recent
  store("/c");                               // /b goes
  CHECK(cache.entries() == 2);
  CHECK(get(cache, at("/b"), kNow).forward == CacheForward::miss);
  CHECK(get(cache, at("/a"), kNow).answer);
  CHECK(cache.counts().evictions == 1);
  CHECK(totals.evictions == 1);
  CHECK(totals.stores == 3);
  // Bigger than an entry may be: not stored, nothing evicted.
  valve::CachedAnswer big = Cache::make_answer(at("/big"), fresh, kNow, kNow);
  big.body = std::string(1500, 'x');
  cache.store(Cache::key("GET", "h", "/big"), std::move(big));
  CHECK(cache.entries() == 2);
  CHECK(cache.counts().evictions == 1);
}

TEST_CASE("cache: purge by path prefix, invalidation by URI") {
  Cache cache(1 << 20, 1 << 20);
  Head fresh = response({{"Cache-Control", "max-age=100"}});
  for (const char *path : {"/v1/a", "/v1/b?q=1", "/v2/a"}) {
    Head rq = request({}, "GET", path);
    cache.store(Cache::key("GET", "h", path), Cache::make_answer(rq, fresh, kNow, kNow));
  }
  Head post = request({}, "POST", "/v2/a");
  cache.store(Cache::post_key("h", "/v2/a", "{}", post, {}),
              Cache::make_answer(post, fresh, kNow, kNow));
  CHECK(cache.entries() == 4);
  CHECK(cache.invalidate("H", "/v1/b") == 0);  // another URI (the query is part of it)
  CHECK(cache.invalidate("H", "/v1/b?q=1") == 1);
  CHECK(cache.purge("/v1") == 1);
  CHECK(cache.invalidate("h", "/v2/a") == 2);  // GET's and POST's
  CHECK(cache.entries() == 0);
  CHECK(cache.counts().purged == 4);
  CHECK(cache.bytes() == 0);
}

TEST_CASE("cache: a POST's key holds its body and the chosen headers") {
  Head a = request({{"X-Model", "1"}, {"Accept", "a"}}, "POST");
  Head b = request({{"x-model", "2"}, {"Accept", "a"}}, "POST");
  CHECK(Cache::post_key("h", "/p", "{}", a, {"X-Model"}) !=
        Cache::post_key("h", "/p", "{}", b, {"X-Model"}));
  CHECK(Cache::post_key("h", "/p", "{}", a, {}) == Cache::post_key("h", "/p", "{}", b, {}));
  CHECK(Cache::post_key("h", "/p", "{\"x\":1}", a, {}) !=
        Cache::post_key("h", "/p", "{\"x\":2}", a, {}));
  CHECK(Cache::post_key("h", "/p", "{}", a, {}) != Cache::key("GET", "h", "/p"));
  CHECK(Cache::key("HEAD", "H", "/p") == Cache::key("GET", "h", "/p"));
}

namespace {
struct CountingWaiter final : Cache::Waiter {
  int woken = 0;
  void on_flight_over() override { ++woken; }
};
}  // namespace

TEST_CASE("cache: a flight's waiters hear when it lands, those that left do not") {
  Cache cache(1 << 20, 1 << 20);
  CountingWaiter a, b;
  CHECK(cache.lead("k"));
  CHECK_FALSE(cache.lead("k"));
  cache.wait("k", a);
  cache.wait("k", b);
  cache.stop_waiting("k", b);
  cache.land("k");
  CHECK(a.woken == 1);
  CHECK(b.woken == 0);
  CHECK_FALSE(cache.in_flight("k"));
  CHECK(cache.lead("k"));  // a new flight
}
