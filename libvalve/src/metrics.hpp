// valve's metrics in the Prometheus text format (the admin interface's /metrics): the counters of
// stats.hpp, the request histograms, and each app's pool.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "app.hpp"
#include "stats.hpp"

namespace valve {

// apps: every app, those leaving and arriving included.
std::string metrics_text(const Stats &stats, const std::vector<std::unique_ptr<App>> &apps,
                         size_t requests_in_progress, size_t connections);

}  // namespace valve
