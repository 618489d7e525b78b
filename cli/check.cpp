// valvectl check FILE: reads a config file as valvectl would serve it, and lists every mistake.
#include <valve/valve.h>

#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "valvectl.hpp"

namespace valvectl {

CheckCommand::CheckCommand(CLI::App &app) {
  command_ = app.add_subcommand(
      "check", "read a config file and list each mistake with its line (exit 2 if any)");
  command_->add_option("file", file_, "the TOML config file, as given to --config")->required();
}

bool CheckCommand::chosen() const { return command_->parsed(); }

int CheckCommand::run() const {
  valve_config_t *cfg = nullptr;
  if (int err = valve_config_new(&cfg); err != 0) {
    print_error(valve_strerror(err));
    return kExitFailure;
  }
  std::unique_ptr<valve_config_t, void (*)(valve_config_t *)> owner(cfg, valve_config_free);
  valve_server_t *server = nullptr;
  int err = valve_config_set(cfg, "config", file_.c_str());
  if (err == 0) err = valve_server_new(&server, cfg);
  if (err != 0) {
    // One mistake per line; the library's first line carries no prefix of ours.
    std::istringstream lines(valve_config_last_error(cfg));
    for (std::string line; std::getline(lines, line);) std::cerr << line << '\n';
    return err == VALVE_ENOMEM || err == VALVE_EINTERNAL ? kExitFailure : kExitUsage;
  }
  valve_server_free(server);
  std::cout << file_ << ": ok\n";
  return kExitOk;
}

}  // namespace valvectl
