#include "fair_queue.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cassert>

#include "config.hpp"
#include "http.hpp"
#include "json.hpp"
#include "util.hpp"

namespace valve {

namespace {

constexpr std::string_view kHeaderTag = "header:";
constexpr std::string_view kForwardedTag = "forwarded:";
constexpr size_t kMaxHops = 32;       // forwarded:N, at most
constexpr size_t kMaxKeyLength = 64;  // a longer key (a forged address) is hashed

// FNV-1a, 64 bits: a header's value (an API key) never shows in the status or the logs, and a key
// of any length takes 16 bytes.
std::string hashed(std::string_view tag, std::string_view text) {
  return fmt::format("{}{:016x}", tag, fnv1a64(text));
}

std::optional<size_t> forwarded_hops(std::string_view spec) {
  if (!spec.starts_with(kForwardedTag)) return std::nullopt;
  auto n = parse_uint(spec.substr(kForwardedTag.size()));
  if (!n || *n < 1 || *n > kMaxHops) return std::nullopt;
  return static_cast<size_t>(*n);
}

}  // namespace

const char *priority_name(Priority p) {
  switch (p) {
    case Priority::interactive:
      return "interactive";
    case Priority::normal:
      return "normal";
    case Priority::batch:
      return "batch";
  }
  return "normal";
}

bool parse_priority(std::string_view text, Priority *out) {
  for (Priority p : {Priority::interactive, Priority::normal, Priority::batch}) {
    if (iequals(text, priority_name(p))) {
      *out = p;
      return true;
    }
  }
  return false;
}

bool valid_client_key_spec(std::string_view spec) {
  return spec == "ip" || (spec.starts_with(kHeaderTag) && spec.size() > kHeaderTag.size()) ||
         forwarded_hops(spec).has_value();
}

std::string client_key(std::string_view spec, const Head &request, std::string_view peer_ip) {
  if (spec.starts_with(kHeaderTag)) {
    const std::string *value = request.find(spec.substr(kHeaderTag.size()));
    if (value && !value->empty()) return hashed(kHeaderTag, *value);
  } else if (auto hops = forwarded_hops(spec)) {
    // The last `hops` items of every X-Forwarded-For header, in order, kept in a ring.
    std::array<std::string_view, kMaxHops> last{};
    size_t seen = 0;
    request.find_token("x-forwarded-for", [&](std::string_view item) {
      last[seen++ % *hops] = item;
      return false;
    });
    if (seen > 0) {
      std::string_view item = last[(seen >= *hops ? seen - *hops : 0) % *hops];
      if (item.size() <= kMaxKeyLength) return std::string(item);
      return hashed("forwarded:", item);
    }
  }
  return std::string(peer_ip);
}

Priority request_priority(Priority route, std::string_view header, const Head &request,
                          bool trusted) {
  if (header.empty()) return route;
  const std::string *value = request.find(header);
  Priority asked;
  if (!value || !parse_priority(trim(*value), &asked)) return route;
  return asked > route || trusted ? asked : route;
}

FairQueue::Key &FairQueue::key_for(const std::string &name) {
  auto [it, made] = keys_.try_emplace(name);
  if (made) it->second.name = name;
  return it->second;
}

bool FairQueue::may_dispatch(const std::string &key) const {
  if (max_in_flight_ == 0) return true;
  auto it = keys_.find(key);
  return it == keys_.end() || it->second.in_flight < max_in_flight_;
}

bool FairQueue::may_queue(const std::string &key) const {
  if (max_queued_ == 0) return true;
  auto it = keys_.find(key);
  return it == keys_.end() || it->second.queued < max_queued_;
}

void FairQueue::ring_add(Key &k, size_t c, bool front) {
  auto &ring = rings_[c];
  if (k.in_ring[c]) {
    if (front) ring.splice(ring.begin(), ring, k.pos[c]);
    return;
  }
  k.pos[c] = ring.insert(front ? ring.begin() : ring.end(), &k);
  k.in_ring[c] = true;
}

void FairQueue::ring_remove(Key &k, size_t c) {
  if (!k.in_ring[c]) return;
  rings_[c].erase(k.pos[c]);
  k.in_ring[c] = false;
}

void FairQueue::set_eligible(Key &k, bool eligible) {
  if (k.eligible == eligible) return;
  k.eligible = eligible;
  if (eligible) {
    takeable_ += k.queued;
    for (size_t c = 0; c < kPriorities; ++c) {
      if (k.head[c]) ring_add(k, c, false);
    }
  } else {
    takeable_ -= k.queued;
    for (size_t c = 0; c < kPriorities; ++c) ring_remove(k, c);
  }
}

void FairQueue::push(Entry &e, const std::string &key, Priority priority, bool front) {
  assert(!e.queued_ && !e.in_flight_);
  Key &k = key_for(key);
  auto c = static_cast<size_t>(priority);
  e.key_ = &k;
  e.priority_ = priority;
  e.queued_ = true;
  if (front) {
    e.prev_ = nullptr;
    e.next_ = k.head[c];
    (k.head[c] ? k.head[c]->prev_ : k.tail[c]) = &e;
    k.head[c] = &e;
  } else {
    e.next_ = nullptr;
    e.prev_ = k.tail[c];
    (k.tail[c] ? k.tail[c]->next_ : k.head[c]) = &e;
    k.tail[c] = &e;
  }
  if (k.queued++ == 0) ++waiting_keys_;
  ++size_;
  ++by_priority_[c];
  if (k.eligible) {
    ++takeable_;
    ring_add(k, c, front);
  }
}

void FairQueue::start(Entry &e, const std::string &key, Priority priority) {
  assert(!e.queued_ && !e.in_flight_);
  Key &k = key_for(key);
  e.key_ = &k;
  e.priority_ = priority;
  e.in_flight_ = true;
  ++k.in_flight;
  if (max_in_flight_ && k.in_flight >= max_in_flight_) set_eligible(k, false);
}

void FairQueue::unlink(Entry &e) {
  Key &k = *e.key_;
  auto c = static_cast<size_t>(e.priority_);
  (e.prev_ ? e.prev_->next_ : k.head[c]) = e.next_;
  (e.next_ ? e.next_->prev_ : k.tail[c]) = e.prev_;
  e.prev_ = e.next_ = nullptr;
  e.queued_ = false;
  if (--k.queued == 0) --waiting_keys_;
  --size_;
  --by_priority_[c];
  if (k.eligible) --takeable_;
  if (!k.head[c]) ring_remove(k, c);
}

void FairQueue::take(Entry &e) {
  assert(e.queued_ && e.key_->eligible);
  Key &k = *e.key_;
  auto c = static_cast<size_t>(e.priority_);
  unlink(e);
  // Round-robin: the key that was just served waits behind the others of its class.
  if (k.in_ring[c]) rings_[c].splice(rings_[c].end(), rings_[c], k.pos[c]);
  e.in_flight_ = true;
  ++k.in_flight;
  if (max_in_flight_ && k.in_flight >= max_in_flight_) set_eligible(k, false);
}

void FairQueue::remove(Entry &e) {
  if (!e.queued_) return;
  Key &k = *e.key_;
  unlink(e);
  e.key_ = nullptr;
  maybe_erase(k);
}

bool FairQueue::done(Entry &e) {
  if (!e.in_flight_) return false;
  Key &k = *e.key_;
  e.in_flight_ = false;
  e.key_ = nullptr;
  --k.in_flight;
  bool freed = !k.eligible && (max_in_flight_ == 0 || k.in_flight < max_in_flight_);
  if (freed) set_eligible(k, true);
  bool waiting = freed && k.queued > 0;
  maybe_erase(k);
  return waiting;
}

void FairQueue::maybe_erase(Key &k) {
  if (k.queued > 0 || k.in_flight > 0) return;
  for (size_t c = 0; c < kPriorities; ++c) ring_remove(k, c);
  keys_.erase(k.name);  // k is gone
}

std::vector<FairQueue::Entry *> FairQueue::entries(bool takeable_only) const {
  std::vector<Entry *> out;
  out.reserve(takeable_only ? takeable_ : size_);
  for (const auto &[name, k] : keys_) {
    if (takeable_only && !k.eligible) continue;
    for (size_t c = 0; c < kPriorities; ++c) {
      for (Entry *e = k.head[c]; e; e = e->next_) out.push_back(e);
    }
  }
  return out;
}

Json FairQueue::json(size_t top) const {
  Json doc = Json::object();
  doc["keys"] = keys_.size();
  doc["waiting_keys"] = waiting_keys_;
  Json by = Json::object();
  for (size_t c = 0; c < kPriorities; ++c)
    by[priority_name(static_cast<Priority>(c))] = by_priority_[c];
  doc["waiting_by_priority"] = std::move(by);
  // The few keys with the most requests waiting: a partial sort over the keys, which are at most
  // the queue's and the workers' requests.
  std::vector<const Key *> busiest;
  for (const auto &[name, k] : keys_) {
    if (k.queued > 0) busiest.push_back(&k);
  }
  size_t n = std::min(top, busiest.size());
  std::partial_sort(busiest.begin(), busiest.begin() + static_cast<ptrdiff_t>(n), busiest.end(),
                    [](const Key *a, const Key *b) {
                      return a->queued != b->queued ? a->queued > b->queued : a->name < b->name;
                    });
  Json list = Json::array();
  for (size_t i = 0; i < n; ++i) {
    Json &item = list.emplace_back(Json::object());
    item["key"] = busiest[i]->name;
    item["queued"] = busiest[i]->queued;
    item["in_flight"] = busiest[i]->in_flight;
  }
  doc["top_waiting"] = std::move(list);
  return doc;
}

}  // namespace valve
