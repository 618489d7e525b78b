#include "cache.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <ctime>
#include <iterator>

namespace valve {

namespace {

// What an entry costs beyond its bytes of text: the list node, the index, the strings' headers.
constexpr size_t kEntryOverhead = 256;

std::string lower(std::string_view s) {
  std::string out(s);
  for (char &c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return out;
}

std::optional<int64_t> parse_delta(std::string_view text) {
  if (text.size() >= 2 && text.front() == '"' && text.back() == '"')
    text = text.substr(1, text.size() - 2);
  if (text.empty()) return std::nullopt;
  int64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec == std::errc::result_out_of_range && p == text.data() + text.size())
    return int64_t{1} << 31;  // RFC 9111 1.2.2: a delta too big to hold means "very long"
  if (ec != std::errc() || p != text.data() + text.size() || v < 0) return std::nullopt;
  return std::min<int64_t>(v, int64_t{1} << 31);
}

// The joined values of every `name` header, items trimmed, ", " between them.
std::optional<std::string> joined(const Head &head, std::string_view name) {
  std::optional<std::string> out;
  for (const auto &h : head.headers) {
    if (!iequals(h.name, name)) continue;
    if (out) {
      *out += ", ";
      *out += trim(h.value);
    } else {
      out = std::string(trim(h.value));
    }
  }
  return out;
}

int month_index(std::string_view m) {
  static constexpr std::array<std::string_view, 12> kMonths = {
      "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  for (size_t i = 0; i < kMonths.size(); ++i)
    if (m == kMonths[i]) return static_cast<int>(i);
  return -1;
}

bool read_int(std::string_view s, int &out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

bool read_clock(std::string_view s, std::tm &tm) {
  if (s.size() != 8 || s[2] != ':' || s[5] != ':') return false;
  return read_int(s.substr(0, 2), tm.tm_hour) && read_int(s.substr(3, 2), tm.tm_min) &&
         read_int(s.substr(6, 2), tm.tm_sec) && tm.tm_hour < 24 && tm.tm_min < 60 && tm.tm_sec < 61;
}

std::vector<std::string_view> words(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && s[i] == ' ') ++i;
    size_t j = i;
    while (j < s.size() && s[j] != ' ') ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

// An entity tag without its weakness ("W/"), for the weak comparison (RFC 9110 8.8.3.2).
std::string_view opaque_tag(std::string_view tag) {
  tag = trim(tag);
  if (tag.starts_with("W/")) tag.remove_prefix(2);
  return tag;
}

bool etag_matches(std::string_view list, std::string_view etag) {
  std::string_view mine = opaque_tag(etag);
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view item = trim(list.substr(0, comma));
    if (item == "*" || (!item.empty() && opaque_tag(item) == mine)) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

// The stored answer satisfies the request's If-None-Match or If-Modified-Since (RFC 9110 13.2.2).
bool not_modified(const CachedAnswer &a, const Head &request) {
  if (a.status != 200) return false;
  if (auto inm = joined(request, "if-none-match")) {
    const std::string *etag = a.find("etag");
    return etag && etag_matches(*inm, *etag);
  }
  const std::string *ims = request.find("if-modified-since");
  const std::string *lm = a.find("last-modified");
  if (!ims || !lm) return false;
  auto since = parse_http_date(*ims);
  auto modified = parse_http_date(*lm);
  return since && modified && *modified <= *since;
}

}  // namespace

CacheControl parse_cache_control(const Head &head) {
  CacheControl cc;
  for (const auto &h : head.headers) {
    if (!iequals(h.name, "cache-control")) continue;
    std::string_view rest = h.value;
    while (!rest.empty()) {
      // A quoted value may hold commas (no-cache="a, b").
      size_t end = 0;
      bool quoted = false;
      while (end < rest.size() && (quoted || rest[end] != ',')) {
        if (rest[end] == '"') quoted = !quoted;
        ++end;
      }
      std::string_view item = trim(rest.substr(0, end));
      rest = end < rest.size() ? rest.substr(end + 1) : std::string_view();
      size_t eq = item.find('=');
      std::string name = lower(trim(item.substr(0, eq)));
      std::optional<std::string_view> value;
      if (eq != std::string_view::npos) value = trim(item.substr(eq + 1));
      auto seconds = [&] { return value ? parse_delta(*value).value_or(0) : int64_t{0}; };
      if (name == "no-store") {
        cc.no_store = true;
      } else if (name == "no-cache") {
        cc.no_cache = true;
      } else if (name == "private") {
        cc.is_private = true;
      } else if (name == "public") {
        cc.is_public = true;
      } else if (name == "must-revalidate" || name == "proxy-revalidate") {
        cc.must_revalidate = true;
      } else if (name == "only-if-cached") {
        cc.only_if_cached = true;
      } else if (name == "max-age") {
        if (!cc.max_age) cc.max_age = seconds();  // the first wins when repeated
      } else if (name == "s-maxage") {
        if (!cc.s_maxage) cc.s_maxage = seconds();
      } else if (name == "min-fresh") {
        cc.min_fresh = seconds();
      } else if (name == "max-stale") {
        if (value)
          cc.max_stale = seconds();
        else
          cc.max_stale_any = true;
      }
    }
  }
  return cc;
}

std::optional<int64_t> parse_http_date(std::string_view text) {
  std::vector<std::string_view> w = words(trim(text));
  std::tm tm{};
  auto finish = [&]() -> std::optional<int64_t> {
    if (tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_mon < 0) return std::nullopt;
    return static_cast<int64_t>(timegm(&tm));
  };
  if (w.size() == 6 && w[0].size() == 4 && w[0].back() == ',' && w[5] == "GMT") {
    // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
    if (!read_int(w[1], tm.tm_mday) || !read_int(w[3], tm.tm_year) || !read_clock(w[4], tm))
      return std::nullopt;
    tm.tm_mon = month_index(w[2]);
    tm.tm_year -= 1900;
    return finish();
  }
  if (w.size() == 4 && w[0].back() == ',' && w[3] == "GMT" && w[1].size() == 9) {
    // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT (a two-digit year within 50 years of now)
    if (w[1][2] != '-' || w[1][6] != '-' || !read_int(w[1].substr(0, 2), tm.tm_mday) ||
        !read_int(w[1].substr(7, 2), tm.tm_year) || !read_clock(w[2], tm))
      return std::nullopt;
    tm.tm_mon = month_index(w[1].substr(3, 3));
    tm.tm_year += tm.tm_year < 70 ? 100 : 0;
    return finish();
  }
  if (w.size() == 5) {
    // asctime: Sun Nov  6 08:49:37 1994
    if (!read_int(w[2], tm.tm_mday) || !read_clock(w[3], tm) || !read_int(w[4], tm.tm_year))
      return std::nullopt;
    tm.tm_mon = month_index(w[1]);
    tm.tm_year -= 1900;
    return finish();
  }
  return std::nullopt;
}

const char *cache_forward_name(CacheForward fwd) {
  switch (fwd) {
    case CacheForward::none:
      return "";
    case CacheForward::bypass:
      return "bypass";
    case CacheForward::method:
      return "method";
    case CacheForward::miss:
      return "miss";
    case CacheForward::vary_miss:
      return "vary-miss";
    case CacheForward::stale:
      return "stale";
    case CacheForward::request:
      return "request";
  }
  return "";
}

double CachedAnswer::age(double now) const {
  return corrected_initial_age + std::max(0.0, now - response_time);
}

const std::string *CachedAnswer::find(std::string_view name) const {
  for (const auto &h : headers)
    if (iequals(h.name, name)) return &h.value;
  return nullptr;
}

Cache::Cache(uint64_t capacity, uint64_t entry_max, CacheCounts *totals)
    : capacity_(capacity), entry_max_(std::min(entry_max, capacity)), totals_(totals) {}

std::string Cache::key(std::string_view method, std::string_view host, std::string_view target) {
  // HEAD shares GET's answers (RFC 9110 9.3.2): both look up the GET key.
  std::string_view m = method == "HEAD" ? std::string_view("GET") : method;
  return fmt::format("{}\n{}\n{}", m, lower(host), target);
}

std::string Cache::post_key(std::string_view host, std::string_view target, std::string_view body,
                            const Head &request, const std::vector<std::string> &key_headers) {
  // The body itself, not a digest of it: no two bodies can share a key, whatever their content.
  std::string k = key("POST", host, target);
  for (const std::string &name : key_headers) {
    auto v = joined(request, name);
    fmt::format_to(std::back_inserter(k), "\n{}{}{}", lower(name), v ? ": " : "", v ? *v : "");
  }
  fmt::format_to(std::back_inserter(k), "\n{}\n", body.size());
  k += body;
  return k;
}

Cache::Lookup Cache::lookup(const std::string &key, const Head &request, double now) {
  Lookup out;
  auto found = index_.find(key);
  if (found == index_.end()) return out;
  Lru::iterator match = lru_.end();
  for (Lru::iterator it : found->second) {
    bool same = std::all_of(it->answer.vary.begin(), it->answer.vary.end(),
                            [&](const auto &v) { return joined(request, v.first) == v.second; });
    if (same) {
      match = it;
      break;
    }
  }
  if (match == lru_.end()) {
    out.forward = CacheForward::vary_miss;
    return out;
  }
  const CachedAnswer &a = match->answer;
  double age = a.age(now);
  out.age = static_cast<int64_t>(age);
  out.ttl = static_cast<int64_t>(std::floor(a.lifetime - age));
  bool fresh = age < a.lifetime;
  CacheControl cc = parse_cache_control(request);
  if (cc.no_cache) {
    out.forward = CacheForward::request;
    return out;
  }
  if ((cc.max_age && age > static_cast<double>(*cc.max_age)) ||
      (cc.min_fresh && a.lifetime - age < static_cast<double>(*cc.min_fresh))) {
    out.forward = CacheForward::request;
    return out;
  }
  if (!fresh) {
    // RFC 9111 4.2.4: stale only where the client allows it and the answer does not forbid it.
    bool allowed = !a.must_revalidate &&
                   (cc.max_stale_any ||
                    (cc.max_stale && age - a.lifetime <= static_cast<double>(*cc.max_stale)));
    if (!allowed) {
      out.forward = CacheForward::stale;
      return out;
    }
  }
  lru_.splice(lru_.begin(), lru_, match);
  out.answer = &a;
  out.forward = CacheForward::none;
  out.not_modified =
      (request.method == "GET" || request.method == "HEAD") && not_modified(a, request);
  return out;
}

std::optional<std::string> Cache::refuses(const Head &request, const Head &response) {
  int s = response.status;
  // 206 needs ranges combined and 304 updates a stored answer: valve stores neither.
  if (s < 200 || s == 206 || s == 304) return "status";
  CacheControl rq = parse_cache_control(request);
  if (rq.no_store) return "request no-store";
  CacheControl cc = parse_cache_control(response);
  if (cc.no_store) return "no-store";
  if (cc.is_private) return "private";
  // A no-cache answer may be stored only to be validated at each use; valve does not revalidate.
  if (cc.no_cache) return "no-cache";
  if (response.find("set-cookie")) return "set-cookie";
  if (response.find_token("vary", [](std::string_view t) { return t == "*"; })) return "vary *";
  if (request.find("authorization") && !cc.s_maxage && !cc.is_public && !cc.must_revalidate)
    return "authorization";
  if (!cc.s_maxage && !cc.max_age && !response.find("expires")) return "no explicit freshness";
  return std::nullopt;
}

double Cache::freshness_lifetime(const Head &response, double response_time) {
  CacheControl cc = parse_cache_control(response);
  if (cc.s_maxage) return static_cast<double>(*cc.s_maxage);
  if (cc.max_age) return static_cast<double>(*cc.max_age);
  if (const std::string *expires = response.find("expires")) {
    auto e = parse_http_date(*expires);
    if (!e) return 0;  // an invalid Expires ("0") is a time in the past
    const std::string *date = response.find("date");
    auto d = date ? parse_http_date(*date) : std::nullopt;
    return std::max(0.0, static_cast<double>(*e) - (d ? static_cast<double>(*d) : response_time));
  }
  return 0;
}

CachedAnswer Cache::make_answer(const Head &request, const Head &response, double request_time,
                                double response_time) {
  CachedAnswer a;
  a.status = response.status;
  a.reason = response.reason;
  for (const auto &h : response.headers) {
    if (is_dropped_hop(response, h.name)) continue;  // Content-Length stays where it was
    a.headers.push_back(h);
  }
  CacheControl cc = parse_cache_control(response);
  a.must_revalidate = cc.must_revalidate || cc.s_maxage.has_value();
  a.lifetime = freshness_lifetime(response, response_time);
  // RFC 9111 4.2.3: the age it had on arrival.
  double age_value = 0;
  if (const std::string *age = response.find("age"))
    age_value = static_cast<double>(parse_delta(trim(*age)).value_or(0));
  double apparent = 0;
  if (const std::string *date = response.find("date"))
    if (auto d = parse_http_date(*date)) apparent = std::max(0.0, response_time - *d);
  a.corrected_initial_age = std::max(apparent, age_value + (response_time - request_time));
  a.response_time = response_time;
  for (const auto &h : response.headers) {
    if (!iequals(h.name, "vary")) continue;
    std::string_view rest = h.value;
    while (!rest.empty()) {
      size_t comma = rest.find(',');
      std::string name = lower(trim(rest.substr(0, comma)));
      if (!name.empty()) a.vary.emplace_back(name, joined(request, name));
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  std::string_view target = request.target;
  a.path = std::string(target.substr(0, target.find('?')));
  return a;
}

void Cache::store(const std::string &key, CachedAnswer answer) {
  size_t bytes =
      kEntryOverhead + key.size() + answer.body.size() + answer.reason.size() + answer.path.size();
  for (const auto &h : answer.headers) bytes += h.name.size() + h.value.size() + 4;
  for (const auto &[name, value] : answer.vary) bytes += name.size() + (value ? value->size() : 0);
  answer.bytes = bytes;
  if (bytes > entry_max_) return;
  // The same variant (same Vary values) is replaced.
  auto found = index_.find(key);
  if (found != index_.end()) {
    for (Lru::iterator it : std::vector<Lru::iterator>(found->second)) {
      if (it->answer.vary == answer.vary) {
        erase(it);
        break;
      }
    }
  }
  while (bytes_ + bytes > capacity_ && !lru_.empty()) {
    erase(std::prev(lru_.end()));
    count(&CacheCounts::evictions);
  }
  lru_.push_front(Slot{key, std::move(answer)});
  index_[key].insert(index_[key].begin(), lru_.begin());
  bytes_ += bytes;
  count(&CacheCounts::stores);
}

void Cache::erase(Lru::iterator it) {
  auto found = index_.find(it->key);
  if (found != index_.end()) {
    auto &variants = found->second;
    variants.erase(std::remove(variants.begin(), variants.end(), it), variants.end());
    if (variants.empty()) index_.erase(found);
  }
  bytes_ -= it->answer.bytes;
  lru_.erase(it);
}

size_t Cache::invalidate(std::string_view host, std::string_view target) {
  size_t n = 0;
  for (std::string_view method : {"GET", "POST"}) {
    // A GET's key exactly; a POST's key and all that follows it (its headers and body).
    std::string k = key(method, host, target);
    for (auto it = index_.lower_bound(k); it != index_.end() && it->first.starts_with(k);) {
      if (it->first.size() > k.size() && (method == "GET" || it->first[k.size()] != '\n')) {
        ++it;
        continue;
      }
      auto variants = it->second;
      ++it;  // erase() may remove the index entry
      for (Lru::iterator v : variants) erase(v), ++n;
    }
  }
  count(&CacheCounts::purged, n);
  return n;
}

size_t Cache::purge(std::string_view path_prefix) {
  size_t n = 0;
  for (auto it = lru_.begin(); it != lru_.end();) {
    auto next = std::next(it);
    if (it->answer.path.starts_with(path_prefix)) erase(it), ++n;
    it = next;
  }
  count(&CacheCounts::purged, n);
  return n;
}

bool Cache::lead(const std::string &key) {
  if (flights_.count(key)) return false;
  flights_.emplace(key, std::vector<Waiter *>());
  return true;
}

void Cache::wait(const std::string &key, Waiter &waiter) { flights_[key].push_back(&waiter); }

void Cache::stop_waiting(const std::string &key, Waiter &waiter) {
  auto found = flights_.find(key);
  if (found == flights_.end()) return;
  auto &w = found->second;
  w.erase(std::remove(w.begin(), w.end(), &waiter), w.end());
}

void Cache::land(const std::string &key) {
  auto found = flights_.find(key);
  if (found == flights_.end()) return;
  std::vector<Waiter *> waiters = std::move(found->second);
  flights_.erase(found);
  for (Waiter *w : waiters) w->on_flight_over();
}

std::string cached_head(const CachedAnswer &answer, const Cache::Lookup &found,
                        std::string_view cache_status, std::string_view extra) {
  std::string out;
  out.reserve(512);
  int status = found.not_modified ? 304 : answer.status;
  fmt::format_to(std::back_inserter(out), "HTTP/1.1 {} {}\r\n", status,
                 found.not_modified      ? "Not Modified"
                 : answer.reason.empty() ? status_reason(status)
                                         : answer.reason);
  // What a 304 carries (RFC 9110 15.4.5).
  static constexpr std::string_view k304[] = {"cache-control", "content-location", "date",
                                              "etag",          "expires",          "vary"};
  for (const auto &h : answer.headers) {
    if (iequals(h.name, "age")) continue;
    if (found.not_modified && std::none_of(std::begin(k304), std::end(k304),
                                           [&](std::string_view n) { return iequals(n, h.name); }))
      continue;
    fmt::format_to(std::back_inserter(out), "{}: {}\r\n", h.name, h.value);
  }
  if (!found.not_modified && answer.status != 204 && !answer.find("content-length"))
    fmt::format_to(std::back_inserter(out), "Content-Length: {}\r\n", answer.body.size());
  fmt::format_to(std::back_inserter(out), "Age: {}\r\nCache-Status: {}\r\n", found.age,
                 cache_status);
  out += extra;
  out += "\r\n";
  return out;
}

}  // namespace valve
