// What valvectl's commands share. Each command lives in its own file and uses only valve.h.
#pragma once

#include <CLI/CLI.hpp>
#include <deque>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace valvectl {

// Exit statuses: 0 after a clean stop, 1 when serving failed, 2 for a bad command line.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Prints "valvectl: <message>" to stderr.
void print_error(std::string_view message);

// ---- The serving flags, one per option of valve's configuration table (serve.cpp)

// CLI11's names for an option's flag: "--n-max,-n" (valve-rs's short flags are kept).
std::string flag_names(std::string_view key);
// The environment variable that sets an option when its flag is absent: VALVECTL_N_MAX. Not
// VALVE_*: valve sets VALVE_PORT, VALVE_FILE, ... in its workers' environment.
std::string env_name(std::string_view key);
inline constexpr std::string_view kEnvPrefix = "VALVECTL_";
// An option that is true or false: its flag may stand alone (`--preload` means `--preload true`).
bool is_switch(std::string_view key);
// Options valvectl sets itself (handle-signals, reap-orphans, notify): no flag.
bool set_by_valvectl(std::string_view key);
// What valvectl sets them to.
inline constexpr const char *kSetByValvectl[] = {"handle-signals", "reap-orphans", "notify"};
// An option's help text from the table, without the "(default: ...)" that valve adds.
std::string option_help(std::string_view key);

// ---- Documentation generated from the same table and flags (docs.cpp): `valvectl --help-markdown`
// writes docs/configuration.md, `valvectl --help-man` the man page valvectl.1.
void print_markdown(const CLI::App &app, std::ostream &out);
void print_man(const CLI::App &app, std::ostream &out);

// The default command: serve a plumber API. Declares one flag per option of valve's
// configuration table, then runs a server with the values given.
class ServeCommand {
 public:
  explicit ServeCommand(CLI::App &app);
  ServeCommand(const ServeCommand &) = delete;
  ServeCommand &operator=(const ServeCommand &) = delete;

  // Runs until the server stops; returns the exit status.
  int run();

  struct Flag {
    std::string key;
    std::vector<std::string> values;  // each time the flag is given, in order
    bool is_switch = false;           // true or false, and "--flag" alone means true
    CLI::Option *option = nullptr;
    std::string source;  // where the value came from: "--n-max" or "VALVECTL_N_MAX"
  };

 private:
  std::deque<Flag> flags_;  // a deque: CLI11 keeps pointers to each value
};

// check FILE: validates a config file (and what it names: API files, users) without serving.
class CheckCommand {
 public:
  explicit CheckCommand(CLI::App &app);
  bool chosen() const;
  int run() const;  // 0 when the file is fine; 2, after listing each mistake, when it is not

 private:
  CLI::App *command_ = nullptr;
  std::string file_;
};

// status, reload and scale: clients of a running valvectl's admin interface (its --admin flag).
// Each takes --admin ADDR (HOST:PORT, [IPv6]:PORT or unix:/path), by default $VALVE_ADMIN, and
// --admin-token-file FILE, by default the token in $VALVE_ADMIN_TOKEN.
class AdminCommands {
 public:
  explicit AdminCommands(CLI::App &app);
  AdminCommands(const AdminCommands &) = delete;
  AdminCommands &operator=(const AdminCommands &) = delete;

  // The subcommand named on the command line, or nullptr: then valvectl serves.
  CLI::App *chosen() const;
  // Runs the chosen subcommand (one request to the admin interface); returns the exit status.
  int run() const;

 private:
  CLI::App *status_ = nullptr;
  CLI::App *reload_ = nullptr;
  CLI::App *scale_ = nullptr;
  CLI::App *cache_ = nullptr;  // a group: cache purge
  CLI::App *purge_ = nullptr;
  std::string admin_;      // shared: only one subcommand runs
  std::string token_file_;  // --admin-token-file, shared too
  bool raw_json_ = false;  // status --json
  std::string n_min_;
  std::string n_max_;
  std::string app_;     // scale --app, cache purge --app
  std::string prefix_;  // cache purge PATH-PREFIX
};

}  // namespace valvectl
