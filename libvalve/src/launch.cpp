#include "launch.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <fstream>

#include "notify.hpp"
#include "sandbox.hpp"

namespace valve {

namespace {

// Run by every plumber or shiny worker: load the API or app, serve it on the Unix socket valve
// assigned. httpuv's pipe server has no Nagle/delayed-ACK stall on kept-alive connections, unlike
// plumber over TCP. Shiny serves a pipe itself when its port is a path with a "mask" attribute
// (how Shiny Server runs apps).
constexpr const char *kWorkerScript =
    R"R(# Written by valve. Serves one plumber API or Shiny app on the Unix socket valve assigns.
local({
  file <- Sys.getenv("VALVE_FILE")
  socket <- Sys.getenv("VALVE_SOCKET")
  type <- Sys.getenv("VALVE_TYPE", "plumber")
  if (!requireNamespace(type, quietly = TRUE) || !requireNamespace("httpuv", quietly = TRUE)) {
    message("valve: the R package '", type, "' is not installed (library paths: ",
            paste(.libPaths(), collapse = ", "), ")")
    quit(save = "no", status = 78)
  }
  if (type == "shiny") {
    shiny::runApp(file, port = structure(socket, mask = strtoi("077", 8L)),
                  launch.browser = FALSE)
    quit(save = "no", status = 0)
  }
  router <- tryCatch(plumber::pr(file), error = function(e) {
    message("valve: cannot load ", file, ": ", conditionMessage(e))
    quit(save = "no", status = 1)
  })
  # The API's OpenAPI spec, for valve's request checks (kWriteOpenApiSpecR).
)R";
constexpr const char *kWorkerScriptServe = R"R(  httpuv::startPipeServer(socket, strtoi("077", 8L), router)
  repeat httpuv::service(1000)
})
)R";

std::string replace_all(std::string s, std::string_view from, std::string_view to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size()))
    s.replace(at, from.size(), to);
  return s;
}

}  // namespace

const char *const kWriteOpenApiSpecR =
    R"R(  spec_file <- Sys.getenv("VALVE_OPENAPI_FILE")
  if (nzchar(spec_file) && !file.exists(spec_file)) tryCatch({
    spec <- suppressMessages(router$getApiSpec())
    # plumber's routes as it routes, which the spec does not keep: in its order, each path
    # parameter with the type its pattern takes, and whether the endpoint has its own @parser.
    routes <- list()
    add_routes <- function(r, prefix) {
      # Its groups as it routes them: __first__, each filter's @preempt ones, the rest.
      routing <- c("__first__", vapply(r$filters, function(f) f$name, ""), "__no-preempt__")
      groups <- names(r$endpoints)
      groups <- c(intersect(routing, groups), setdiff(groups, routing))
      for (group in r$endpoints[groups]) for (e in group) {
        typed <- e$getTypedParams()
        routes[[length(routes) + 1L]] <<- list(
          path = gsub("<([^:>]+)(:[^>]+)?>", "{\\1}", paste0(prefix, e$path)),
          methods = as.list(toupper(e$verbs)),
          params = lapply(seq_len(NROW(typed)), function(i) list(
            name = typed$name[[i]], type = typed$type[[i]], array = isTRUE(typed$isArray[[i]]))),
          parsers = !is.null(e$parsers))
      }
      for (m in names(r$mounts)) add_routes(r$mounts[[m]], paste0(prefix, sub("/$", "", m)))
    }
    # Without them (a router add_routes cannot read), valve matches the spec's paths in order.
    tryCatch(add_routes(router, ""), error = function(e) routes <<- list())
    spec[["x-valve-routes"]] <- routes
    tmp <- paste0(spec_file, ".", Sys.getpid())
    writeLines(jsonlite::toJSON(spec, auto_unbox = TRUE, null = "null", digits = NA), tmp)
    file.rename(tmp, spec_file)
  }, error = function(e) message("valve: cannot write the API's OpenAPI spec: ", conditionMessage(e)))
)R";

std::string worker_script_path(const std::string &runtime_dir) { return runtime_dir + "/worker.R"; }

bool write_worker_script(const std::string &runtime_dir) {
  std::string path = worker_script_path(runtime_dir);
  std::ofstream script(path);
  script << kWorkerScript << kWriteOpenApiSpecR << kWorkerScriptServe;
  script.close();
  if (!script) return false;
  chmod(path.c_str(), 0644);
  return true;
}

int plan_worker_launch(const LaunchSettings &settings, uint64_t id, WorkerLaunch *out) {
  const Config &cfg = settings.config;
  const std::string &runtime_dir = settings.runtime_dir;
  SpawnSpec &spec = out->spec;
  std::string &socket_path = out->socket_path;
  spec.env = settings.env;
  spec.as = settings.as;
  spec.nice = static_cast<int>(cfg.worker_nice);
  set_variable(spec.env, "VALVE_WORKER_ID", std::to_string(id));
  // The service manager's socket is valve's to speak on: a worker must not report for it, even
  // when --env names it.
  unset_variable(spec.env, kNotifySocketVariable);
  if (cfg.cmd.empty()) {
    out->preloadable = true;
    socket_path = fmt::format("{}/w{}.sock", runtime_dir, id);
    spec.path = settings.rscript;
    spec.argv = {spec.path, "--no-echo", "--no-restore", worker_script_path(runtime_dir)};
    set_variable(spec.env, "VALVE_FILE", settings.api_file);
    set_variable(spec.env, "VALVE_SOCKET", socket_path);
    set_variable(spec.env, "VALVE_TYPE", cfg.type);
    if (!settings.openapi_path.empty())
      set_variable(spec.env, "VALVE_OPENAPI_FILE", settings.openapi_path);
    // The API's own directory, as plumber (or shiny) reads it: its relative paths mean the same
    // while it serves, and a worker of another user is not left in a directory it may not enter.
    spec.cwd = settings.api_dir;
  } else {
    std::string command = cfg.cmd;
    if (command.find("{socket}") != std::string::npos) {
      socket_path = fmt::format("{}/w{}.sock", runtime_dir, id);
      command = replace_all(command, "{socket}", socket_path);
      set_variable(spec.env, "VALVE_SOCKET", socket_path);
    }
    if (command.find("{port}") != std::string::npos) {
      int port = pick_free_port();
      if (port < 0) return port;
      out->port = port;
      command = replace_all(command, "{port}", std::to_string(port));
      set_variable(spec.env, "VALVE_PORT", std::to_string(port));
      if (!socket_path.empty()) socket_path.clear();  // both given: traffic goes to the port
    }
    set_command(spec, command);  // shell syntax: /bin/sh (exec its last program)
  }
  return 0;
}

}  // namespace valve
