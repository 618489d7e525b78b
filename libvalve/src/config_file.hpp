// What one valve serves: its apps (each a pool with its own settings) and the routes to them, from
// the options alone or from a TOML config file (--config) with the options (flags) winning.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "config.hpp"
#include "router.hpp"

namespace valve {

struct AppSpec {
  std::string name;
  Config config;  // the server's options, then the app's own, then the flags
  int line = 0;
};

struct Layout {
  Config server;  // the options of the server as a whole: listener, logs, admin, ...
  std::vector<AppSpec> apps;
  std::vector<Route> routes;
  bool from_file = false;  // false: one app, "default", mounted at /

  const AppSpec *find(std::string_view name) const;
};

// One mistake in a config file: where, and what is wrong and what is expected.
struct Mistake {
  int line = 0;  // 0: not tied to a line
  std::string message;
};

// The layout for these options: with `config` set, the file is read and every mistake in it is
// listed ("FILE:LINE: message"); nullopt then.
std::optional<Layout> load_layout(const Config &options, std::vector<Mistake> *mistakes);

// The mistakes as lines "FILE:LINE: message", one per line.
std::string format_mistakes(const std::string &file, const std::vector<Mistake> &mistakes);

// The name every request goes to without a config file's apps.
inline constexpr const char *kDefaultApp = "default";

}  // namespace valve
