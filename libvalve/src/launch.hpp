// How a worker process is launched: the R script plumber and shiny workers run, and the command
// line, environment and address of each kind of worker (plumber, shiny, --cmd). With --preload a
// plumber or shiny worker is forked from a template instead (preloader.hpp), from the same spec.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config.hpp"
#include "process.hpp"

namespace valve {

// R code that both the worker script and the preload template run once `router` is loaded: the
// API's OpenAPI spec, for valve's request checks, written to VALVE_OPENAPI_FILE once per
// generation (the first worker writes it, renamed into place whole), never in the way of serving.
extern const char *const kWriteOpenApiSpecR;

// The R script every plumber or shiny worker runs, in the runtime directory.
std::string worker_script_path(const std::string &runtime_dir);
// Writes it (mode 0644): false when it cannot.
bool write_worker_script(const std::string &runtime_dir);

// How to start one worker, and where it will serve.
struct WorkerLaunch {
  SpawnSpec spec;
  std::string socket_path;  // a Unix socket, or empty: it serves on 127.0.0.1:port
  int port = 0;
  bool preloadable = false;  // an R worker, which a preload template can fork
};

// What every worker of a pool is launched with.
struct LaunchSettings {
  const Config &config;                  // the app's
  const std::string &runtime_dir;        // worker sockets and the worker script
  const std::string &rscript;            // resolved (plumber and shiny)
  const std::string &api_file;           // absolute
  const std::string &api_dir;            // where workers start
  const std::vector<std::string> &env;   // the whole environment
  const std::optional<Credentials> &as;  // who workers run as (unset: valve's user)
  // Where a plumber worker writes the API's OpenAPI spec (VALVE_OPENAPI_FILE; empty: it does not).
  std::string openapi_path = {};
};

// The launch of worker `id`: 0, or a negative errno (no free port for {port}).
int plan_worker_launch(const LaunchSettings &settings, uint64_t id, WorkerLaunch *out);

}  // namespace valve
