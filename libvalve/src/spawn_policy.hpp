// How many workers to launch: a pure function, so it can be tested alone.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace valve {

struct PoolCounts {
  size_t alive = 0;       // starting + ready workers (not stopping)
  size_t starting = 0;    // launched, not yet ready
  size_t free_slots = 0;  // ready workers' unused request slots
  size_t waiting = 0;     // requests in the queue
  size_t stranded = 0;    // ... of which no free slot can take (a retry that avoids the worker
                          // with the only free slots): only a starting or new worker can
  size_t n_min = 1;
  size_t n_max = 1;
  size_t concurrency = 1;
};

// Enough workers for the waiting requests, counting the free slots and the workers already
// starting (not one launch per request), and never fewer than n_min alive, never more than n_max.
size_t workers_to_launch(const PoolCounts &c);

// Recent demand on a pool: the peak of requests in flight or waiting, per 10 s over the last
// 5 minutes. --preload-spares auto follows it.
class DemandWindow {
 public:
  static constexpr uint64_t kBucketMs = 10'000;
  static constexpr size_t kBuckets = 30;

  explicit DemandWindow(uint64_t now_ms) : began_ms_(now_ms) {}
  void observe(uint64_t now_ms, size_t demand);
  // The peak over the window; nullopt until a whole window has passed since it began (a pool
  // just started or reloaded has seen too little to judge by).
  std::optional<size_t> peak(uint64_t now_ms) const;

 private:
  uint64_t began_ms_;
  std::array<uint64_t, kBuckets> epoch_{};  // which 10 s each bucket last counted (+1; 0: never)
  std::array<size_t, kBuckets> peak_{};
};

// How many spares a preload template keeps, for --preload-spares auto: enough for the recent peak
// plus one over the workers alive (all that n-max allows while the peak is unknown), at least one
// while n-max leaves room, and no more than n-max leaves room for or memory affords.
size_t spare_target(size_t n_max, size_t alive, std::optional<size_t> recent_peak,
                    size_t affordable);

// The delay before the next launch after `failures` launches in a row failed: 0 for none, then
// 0.5 s doubling, capped at 30 s.
double crash_backoff_seconds(unsigned failures);

}  // namespace valve
