// What a worker runs as: the user and groups it is switched to (--user, --group, --allow-root),
// and the explicit environment it gets (--env, --env-file) instead of everything valve was given.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config.hpp"
#include "process.hpp"

namespace valve {

// A worker's identity: unset credentials keep valve's own user.
struct Identity {
  std::optional<Credentials> credentials;
  std::string name;  // for USER and LOGNAME
  std::string home;  // for HOME
};

// Resolves --user and --group (names or numbers) against this process's rights. Fails with a
// message naming the flag: an unknown user or group, a switch that needs root, or workers that
// would run as root without --allow-root.
std::optional<Identity> resolve_identity(const Config &cfg, std::string *error);

// Reads an environment file: NAME=VALUE lines; blank lines and lines starting with # are skipped,
// an "export " before the name is allowed, and a value wholly in single or double quotes loses
// them (nothing else is interpreted). Fails with "env-file PATH:LINE: why".
std::optional<std::vector<std::string>> read_env_file(const std::string &path, std::string *error);

// The variables a worker gets from valve's own environment without being named: the basics a
// program needs to run (PATH, HOME, LANG, LC_*, TZ, TMPDIR, ...) and R's library paths.
bool is_basic_variable(std::string_view name);

// A worker's environment, later entries winning: the basic variables of `inherited` (valve's own
// environment), those the identity implies (HOME, USER, LOGNAME), the env-file's, then --env's
// (NAME alone takes valve's value, if it has one).
std::vector<std::string> worker_environment(const Config &cfg, const Identity &identity,
                                            const std::vector<std::string> &file_entries,
                                            const std::vector<std::string> &inherited);

// Sets NAME=VALUE in env, replacing an earlier NAME.
void set_variable(std::vector<std::string> &env, std::string_view name, std::string_view value);
// Removes NAME from env.
void unset_variable(std::vector<std::string> &env, std::string_view name);

}  // namespace valve
