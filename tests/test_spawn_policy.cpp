// spawn_policy.hpp: how many workers to launch, the crash-loop backoff, and how many spares to keep.
#include "spawn_policy.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <climits>
#include <string>

using valve::DemandWindow;
using valve::PoolCounts;
using valve::spare_target;
using valve::workers_to_launch;

namespace {

struct Row {
  const char *what;
  PoolCounts counts;
  size_t launch;
};

PoolCounts counts(size_t alive, size_t starting, size_t free_slots, size_t waiting, size_t n_min,
                  size_t n_max, size_t concurrency) {
  PoolCounts c;
  c.alive = alive;
  c.starting = starting;
  c.free_slots = free_slots;
  c.waiting = waiting;
  c.n_min = n_min;
  c.n_max = n_max;
  c.concurrency = concurrency;
  return c;
}

}  // namespace

TEST_CASE("spawn_policy: workers_to_launch") {
  //                                   alive start free wait min max conc
  const Row rows[] = {
      {"empty pool fills up to n_min", counts(0, 0, 0, 0, 2, 5, 1), 2},
      {"one short of n_min", counts(1, 1, 0, 0, 2, 5, 1), 1},
      {"n_min reached, nothing waiting", counts(2, 0, 2, 0, 2, 5, 1), 0},
      {"n_min 0 and idle: none", counts(0, 0, 0, 0, 0, 5, 1), 0},
      {"n_min above n_max: capped", counts(0, 0, 0, 0, 5, 2, 1), 2},
      {"5 waiting, 2 starting, concurrency 1", counts(2, 2, 0, 5, 1, 10, 1), 3},
      {"5 waiting, none starting, concurrency 4: ceil(5/4)", counts(1, 0, 0, 5, 1, 10, 4), 2},
      {"9 waiting, 1 starting, concurrency 4: ceil(5/4)", counts(1, 1, 0, 9, 1, 10, 4), 2},
      {"8 waiting, concurrency 4: exactly 2", counts(0, 0, 0, 8, 0, 10, 4), 2},
      {"free slots absorb the queue", counts(3, 0, 3, 3, 1, 10, 1), 0},
      {"one more than the free slots", counts(3, 0, 3, 4, 1, 10, 1), 1},
      {"free slots and starting workers both count", counts(4, 2, 3, 6, 1, 10, 1), 1},
      {"queue of 100 capped at n_max", counts(1, 0, 0, 100, 1, 3, 1), 2},
      {"at n_max: none", counts(3, 1, 0, 100, 1, 3, 1), 0},
      {"above n_max (n_max lowered): none", counts(5, 0, 0, 100, 1, 3, 1), 0},
      {"n_min and queue: the larger need wins", counts(0, 0, 0, 1, 3, 10, 1), 3},
      {"queue beyond n_min", counts(0, 0, 0, 5, 2, 10, 1), 5},
      {"concurrency 0 counts as 1", counts(0, 0, 0, 3, 0, 10, 0), 3},
  };
  for (const Row &r : rows) {
    INFO(std::string(r.what));
    CHECK(workers_to_launch(r.counts) == r.launch);
  }
}

TEST_CASE("spawn_policy: stranded requests (a retry avoiding the only free worker) need a worker") {
  PoolCounts c = counts(1, 0, 1, 1, 1, 3, 1);  // one free slot, one request waiting ...
  CHECK(workers_to_launch(c) == 0);           // ... which takes it
  c.stranded = 1;                             // unless it may not
  CHECK(workers_to_launch(c) == 1);
  c.starting = 1;  // a worker is on its way for it already
  CHECK(workers_to_launch(c) == 0);
  c = counts(2, 0, 1, 3, 1, 5, 1);  // one free slot, three waiting, one of them stranded:
  c.stranded = 1;                   // the free slot takes one of the others
  CHECK(workers_to_launch(c) == 2);
  c.stranded = 9;  // never more than are waiting
  CHECK(workers_to_launch(c) == 3);
  c = counts(1, 0, 1, 1, 1, 1, 1);  // at n-max: none, whatever waits
  c.stranded = 1;
  CHECK(workers_to_launch(c) == 0);
}

TEST_CASE("spawn_policy: the result never exceeds n_max - alive") {
  for (size_t alive = 0; alive <= 6; ++alive)
    for (size_t starting = 0; starting <= alive; ++starting)
      for (size_t waiting = 0; waiting <= 20; waiting += 3)
        for (size_t conc = 1; conc <= 4; ++conc)
          for (size_t n_min = 0; n_min <= 6; n_min += 2) {
            PoolCounts c = counts(alive, starting, 0, waiting, n_min, 5, conc);
            size_t n = workers_to_launch(c);
            INFO("alive " << alive << " starting " << starting << " waiting " << waiting << " conc "
                          << conc << " n_min " << n_min);
            CHECK(alive + n <= std::max<size_t>(alive, 5));
            // Enough capacity comes for the queue unless n_max stops it.
            if (alive + n < 5) CHECK((starting + n) * conc >= waiting);
          }
}

TEST_CASE("spawn_policy: crash_backoff_seconds doubles from 0.5 s up to 30 s") {
  CHECK(valve::crash_backoff_seconds(0) == 0.0);
  CHECK(valve::crash_backoff_seconds(1) == 0.5);
  CHECK(valve::crash_backoff_seconds(2) == 1.0);
  CHECK(valve::crash_backoff_seconds(3) == 2.0);
  CHECK(valve::crash_backoff_seconds(4) == 4.0);
  CHECK(valve::crash_backoff_seconds(5) == 8.0);
  CHECK(valve::crash_backoff_seconds(6) == 16.0);
  CHECK(valve::crash_backoff_seconds(7) == 30.0);
  CHECK(valve::crash_backoff_seconds(8) == 30.0);
  CHECK(valve::crash_backoff_seconds(100) == 30.0);
  CHECK(valve::crash_backoff_seconds(UINT_MAX) == 30.0);
  for (unsigned f = 1; f < 64; ++f)
    CHECK(valve::crash_backoff_seconds(f) >= valve::crash_backoff_seconds(f - 1));
}

TEST_CASE("spawn_policy: DemandWindow keeps the peak of the last 5 minutes, unknown before") {
  const uint64_t t0 = 1'000'000;  // 10 s buckets: [t0, t0 + 10 s) is one
  DemandWindow w(t0);
  w.observe(t0 + 1'000, 4);
  w.observe(t0 + 12'000, 9);
  w.observe(t0 + 25'000, 2);
  w.observe(t0 + 35'000, 7);
  CHECK_FALSE(w.peak(t0 + 20'000).has_value());  // a whole window has not passed yet
  CHECK(w.peak(t0 + 300'000) == 9u);  // the first bucket is 5 minutes old: gone
  CHECK(w.peak(t0 + 310'000) == 7u);
  CHECK(w.peak(t0 + 330'000) == 0u);
  // The bucket of t0 + 35 s is used again 5 minutes later: it starts from nothing.
  w.observe(t0 + 331'000, 3);
  CHECK(w.peak(t0 + 331'000) == 3u);
}

TEST_CASE("spawn_policy: spare_target") {
  const size_t plenty = 1000;
  // Nothing seen yet: every worker n-max still allows, bounded by what memory affords.
  CHECK(spare_target(10, 1, std::nullopt, plenty) == 9);
  CHECK(spare_target(10, 1, std::nullopt, 4) == 4);
  // The recent peak plus one, over the workers alive.
  CHECK(spare_target(10, 2, 5, plenty) == 4);
  CHECK(spare_target(10, 6, 5, plenty) == 1);  // at least one while there is room
  CHECK(spare_target(10, 1, 0, plenty) == 1);
  CHECK(spare_target(10, 8, 20, plenty) == 2);  // never past n-max
  CHECK(spare_target(10, 10, 20, plenty) == 0);
  CHECK(spare_target(3, 5, std::nullopt, plenty) == 0);  // more alive than n-max (a reload)
  CHECK(spare_target(10, 1, 5, 0) == 0);                 // no memory to spare
}
