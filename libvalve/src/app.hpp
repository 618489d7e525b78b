// One app: a pool of workers with its own settings, reached through the routes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "cache.hpp"
#include "config.hpp"
#include "pool.hpp"
#include "router.hpp"
#include "stats.hpp"
#include "util.hpp"

namespace valve {

struct App {
  App(std::string app_name, Config app_config)
      : name(std::move(app_name)), config(std::move(app_config)) {}
  std::string name;
  Config config;  // the pool reads it by reference: an App never moves
  std::unique_ptr<Pool> pool;
  std::unique_ptr<Cache> cache;         // with cache-size > 0; a reload's new App starts empty
  size_t in_progress = 0;               // requests routed here and not over yet
  bool ready = false;                   // a worker of it was ready once (or it needs none: n-min 0)
  bool pending = false;                 // started by a reload in progress: not routed to yet
  bool retiring = false;                // out of the routes: it ends once its requests have
  bool terminated = false;              // its pool ended all its workers
  std::unique_ptr<Timer> retire_timer;  // cuts its requests off at graceful-timeout
  AppCounts counts;                     // this App's own: a reload's new App starts at 0
};

// The app a request goes to, and the route that chose it.
struct Routing {
  App *app = nullptr;
  const Route *route = nullptr;
};

}  // namespace valve
