// The status JSON (the admin interface's /status, valve_supervisor_status_json): the server's state
// and totals, every app with its workers and reload, the routes and the options.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "app.hpp"
#include "config.hpp"
#include "json.hpp"
#include "router.hpp"
#include "stats.hpp"

namespace valve {

// What the status shows, gathered by the server on the loop thread.
struct StatusView {
  const char *state = "";  // starting, running, stopping, stopped
  std::string address;     // the public listener's
  std::string admin;       // the admin interface's ("" when off)
  const Stats &stats;
  const std::vector<std::unique_ptr<App>> &apps;  // those leaving and arriving included
  const std::vector<Route> &routes;
  const App &main;          // the first app serving: its generation and preloader are the server's
  Json reload;              // the last reload of the whole server
  size_t requests_in_progress = 0;
  size_t connections = 0;
  const Config &config;  // the server's options
  Json jobs;             // the job table's (job_service.hpp)
};

std::string status_json(const StatusView &view);

}  // namespace valve
