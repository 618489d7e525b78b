// valvectl's default command: one flag per configuration option, then valve_server_run().
#include <valve/valve.h>

#include <sys/resource.h>

#include <cerrno>
#include <memory>
#include <string>
#include <string_view>

#include "valvectl.hpp"

namespace valvectl {
namespace {

// valve-rs's short flags, kept for compatibility.
std::string flag_names(std::string_view key) {
  std::string names = "--" + std::string(key);
  if (key == "host") names += ",-h";
  if (key == "port") names += ",-p";
  if (key == "n-max") names += ",-n";
  if (key == "workers") names += ",-w";
  if (key == "file") names += ",-f";
  return names;
}

// Options valvectl sets itself: a command-line program owns its process.
bool set_by_valvectl(std::string_view key) {
  return key == "handle-signals" || key == "reap-orphans";
}

// valve's messages about an option start with "<key> <value>: "; valvectl names the flag instead:
// "--port 3000: address already in use".
std::string as_flag_message(const char *message, int err) {
  if (message == nullptr || *message == '\0') return valve_strerror(err);
  std::string_view text = message;
  for (size_t i = 0; const char *key = valve_config_key(i); ++i) {
    std::string_view k = key;
    if (text.size() > k.size() && text.starts_with(k) && text[k.size()] == ' ') {
      return "--" + std::string(text);
    }
  }
  return std::string(text);
}

// Failures of a run that the command line caused (a bad value, an address in use).
bool is_usage_error(int err) {
  // libuv passes errno values through negated on Unix.
  return err == VALVE_EINVALID || err == VALVE_ECONFIG || err == -EADDRINUSE ||
         err == -EADDRNOTAVAIL || err == -EACCES;
}

// Failures of valve_config_set() and valve_server_new() are the command line's, except these.
bool is_internal_error(int err) { return err == VALVE_ENOMEM || err == VALVE_EINTERNAL; }

struct ConfigFree {
  void operator()(valve_config_t *cfg) const { valve_config_free(cfg); }
};
struct ServerFree {
  void operator()(valve_server_t *sv) const { valve_server_free(sv); }
};

// Each client connection takes a descriptor: raise the soft limit to the hard one (as Go's runtime
// and nginx's worker_rlimit_nofile do), so --max-connections, not a default of 1024, is the limit.
void raise_open_files_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

}  // namespace

ServeCommand::ServeCommand(CLI::App &app) {
  // An option whose default is true or false is a switch: `--preload` alone turns it on
  // (`--preload=false` turns it off).
  valve_config_t *defaults = nullptr;
  valve_config_new(&defaults);
  for (size_t i = 0; const char *key = valve_config_key(i); ++i) {
    if (set_by_valvectl(key)) continue;
    Flag &flag = flags_.emplace_back();
    flag.key = key;
    const char *help = valve_config_describe(key);
    const char *value = defaults ? valve_config_get(defaults, key) : nullptr;
    std::string_view def = value ? value : "";
    if (def == "true" || def == "false") {
      flag.option = app.add_flag(flag_names(key) + "{true}", flag.value, help ? help : "");
    } else {
      flag.option =
          app.add_option(flag_names(key), flag.value, help ? help : "")->type_name("VALUE");
    }
  }
  valve_config_free(defaults);
}

int ServeCommand::run() const {
  raise_open_files_limit();
  valve_config_t *raw_cfg = nullptr;
  if (int err = valve_config_new(&raw_cfg); err != 0) {
    print_error(valve_strerror(err));
    return kExitFailure;
  }
  std::unique_ptr<valve_config_t, ConfigFree> cfg(raw_cfg);

  auto setup_failed = [&](int err) {
    print_error(as_flag_message(valve_config_last_error(cfg.get()), err));
    return is_internal_error(err) ? kExitFailure : kExitUsage;
  };
  for (const Flag &flag : flags_) {
    if (flag.option->count() == 0) continue;
    if (int err = valve_config_set(cfg.get(), flag.key.c_str(), flag.value.c_str()); err != 0) {
      return setup_failed(err);
    }
  }
  for (const char *key : {"handle-signals", "reap-orphans"}) {
    if (int err = valve_config_set(cfg.get(), key, "true"); err != 0) return setup_failed(err);
  }

  valve_server_t *raw_sv = nullptr;
  if (int err = valve_server_new(&raw_sv, cfg.get()); err != 0) return setup_failed(err);
  std::unique_ptr<valve_server_t, ServerFree> server(raw_sv);
  cfg.reset();

  int err = valve_server_run(server.get());
  if (err == 0) return kExitOk;
  if (is_usage_error(err)) {
    print_error(as_flag_message(valve_server_last_error(server.get()), err));
    return kExitUsage;
  }
  // VALVE_ESTARTUP and the rest: the message may span lines (a worker's last stderr lines).
  const char *message = valve_server_last_error(server.get());
  print_error(message && *message ? message : valve_strerror(err));
  return kExitFailure;
}

}  // namespace valvectl
