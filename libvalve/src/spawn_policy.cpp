#include "spawn_policy.hpp"

#include <algorithm>
#include <cmath>

namespace valve {

size_t workers_to_launch(const PoolCounts &c) {
  if (c.alive >= c.n_max) return 0;
  size_t room = c.n_max - c.alive;
  size_t concurrency = std::max<size_t>(1, c.concurrency);
  // The free slots take the requests they can; the starting workers' slots take the rest.
  size_t stranded = std::min(c.stranded, c.waiting);
  size_t others = c.waiting - stranded;
  size_t left = (others > c.free_slots ? others - c.free_slots : 0) + stranded;
  size_t starting_slots = c.starting * concurrency;
  size_t for_queue = 0;
  if (left > starting_slots) for_queue = (left - starting_slots + concurrency - 1) / concurrency;
  size_t for_min = c.n_min > c.alive ? c.n_min - c.alive : 0;
  return std::min(room, std::max(for_queue, for_min));
}

void DemandWindow::observe(uint64_t now_ms, size_t demand) {
  uint64_t epoch = now_ms / kBucketMs + 1;
  size_t i = epoch % kBuckets;
  if (epoch_[i] != epoch) {
    epoch_[i] = epoch;
    peak_[i] = 0;
  }
  peak_[i] = std::max(peak_[i], demand);
}

std::optional<size_t> DemandWindow::peak(uint64_t now_ms) const {
  if (now_ms < began_ms_ + kBuckets * kBucketMs) return std::nullopt;
  uint64_t epoch = now_ms / kBucketMs + 1;
  size_t most = 0;
  for (size_t i = 0; i < kBuckets; ++i) {
    if (epoch_[i] + kBuckets > epoch) most = std::max(most, peak_[i]);
  }
  return most;
}

size_t spare_target(size_t n_max, size_t alive, std::optional<size_t> recent_peak,
                    size_t affordable) {
  if (alive >= n_max) return 0;
  size_t room = n_max - alive;
  size_t wanted = room;
  if (recent_peak) wanted = *recent_peak + 1 > alive ? *recent_peak + 1 - alive : 1;
  return std::min({room, std::max<size_t>(wanted, 1), affordable});
}

double crash_backoff_seconds(unsigned failures) {
  if (failures == 0) return 0;
  return std::min(30.0, 0.5 * std::pow(2.0, static_cast<double>(std::min(failures, 16u) - 1)));
}

}  // namespace valve
