// How many workers to launch: a pure function, so it can be tested alone.
#pragma once

#include <cstddef>

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

// The delay before the next launch after `failures` launches in a row failed: 0 for none, then
// 0.5 s doubling, capped at 30 s.
double crash_backoff_seconds(unsigned failures);

}  // namespace valve
