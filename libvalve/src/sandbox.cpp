#include "sandbox.hpp"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "util.hpp"

namespace valve {

namespace {

constexpr size_t kMaxEnvFileBytes = 1 << 20;

std::string_view name_of(std::string_view entry) { return entry.substr(0, entry.find('=')); }

struct Account {
  uid_t uid;
  gid_t gid;
  std::string name;
  std::string home;
};

std::optional<Account> find_user(const std::string &spec) {
  std::vector<char> buf(16384);
  passwd pw{};
  passwd *found = nullptr;
  getpwnam_r(spec.c_str(), &pw, buf.data(), buf.size(), &found);
  if (!found) {
    if (auto id = parse_uint(spec); id && *id <= UINT32_MAX) {
      getpwuid_r(static_cast<uid_t>(*id), &pw, buf.data(), buf.size(), &found);
    }
  }
  if (!found) return std::nullopt;
  return Account{found->pw_uid, found->pw_gid, found->pw_name, found->pw_dir};
}

std::optional<gid_t> find_group(const std::string &spec) {
  std::vector<char> buf(16384);
  group gr{};
  group *found = nullptr;
  getgrnam_r(spec.c_str(), &gr, buf.data(), buf.size(), &found);
  if (found) return found->gr_gid;
  if (auto id = parse_uint(spec); id && *id <= UINT32_MAX) return static_cast<gid_t>(*id);
  return std::nullopt;
}

}  // namespace

std::optional<Identity> resolve_identity(const Config &cfg, std::string *error) {
  auto fail = [error](std::string why) -> std::optional<Identity> {
    *error = std::move(why);
    return std::nullopt;
  };
  const uid_t euid = geteuid();
  Identity id;
  if (cfg.user.empty()) {
    if (!cfg.group.empty()) return fail(fmt::format("group {}: give --user as well", cfg.group));
    if (euid == 0 && !cfg.allow_root)
      return fail(
          "user \"\": valve runs as root, so its workers would too; give --user NAME to run them "
          "as another user, or --allow-root to run them as root");
    return id;
  }
  auto account = find_user(cfg.user);
  if (!account) return fail(fmt::format("user {}: no such user", cfg.user));
  Credentials as{account->uid, account->gid, {}};
  id.name = account->name;
  id.home = account->home;
  if (!cfg.group.empty()) {
    auto gid = find_group(cfg.group);
    if (!gid) return fail(fmt::format("group {}: no such group", cfg.group));
    as.gid = *gid;
  }
  if (as.uid == 0 && !cfg.allow_root)
    return fail(fmt::format("user {}: workers would run as root; add --allow-root if you mean it",
                            cfg.user));
  if (as.uid == euid && as.gid == getegid()) return id;  // already who the workers should be
  if (euid != 0)
    return fail(
        fmt::format("user {}: valve must run as root to start workers as another user", cfg.user));
  // Supplementary groups: the user's own (as a login would give), with the chosen group.
  int n = 64;
  as.groups.resize(static_cast<size_t>(n));
  while (getgrouplist(id.name.c_str(), as.gid, as.groups.data(), &n) < 0 &&
         static_cast<size_t>(n) > as.groups.size()) {
    as.groups.resize(static_cast<size_t>(n));
  }
  as.groups.resize(static_cast<size_t>(std::max(n, 0)));
  if (std::find(as.groups.begin(), as.groups.end(), as.gid) == as.groups.end())
    as.groups.push_back(as.gid);
  id.credentials = std::move(as);
  return id;
}

std::optional<std::vector<std::string>> read_env_file(const std::string &path, std::string *error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = fmt::format("env-file {}: cannot read: {}", path, std::strerror(errno));
    return std::nullopt;
  }
  std::vector<std::string> out;
  std::string line;
  size_t total = 0;
  for (unsigned number = 1; std::getline(in, line); ++number) {
    auto fail = [&](std::string_view why) -> std::optional<std::vector<std::string>> {
      *error = fmt::format("env-file {}:{}: {}", path, number, why);
      return std::nullopt;
    };
    total += line.size() + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (total > kMaxEnvFileBytes) return fail("the file is larger than 1 MB");
    std::string_view text = trim(line);
    if (text.empty() || text.front() == '#') continue;
    if (text.starts_with("export ")) text = trim(text.substr(7));
    size_t eq = text.find('=');
    if (eq == std::string_view::npos) return fail("expected NAME=VALUE");
    std::string_view name = trim(text.substr(0, eq));
    std::string_view value = trim(text.substr(eq + 1));
    if (!is_env_name(name))
      return fail(
          fmt::format("{}: not a variable name (letters, digits and underscores, not "
                      "starting with a digit)",
                      name));
    if (value.find('\0') != std::string_view::npos) return fail("a NUL byte in the value");
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
        value.back() == value.front()) {
      value = value.substr(1, value.size() - 2);
    }
    out.push_back(fmt::format("{}={}", name, value));
  }
  return out;
}

bool is_basic_variable(std::string_view name) {
  static constexpr std::string_view kBasic[] = {"PATH",   "HOME",        "USER",       "LOGNAME",
                                                "LANG",   "LANGUAGE",    "TZ",         "TMPDIR",
                                                "R_LIBS", "R_LIBS_USER", "R_LIBS_SITE"};
  if (name.starts_with("LC_")) return true;
  return std::find(std::begin(kBasic), std::end(kBasic), name) != std::end(kBasic);
}

void set_variable(std::vector<std::string> &env, std::string_view name, std::string_view value) {
  std::string entry = fmt::format("{}={}", name, value);
  for (auto &e : env) {
    if (name_of(e) == name) {
      e = std::move(entry);
      return;
    }
  }
  env.push_back(std::move(entry));
}

void unset_variable(std::vector<std::string> &env, std::string_view name) {
  std::erase_if(env, [name](const std::string &e) { return name_of(e) == name; });
}

std::vector<std::string> worker_environment(const Config &cfg, const Identity &identity,
                                            const std::vector<std::string> &file_entries,
                                            const std::vector<std::string> &inherited) {
  std::vector<std::string> env;
  auto inherited_value = [&](std::string_view name) -> const std::string * {
    for (const auto &e : inherited) {
      if (e.size() > name.size() && name_of(e) == name) return &e;
    }
    return nullptr;
  };
  for (const auto &e : inherited) {
    std::string_view name = name_of(e);
    if (e.size() > name.size() && is_basic_variable(name))
      set_variable(env, name, e.substr(name.size() + 1));
  }
  if (identity.credentials) {
    set_variable(env, "HOME", identity.home);
    set_variable(env, "USER", identity.name);
    set_variable(env, "LOGNAME", identity.name);
  }
  for (const auto &e : file_entries) {
    std::string_view name = name_of(e);
    set_variable(env, name, std::string_view(e).substr(name.size() + 1));
  }
  for (const auto &e : cfg.env) {
    std::string_view name = name_of(e);
    if (name.size() < e.size()) {
      set_variable(env, name, std::string_view(e).substr(name.size() + 1));
    } else if (const std::string *own = inherited_value(name)) {
      set_variable(env, name, std::string_view(*own).substr(name.size() + 1));
    }
  }
  return env;
}

}  // namespace valve
