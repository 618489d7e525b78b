// The pending queue of a pool, fair between clients: requests wait by client key and priority
// class, and are taken round-robin across the keys of the highest class that has any (strict
// priority between classes). Per key: how many requests may wait, and how many may be on workers
// at once. Every operation is O(1) but find(), which walks past the entries its caller refuses.
#pragma once

#include <array>
#include <cstdint>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace valve {

struct Head;

// Priority classes, highest first: a class is served only while no higher one has a request that
// can be taken.
enum class Priority : uint8_t { interactive = 0, normal = 1, batch = 2 };
inline constexpr size_t kPriorities = 3;
const char *priority_name(Priority p);
// "interactive", "normal" or "batch" (case-insensitive); false otherwise.
bool parse_priority(std::string_view text, Priority *out);

// Where a request's client key comes from (the option client-key): "ip" (the peer's address),
// "header:NAME" (the header's value, hashed; the peer's address when it is absent) or
// "forwarded:N" (the Nth address from the right of X-Forwarded-For, valve being behind N trusted
// proxies; the leftmost when there are fewer; the peer's address when there is none).
bool valid_client_key_spec(std::string_view spec);
std::string client_key(std::string_view spec, const Head &request, std::string_view peer_ip);
// The class of a request: the route's, or the priority header's value, which any client may use
// to lower its class but only a trusted peer (a front proxy) to raise it. header: "" for none.
Priority request_priority(Priority route, std::string_view header, const Head &request,
                          bool trusted);

class FairQueue {
 public:
  struct Key;

  // What a queued or dispatched request carries for the queue (Pool::Request derives from it).
  class Entry {
   public:
    bool queued() const { return queued_; }

   protected:
    ~Entry() = default;

   private:
    friend class FairQueue;
    Entry *prev_ = nullptr, *next_ = nullptr;  // in its key's list for its class
    Key *key_ = nullptr;                       // while queued or in flight
    Priority priority_ = Priority::normal;
    bool queued_ = false;
    bool in_flight_ = false;
  };

  struct Key {
    std::string name;
    size_t queued = 0, in_flight = 0;
    std::array<Entry *, kPriorities> head{}, tail{};            // its waiting requests, per class
    std::array<std::list<Key *>::iterator, kPriorities> pos{};  // in each class's ring
    std::array<bool, kPriorities> in_ring{};
    bool eligible = true;  // under its in-flight limit
  };

  // 0: no limit.
  FairQueue(size_t max_in_flight, size_t max_queued)
      : max_in_flight_(max_in_flight), max_queued_(max_queued) {}
  FairQueue(const FairQueue &) = delete;
  FairQueue &operator=(const FairQueue &) = delete;

  // Whether the key may have one more request on a worker now / one more waiting.
  bool may_dispatch(const std::string &key) const;
  bool may_queue(const std::string &key) const;
  // Queues e under key in its class: at the back of its key's requests, or at the front (a retry,
  // whose key then goes first in its class).
  void push(Entry &e, const std::string &key, Priority priority, bool front = false);
  // A request that goes to a worker without waiting: counted in flight for its key.
  void start(Entry &e, const std::string &key, Priority priority);
  // The first entry, in fair order, that ok(entry) accepts; null when none. Only entries whose
  // keys are under their in-flight limit are offered.
  template <typename Ok>
  Entry *find(Ok &&ok) {
    for (size_t c = 0; c < kPriorities; ++c) {
      for (Key *k : rings_[c]) {
        for (Entry *e = k->head[c]; e; e = e->next_) {
          if (ok(*e)) return e;
        }
      }
    }
    return nullptr;
  }
  // Takes a queued entry out for a worker: its key goes to the back of its class and counts one
  // more in flight.
  void take(Entry &e);
  // Takes a queued entry out (cancelled, refused).
  void remove(Entry &e);
  // The request's worker is done with it (or it never had one): its key counts one fewer in
  // flight. True when that lets the key's waiting requests be taken again.
  bool done(Entry &e);
  // Every queued entry, takeable ones (keys under their limit) or all.
  std::vector<Entry *> entries(bool takeable_only) const;

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t takeable() const { return takeable_; }  // queued under keys below their in-flight limit
  size_t keys() const { return keys_.size(); }   // with requests waiting or in flight
  size_t waiting_keys() const { return waiting_keys_; }
  size_t waiting(Priority p) const { return by_priority_[static_cast<size_t>(p)]; }
  // For the status: counts, and the few keys with the most requests waiting.
  nlohmann::ordered_json json(size_t top) const;

 private:
  Key &key_for(const std::string &name);
  void unlink(Entry &e);
  void set_eligible(Key &k, bool eligible);
  void ring_add(Key &k, size_t c, bool front);
  void ring_remove(Key &k, size_t c);
  void maybe_erase(Key &k);

  size_t max_in_flight_, max_queued_;
  std::unordered_map<std::string, Key> keys_;
  std::array<std::list<Key *>, kPriorities> rings_;  // keys with takeable requests, per class
  std::array<size_t, kPriorities> by_priority_{};
  size_t size_ = 0, takeable_ = 0, waiting_keys_ = 0;
};

}  // namespace valve
