// A shared HTTP cache for one app (RFC 9111), bounded in bytes (LRU), and the flights that collapse
// identical requests in progress into one worker call. Pure: times are given by the caller (Unix
// seconds), so the unit tests drive the clock.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "http.hpp"
#include "stats.hpp"

namespace valve {

// The Cache-Control directives valve reads, from a request or a response (RFC 9111 5.2). A
// directive given with a field list (no-cache="Set-Cookie", private="X") counts as unqualified.
struct CacheControl {
  bool no_store = false;
  bool no_cache = false;
  bool is_private = false;
  bool is_public = false;
  bool must_revalidate = false;  // must-revalidate or proxy-revalidate
  bool only_if_cached = false;
  bool max_stale_any = false;  // max-stale with no value
  // A directive with a value that is not a number of seconds is read as 0 (RFC 9111 4.2.1 asks a
  // cache to treat an invalid max-age as stale).
  std::optional<int64_t> max_age, s_maxage, min_fresh, max_stale;
};
CacheControl parse_cache_control(const Head &head);

// An HTTP date (IMF-fixdate, RFC 850 or asctime, RFC 9110 5.6.7) as Unix seconds.
std::optional<int64_t> parse_http_date(std::string_view text);

// Why a forwarded request did not get a stored answer, as Cache-Status's fwd (RFC 9211 2.2).
enum class CacheForward { none, bypass, method, miss, vary_miss, stale, request };
const char *cache_forward_name(CacheForward fwd);

// One stored answer: the worker's status and end-to-end headers, and its whole body.
struct CachedAnswer {
  int status = 200;
  std::string reason;
  std::vector<Header> headers;  // as the worker sent them, hop-by-hop ones left out
  std::string body;
  // The request headers its Vary names (lower-case name, the request's value, "" when absent).
  std::vector<std::pair<std::string, std::optional<std::string>>> vary;
  double response_time = 0;  // when it arrived (RFC 9111 4.2.3)
  double corrected_initial_age = 0;
  double lifetime = 0;           // freshness lifetime, seconds
  bool must_revalidate = false;  // never served stale (must-/proxy-revalidate, s-maxage)
  std::string path;              // the request's path, for purges by prefix
  size_t bytes = 0;              // what it costs the cache's bound

  double age(double now) const;
  const std::string *find(std::string_view name) const;
};

class Cache {
 public:
  // Told that the flight it waits on is over: look the request up again, or go on alone.
  class Waiter {
   public:
    virtual void on_flight_over() = 0;

   protected:
    ~Waiter() = default;
  };

  // capacity: bytes in all; entry_max: the largest one answer may be. totals: where the counts of
  // every app's cache add up (the server's), besides this one's own.
  Cache(uint64_t capacity, uint64_t entry_max, CacheCounts *totals = nullptr);
  Cache(const Cache &) = delete;
  Cache &operator=(const Cache &) = delete;

  // The primary key of a GET (and HEAD) for host and target; a POST's adds its body and the values
  // of the chosen request headers.
  static std::string key(std::string_view method, std::string_view host, std::string_view target);
  static std::string post_key(std::string_view host, std::string_view target, std::string_view body,
                              const Head &request, const std::vector<std::string> &key_headers);

  struct Lookup {
    const CachedAnswer *answer = nullptr;  // set on a hit
    CacheForward forward = CacheForward::miss;
    bool not_modified = false;  // a hit that answers the request's validators with 304
    int64_t age = 0;
    int64_t ttl = 0;  // seconds of freshness left (negative: stale by that much)
  };
  // The stored answer for a request (by key, then its Vary), if it may serve it now.
  Lookup lookup(const std::string &key, const Head &request, double now);

  // Whether an answer to request may be stored (RFC 9111 3): nullopt if so, else why not.
  static std::optional<std::string> refuses(const Head &request, const Head &response);
  // The answer's freshness lifetime from its own headers (RFC 9111 4.2.1), 0 if none.
  static double freshness_lifetime(const Head &response, double response_time);
  // Builds the entry for a storable answer; store() takes it.
  static CachedAnswer make_answer(const Head &request, const Head &response, double request_time,
                                  double response_time);
  void store(const std::string &key, CachedAnswer answer);

  // Drops the answers stored for a URI (an unsafe method succeeded on it, RFC 9111 4.4): every
  // method's under host and target. Returns how many.
  size_t invalidate(std::string_view host, std::string_view target);
  // Drops the answers whose path starts with prefix (all of them for ""). Returns how many.
  size_t purge(std::string_view path_prefix);

  // Coalescing. lead(): true if no flight for key was on (the caller now leads one), else false.
  bool lead(const std::string &key);
  // Waits on key's flight (which must be on).
  void wait(const std::string &key, Waiter &waiter);
  void stop_waiting(const std::string &key, Waiter &waiter);
  // The leader's answer is over (stored or not): each waiter hears of it.
  void land(const std::string &key);
  bool in_flight(const std::string &key) const { return flights_.count(key) > 0; }

  uint64_t capacity() const { return capacity_; }
  uint64_t entry_max() const { return entry_max_; }
  uint64_t bytes() const { return bytes_; }
  size_t entries() const { return lru_.size(); }
  const CacheCounts &counts() const { return counts_; }
  // Adds n to a counter, this cache's and the totals: count(&CacheCounts::hits).
  void count(uint64_t CacheCounts::*member, uint64_t n = 1) {
    counts_.*member += n;
    if (totals_) totals_->*member += n;
  }

 private:
  struct Slot {
    std::string key;
    CachedAnswer answer;
  };
  using Lru = std::list<Slot>;
  void erase(Lru::iterator it);

  uint64_t capacity_;
  uint64_t entry_max_;
  uint64_t bytes_ = 0;
  Lru lru_;                                                  // most recently used first
  std::map<std::string, std::vector<Lru::iterator>> index_;  // by key: its variants (Vary)
  std::unordered_map<std::string, std::vector<Waiter *>> flights_;
  CacheCounts counts_;
  CacheCounts *totals_;
};

// The head of an answer from the store: status line and headers, Age and Cache-Status added, with
// Content-Length (a 304 has the validators and caching headers of RFC 9110 15.4.5 only).
// extra: whole header lines valve adds (X-Request-Id, Valve-App, Connection).
std::string cached_head(const CachedAnswer &answer, const Cache::Lookup &found,
                        std::string_view cache_status, std::string_view extra);

}  // namespace valve
