// One app: a pool of workers with its own settings, reached through the routes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "cache.hpp"
#include <fmt/format.h>

#include "batcher.hpp"
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
  // Micro-batching, one batcher per batch route (after pool: they end first).
  std::map<std::string, std::unique_ptr<Batcher>> batchers;
  size_t in_progress = 0;               // requests routed here and not over yet
  bool ready = false;                   // a worker of it was ready once (or it needs none: n-min 0)
  bool pending = false;                 // started by a reload in progress: not routed to yet
  bool retiring = false;                // out of the routes: it ends once its requests have
  bool terminated = false;              // its pool ended all its workers
  std::unique_ptr<Timer> retire_timer;  // cuts its requests off at graceful-timeout
  AppCounts counts;                     // this App's own: a reload's new App starts at 0

  Batcher &batcher(const BatchSpec &spec) {
    auto &b = batchers[fmt::format("{} {} {}", spec.path, spec.max, spec.retry_singly)];
    if (!b) b = std::make_unique<Batcher>(pool->context(), *pool, config, spec);
    return *b;
  }
};

// The app a request goes to, and the route that chose it.
struct Routing {
  App *app = nullptr;
  const Route *route = nullptr;
};

}  // namespace valve
