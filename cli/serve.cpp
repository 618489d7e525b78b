// valvectl's default command: one flag per configuration option, then valve_server_run().
#include <valve/valve.h>

#include <sys/resource.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "valvectl.hpp"

extern char **environ;

namespace valvectl {
namespace {

// valve's messages about an option start with "<key> <value>: "; valvectl names where the value
// came from instead: "--port 3000: address already in use", "VALVECTL_PORT=3000: ...".
std::string as_flag_message(const char *message, int err,
                            const std::deque<ServeCommand::Flag> &flags) {
  if (message == nullptr || *message == '\0') return valve_strerror(err);
  std::string_view text = message;
  for (size_t i = 0; const char *key = valve_config_key(i); ++i) {
    std::string_view k = key;
    if (text.size() > k.size() && text.starts_with(k) && text[k.size()] == ' ') {
      for (const auto &flag : flags) {
        if (flag.key == k && flag.source.starts_with(kEnvPrefix))
          return flag.source + "=" + std::string(text.substr(k.size() + 1));
      }
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

std::string flag_names(std::string_view key) {
  std::string names = "--" + std::string(key);
  if (key == "host") names += ",-h";
  if (key == "port") names += ",-p";
  if (key == "n-max") names += ",-n";
  if (key == "workers") names += ",-w";
  if (key == "file") names += ",-f";
  return names;
}

std::string env_name(std::string_view key) {
  std::string name(kEnvPrefix);
  for (char c : key)
    name += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

bool is_switch(std::string_view key) {
  const char *def = valve_config_default(std::string(key).c_str());
  std::string_view initial = def ? def : "";
  return initial == "true" || initial == "false";
}

// A command-line program owns its process: signals, orphans, the service manager.
bool set_by_valvectl(std::string_view key) {
  return std::find(std::begin(kSetByValvectl), std::end(kSetByValvectl), key) !=
         std::end(kSetByValvectl);
}

std::string option_help(std::string_view key) {
  std::string k(key);
  const char *described = valve_config_describe(k.c_str());
  const char *def = valve_config_default(k.c_str());
  std::string help = described ? described : "";
  if (def && *def) {
    std::string suffix = std::string(" (default: ") + def + ")";
    if (help.ends_with(suffix)) help.resize(help.size() - suffix.size());
  }
  return help;
}

ServeCommand::ServeCommand(CLI::App &app) {
  for (size_t i = 0; const char *key = valve_config_key(i); ++i) {
    if (set_by_valvectl(key)) continue;
    Flag &flag = flags_.emplace_back();
    flag.key = key;
    const char *help = valve_config_describe(key);
    // Every value is handed to the library in order: a list option ("env") collects them, any
    // other keeps the last, and each is checked on the way.
    flag.option = app.add_option(flag_names(key), flag.values,
                                 std::string(help ? help : "") + " [$" + env_name(key) + "]")
                      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    // A switch may stand alone: `--preload` turns it on (`--preload=false` turns it off).
    flag.is_switch = is_switch(key);
    if (flag.is_switch) {
      flag.option->expected(0, 1)->type_name("[true|false]");
    } else {
      flag.option->expected(1)->type_name("VALUE");
    }
  }
}

int ServeCommand::run() {
  raise_open_files_limit();
  // A flag wins over its environment variable. Every VALVECTL_* is then removed from valvectl's
  // environment (still one thread here), so workers, which may themselves be valvectl, never
  // inherit their parent's settings.
  for (Flag &flag : flags_) {
    std::string env = env_name(flag.key);
    if (flag.option->count() > 0) {
      flag.source = "--" + flag.key;
    } else if (const char *value = std::getenv(env.c_str()); value != nullptr) {
      flag.values = {value};
      flag.source = env;
    }
  }
  std::vector<std::string> ours;
  for (char **e = environ; e && *e; ++e) {
    std::string_view entry = *e;
    if (entry.starts_with(kEnvPrefix)) ours.emplace_back(entry.substr(0, entry.find('=')));
  }
  for (const std::string &name : ours) unsetenv(name.c_str());

  valve_config_t *raw_cfg = nullptr;
  if (int err = valve_config_new(&raw_cfg); err != 0) {
    print_error(valve_strerror(err));
    return kExitFailure;
  }
  std::unique_ptr<valve_config_t, ConfigFree> cfg(raw_cfg);

  auto setup_failed = [&](int err) {
    print_error(as_flag_message(valve_config_last_error(cfg.get()), err, flags_));
    return is_internal_error(err) ? kExitFailure : kExitUsage;
  };
  for (const Flag &flag : flags_) {
    if (flag.source.empty()) continue;
    for (const std::string &given : flag.values) {
      bool bare = given.empty() && flag.is_switch && flag.source.starts_with("--");
      const char *value = bare ? "true" : given.c_str();
      if (int err = valve_config_set(cfg.get(), flag.key.c_str(), value); err != 0)
        return setup_failed(err);
    }
  }
  for (const char *key : kSetByValvectl) {
    if (int err = valve_config_set(cfg.get(), key, "true"); err != 0) return setup_failed(err);
  }

  valve_server_t *raw_sv = nullptr;
  if (int err = valve_server_new(&raw_sv, cfg.get()); err != 0) return setup_failed(err);
  std::unique_ptr<valve_server_t, ServerFree> server(raw_sv);
  cfg.reset();

  int err = valve_server_run(server.get());
  if (err == 0) return kExitOk;
  if (is_usage_error(err)) {
    print_error(as_flag_message(valve_server_last_error(server.get()), err, flags_));
    return kExitUsage;
  }
  // VALVE_ESTARTUP and the rest: the message may span lines (a worker's last stderr lines).
  const char *message = valve_server_last_error(server.get());
  print_error(message && *message ? message : valve_strerror(err));
  return kExitFailure;
}

}  // namespace valvectl
