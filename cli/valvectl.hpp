// What valvectl's commands share. Each command lives in its own file and uses only valve.h.
#pragma once

#include <CLI/CLI.hpp>
#include <deque>
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

// The default command: serve a plumber API. Declares one flag per option of valve's
// configuration table, then runs a server with the values given.
class ServeCommand {
 public:
  explicit ServeCommand(CLI::App &app);
  ServeCommand(const ServeCommand &) = delete;
  ServeCommand &operator=(const ServeCommand &) = delete;

  // Runs until the server stops; returns the exit status.
  int run() const;

 private:
  struct Flag {
    std::string key;
    std::vector<std::string> values;  // each time the flag is given, in order
    bool is_switch = false;           // true or false, and "--flag" alone means true
    CLI::Option *option = nullptr;
  };
  std::deque<Flag> flags_;  // a deque: CLI11 keeps pointers to each value
};

// status, reload and scale: clients of a running valvectl's admin interface (its --admin flag).
// Each takes --admin ADDR (HOST:PORT, [IPv6]:PORT or unix:/path), by default $VALVE_ADMIN.
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
  std::string admin_;      // shared: only one subcommand runs
  bool raw_json_ = false;  // status --json
  std::string n_min_;
  std::string n_max_;
};

}  // namespace valvectl
