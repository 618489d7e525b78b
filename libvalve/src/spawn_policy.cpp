#include "spawn_policy.hpp"

#include <algorithm>
#include <cmath>

namespace valve {

size_t workers_to_launch(const PoolCounts &c) {
  if (c.alive >= c.n_max) return 0;
  size_t room = c.n_max - c.alive;
  size_t concurrency = std::max<size_t>(1, c.concurrency);
  size_t coming = c.free_slots + c.starting * concurrency;
  size_t for_queue = 0;
  if (c.waiting > coming) for_queue = (c.waiting - coming + concurrency - 1) / concurrency;
  size_t for_min = c.n_min > c.alive ? c.n_min - c.alive : 0;
  return std::min(room, std::max(for_queue, for_min));
}

double crash_backoff_seconds(unsigned failures) {
  if (failures == 0) return 0;
  return std::min(30.0, 0.5 * std::pow(2.0, static_cast<double>(std::min(failures, 16u) - 1)));
}

}  // namespace valve
