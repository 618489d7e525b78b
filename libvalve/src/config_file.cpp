#include "config_file.hpp"

#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cmath>
#include <map>

#undef TOML_SHARED_LIB
#undef TOML_HEADER_ONLY
#define TOML_HEADER_ONLY 1
#define TOML_EXCEPTIONS 0
#include <toml++/toml.h>

#include "util.hpp"

namespace valve {

namespace {

// Options whose relative paths in a config file are taken from the file's directory.
constexpr std::string_view kPathOptions[] = {"file", "openapi", "env-file", "runtime-dir",
                                             "access-log"};
// Keys of an app's table that are not options: its own route.
constexpr std::string_view kMountKeys[] = {
    "prefix",     "hostname",  "strip-prefix",      "priority", "cache-post",
    "batch-path", "batch-max", "batch-retry-singly"};
constexpr std::string_view kRouteKeys[] = {
    "prefix",     "hostname",       "strip-prefix", "app",       "split",
    "sticky",     "priority",       "timeout",      "cache-post", "check-requests",
    "batch-path", "batch-max",      "batch-retry-singly"};

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// " (did you mean n-max?)" when a known key is close to the unknown one.
std::string suggestion(std::string_view key, const std::vector<std::string_view> &known) {
  std::string_view best;
  size_t best_distance = 3;
  for (std::string_view k : known) {
    size_t d = edit_distance(key, k);
    if (d < best_distance && d < key.size()) best = k, best_distance = d;
  }
  return best.empty() ? std::string() : fmt::format(" (did you mean {}?)", best);
}

std::vector<std::string_view> option_keys() {
  std::vector<std::string_view> keys;
  for (size_t i = 0; const char *k = option_key(i); ++i) keys.emplace_back(k);
  return keys;
}

int line_of(const toml::node &node) { return static_cast<int>(node.source().begin.line); }

std::string type_name(const toml::node &node) {
  switch (node.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "a list";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "a whole number";
    case toml::node_type::floating_point:
      return "a number";
    case toml::node_type::boolean:
      return "true or false";
    default:
      return "a date or time";
  }
}

// A scalar as the text Config::set() takes, if its TOML type suits the option's kind: text
// options take strings, numbers take numbers (or strings with a unit, "30s", "64k"), switches take
// true or false. Else what was expected.
std::optional<std::string> scalar_text(const toml::node &node, std::string_view kind,
                                       std::string *expected) {
  bool numeric = kind == "uint" || kind == "secs" || kind == "bytes";
  if (auto v = node.as_string(); v && kind != "bool" && kind != "uint") return v->get();
  if (auto v = node.as_integer(); v && numeric) return std::to_string(v->get());
  if (auto v = node.as_floating_point(); v && kind == "secs") return fmt::format("{}", v->get());
  if (auto v = node.as_boolean(); v && kind == "bool") return v->get() ? "true" : "false";
  *expected = kind == "bool"    ? "true or false"
              : kind == "uint"  ? "a whole number"
              : kind == "secs"  ? "seconds, a number or a string like \"250ms\""
              : kind == "bytes" ? "a size, a whole number or a string like \"64k\""
                                : "a string";
  return std::nullopt;
}

bool is_app_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.';
  });
}

class Reader {
 public:
  Reader(const Config &options, std::vector<Mistake> *mistakes)
      : options_(options), mistakes_(mistakes) {
    std::string path = options.config;
    size_t slash = path.rfind('/');
    dir_ = slash == std::string::npos ? std::string() : path.substr(0, slash + 1);
  }

  std::optional<Layout> read() {
    if (access(options_.config.c_str(), R_OK) != 0) {
      fail(0, fmt::format("cannot read it: {}", strerror(errno)));
      return std::nullopt;
    }
    auto parsed = toml::parse_file(options_.config);
    if (!parsed) {
      const toml::parse_error &e = parsed.error();
      fail(static_cast<int>(e.source().begin.line), std::string(e.description()));
      return std::nullopt;
    }
    const toml::table &root = parsed.table();
    Layout layout;
    layout.from_file = true;
    // Defaults, then the file's top level, then the flags.
    layout.server = Config();
    layout.server.config = options_.config;
    // The top level: options, the defaults of every app.
    for (auto &&[key, node] : root) {
      std::string_view k = key.str();
      if (k == "apps" || k == "routes") continue;
      if (std::find(std::begin(kMountKeys), std::end(kMountKeys), k) != std::end(kMountKeys)) {
        fail(line_of(node), fmt::format("{}: belongs in an app's table ([apps.NAME]) or in a "
                                        "[[routes]] entry, not at the top level",
                                        k));
        continue;
      }
      set_option(layout.server, k, node, false);
    }
    top_ = layout.server;  // what every app starts from, before the flags
    override_with_flags(layout.server);
    if (auto err = check_server(layout.server)) fail(0, *err);

    if (const toml::node *apps = root.get("apps")) {
      if (const toml::table *t = apps->as_table()) {
        for (auto &&[name, node] : *t) read_app(layout, name.str(), node);
        if (t->empty()) fail(line_of(*apps), "apps: expected at least one [apps.NAME] table");
      } else {
        fail(line_of(*apps), fmt::format("apps: expected tables [apps.NAME], got {}",
                                         type_name(*apps)));
      }
    } else {
      AppSpec app{kDefaultApp, layout.server, 0};
      if (auto err = app.config.validate()) fail(0, *err);
      layout.apps.push_back(std::move(app));
    }

    if (const toml::node *routes = root.get("routes")) {
      if (const toml::array *a = routes->as_array()) {
        for (const toml::node &entry : *a) read_route(layout, entry);
      } else {
        fail(line_of(*routes), fmt::format("routes: expected a list of tables ([[routes]]), got {}",
                                           type_name(*routes)));
      }
    }
    finish_routes(layout);
    // Workers make their sockets in valve's one runtime directory, given to their user.
    for (const AppSpec &app : layout.apps) {
      const AppSpec &first = layout.apps.front();
      if (app.config.user != first.config.user || app.config.group != first.config.group)
        fail(app.line, fmt::format("apps.{}: runs as user \"{}\" group \"{}\", but apps.{} as "
                                   "\"{}\" \"{}\": all apps' workers must run as one user (set "
                                   "user and group at the top level)",
                                   app.name, app.config.user, app.config.group, first.name,
                                   first.config.user, first.config.group));
    }
    std::stable_sort(mistakes_->begin(), mistakes_->end(),
                     [](const Mistake &a, const Mistake &b) { return a.line < b.line; });
    if (!mistakes_->empty()) return std::nullopt;
    return layout;
  }

 private:
  void fail(int line, std::string message) { mistakes_->push_back({line, std::move(message)}); }

  // Sets an option from the file; in_app: inside an app's table, where server options are wrong.
  void set_option(Config &config, std::string_view key, const toml::node &node, bool in_app) {
    int line = line_of(node);
    if (!option_default(key)) {
      std::vector<std::string_view> known = option_keys();
      if (in_app) known.insert(known.end(), std::begin(kMountKeys), std::end(kMountKeys));
      fail(line, fmt::format("{}: unknown option{}", key, suggestion(key, known)));
      return;
    }
    if (key == "config") {
      fail(line, "config: a config file cannot name another");
      return;
    }
    if (in_app && is_server_option(key)) {
      fail(line, fmt::format("{}: an option of the whole server; set it at the top level, not "
                             "for one app",
                             key));
      return;
    }
    std::string_view kind = option_kind(key);
    std::vector<std::string> values;
    std::string expected;
    if (const toml::array *a = node.as_array()) {
      if (kind != "list") {
        fail(line, fmt::format("{}: expected one value, got a list", key));
        return;
      }
      for (const toml::node &item : *a) {
        auto text = scalar_text(item, "str", &expected);
        if (!text) {
          fail(line_of(item), fmt::format("{}: expected strings in the list, got {}", key,
                                          type_name(item)));
          return;
        }
        values.push_back(*text);
      }
    } else if (auto text = scalar_text(node, kind == "list" ? "str" : kind, &expected)) {
      values.push_back(*text);
    } else {
      fail(line, fmt::format("{}: expected {}, got {}", key, expected, type_name(node)));
      return;
    }
    for (std::string &value : values) {
      bool is_path = std::find(std::begin(kPathOptions), std::end(kPathOptions), key) !=
                     std::end(kPathOptions);
      if (is_path && !value.empty() && value.front() != '/' && value != "-") value = dir_ + value;
      if (auto err = config.set(key, value)) fail(line, *err);
    }
  }

  // A flag beats the file, wherever in it. A list (env) gets the flags' entries after the
  // file's, and a later entry for a name wins.
  void override_with_flags(Config &config) {
    for (const std::string &key : options_.given()) {
      if (key == "env") {
        config.env.insert(config.env.end(), options_.env.begin(), options_.env.end());
      } else {
        config.copy_from(options_, key);
      }
    }
  }

  static std::optional<std::string> check_server(const Config &c) {
    for (size_t i = 0; const char *key = option_key(i); ++i) {
      if (!is_server_option(key)) continue;
      if (auto err = c.check(key)) return err;
    }
    return std::nullopt;
  }

  void read_app(Layout &layout, std::string_view name, const toml::node &node) {
    int line = line_of(node);
    const toml::table *t = node.as_table();
    if (!t) {
      fail(line, fmt::format("apps.{}: expected a table of the app's options, got {}", name,
                             type_name(node)));
      return;
    }
    if (!is_app_name(name)) {
      fail(line, fmt::format("apps.{}: an app's name is letters, digits, '-', '_' and '.' (at "
                             "most 64)",
                             name));
      return;
    }
    AppSpec app{std::string(name), top_, line};
    app.config.config.clear();
    Route mount;
    mount.line = line;
    bool mounted = false;
    for (auto &&[key, value] : *t) {
      std::string_view k = key.str();
      if (std::find(std::begin(kMountKeys), std::end(kMountKeys), k) != std::end(kMountKeys)) {
        mounted |= read_mount_key(mount, fmt::format("apps.{}.{}", name, k), k, value);
        continue;
      }
      set_option(app.config, k, value, true);
    }
    override_with_flags(app.config);
    app.config.config.clear();
    if (auto err = app.config.validate()) fail(line, fmt::format("apps.{}: {}", name, *err));
    if (mounted) {
      if (mount.prefix.empty()) {
        fail(line,
             fmt::format("apps.{}: hostname, strip-prefix, priority, cache-post and batch-* need a "
                         "prefix to mount the app at (prefix = \"/\" for every path)",
                         name));
      } else {
        mount.backends.push_back({app.name, 1});
        layout.routes.push_back(std::move(mount));
      }
    }
    layout.apps.push_back(std::move(app));
  }

  // prefix, hostname or strip-prefix of an app's mount or a route; true if it was valid.
  bool read_mount_key(Route &route, const std::string &where, std::string_view key,
                      const toml::node &node) {
    int line = line_of(node);
    if (key == "batch-max") {
      auto n = node.as_integer();
      if (n && n->get() >= 1 && n->get() <= 10000) {
        route.batch.max = static_cast<size_t>(n->get());
        return true;
      }
      fail(line, fmt::format("{}: expected a whole number from 1 to 10000, got {}", where,
                             n ? std::to_string(n->get()) : type_name(node)));
      return false;
    }
    if (key == "strip-prefix" || key == "check-requests" || key == "batch-retry-singly") {
      if (auto b = node.as_boolean()) {
        if (key == "strip-prefix")
          route.strip_prefix = b->get();
        else if (key == "check-requests")
          route.check_requests = b->get();
        else
          route.batch.retry_singly = b->get();
        return true;
      }
      fail(line, fmt::format("{}: expected true or false, got {}", where, type_name(node)));
      return false;
    }
    if (key == "cache-post") return read_cache_post(route, where, node);
    auto s = node.as_string();
    if (!s) {
      fail(line, fmt::format("{}: expected a string, got {}", where, type_name(node)));
      return false;
    }
    const std::string &v = s->get();
    if (key == "priority") {
      if (parse_priority(v, &route.priority)) return true;
      fail(line, fmt::format("{} \"{}\": expected interactive, normal or batch", where, v));
      return false;
    }
    if (key == "batch-path") {
      if (v.empty() || v.front() != '/' || v.find_first_of("?# \t\r\n") != std::string::npos) {
        fail(line, fmt::format("{} \"{}\": expected the API's batch route, a path starting with "
                               "/, like \"/predict_batch\"",
                               where, v));
        return false;
      }
      route.batch.path = v;
      return true;
    }
    if (key == "prefix") {
      if (v.empty() || v.front() != '/' || v.find_first_of("?# \t") != std::string::npos) {
        fail(line, fmt::format("{} \"{}\": expected a path starting with /, like \"/v1\"", where,
                               v));
        return false;
      }
      route.prefix = v.size() > 1 && v.back() == '/' ? v.substr(0, v.size() - 1) : v;
    } else {
      bool ok = !v.empty() && v.find_first_of("/:[] \t") == std::string::npos;
      if (!ok) {
        fail(line, fmt::format("{} \"{}\": expected a host name, like \"api.example.com\" "
                               "(no port)",
                               where, v));
        return false;
      }
      route.hostname = v;
    }
    return true;
  }

  // cache-post = true, or a list of the request headers that key the answers with the body.
  bool read_cache_post(Route &route, const std::string &where, const toml::node &node) {
    if (auto b = node.as_boolean()) {
      route.cache_post = b->get();
      return true;
    }
    if (const toml::array *list = node.as_array()) {
      for (const toml::node &item : *list) {
        auto s = item.as_string();
        if (!s || !is_token(s->get())) {
          fail(line_of(item), fmt::format("{}: expected a header name, got {}", where,
                                          s ? "\"" + s->get() + "\"" : type_name(item)));
          return false;
        }
        route.cache_key_headers.push_back(s->get());
      }
      route.cache_post = true;
      return true;
    }
    fail(line_of(node), fmt::format("{}: expected true, false or a list of header names, like "
                                    "[\"Accept\"], got {}",
                                    where, type_name(node)));
    return false;
  }

  void read_route(Layout &layout, const toml::node &node) {
    int line = line_of(node);
    std::string where = fmt::format("routes[{}]", ++route_count_);
    const toml::table *t = node.as_table();
    if (!t) {
      fail(line, fmt::format("{}: expected a table, got {}", where, type_name(node)));
      return;
    }
    Route route;
    route.line = line;
    bool ok = true;
    for (auto &&[key, value] : *t) {
      std::string_view k = key.str();
      std::string at = fmt::format("{}.{}", where, k);
      if (k == "app") {
        auto s = value.as_string();
        if (!s) {
          fail(line_of(value), fmt::format("{}: expected an app's name, got {}", at,
                                           type_name(value)));
          ok = false;
        } else {
          route.backends.push_back({s->get(), 1});
        }
      } else if (k == "split") {
        ok &= read_split(route, at, value);
      } else if (k == "sticky") {
        auto s = value.as_string();
        if (!s || !route.sticky.parse(s->get())) {
          fail(line_of(value),
               fmt::format("{}{}: expected \"ip\", \"header:NAME\" or \"cookie:NAME\"", at,
                           s ? " \"" + s->get() + "\"" : std::string()));
          ok = false;
        }
      } else if (k == "timeout") {
        ok &= read_route_timeout(route, at, value);
      } else if (std::find(std::begin(kRouteKeys), std::end(kRouteKeys), k) !=
                 std::end(kRouteKeys)) {
        ok &= read_mount_key(route, at, k, value);
      } else {
        fail(line_of(value),
             fmt::format("{}: unknown key{}; a route has prefix, hostname, strip-prefix, app or "
                         "split, sticky, priority, timeout, cache-post, check-requests, "
                         "batch-path, batch-max and batch-retry-singly",
                         at,
                         suggestion(k, std::vector<std::string_view>(std::begin(kRouteKeys),
                                                                     std::end(kRouteKeys)))));
        ok = false;
      }
    }
    if (!ok) return;
    if (route.prefix.empty()) {
      fail(line, fmt::format("{}: expected prefix = \"/...\", the path it serves", where));
      return;
    }
    bool has_app = t->contains("app"), has_split = t->contains("split");
    if (has_app == has_split) {
      fail(line, fmt::format("{}: expected either app = \"NAME\" or split = {{ NAME = WEIGHT, ... "
                             "}}",
                             where));
      return;
    }
    layout.routes.push_back(std::move(route));
  }

  // A route's timeout: seconds, as a number or as --timeout writes them ("90s", "2m").
  bool read_route_timeout(Route &route, const std::string &where, const toml::node &node) {
    std::optional<double> seconds;
    if (auto i = node.as_integer()) seconds = static_cast<double>(i->get());
    if (auto f = node.as_floating_point()) seconds = f->get();
    if (auto s = node.as_string()) seconds = parse_seconds(s->get());
    if (seconds && *seconds > 0) {
      route.timeout = *seconds;
      return true;
    }
    fail(line_of(node), fmt::format("{}: expected seconds more than 0, like 30 or \"2m\"", where));
    return false;
  }

  bool read_split(Route &route, const std::string &where, const toml::node &node) {
    const toml::table *t = node.as_table();
    if (!t || t->empty()) {
      fail(line_of(node), fmt::format("{}: expected {{ NAME = WEIGHT, ... }}, like {{ v1 = 90, "
                                      "v2 = 10 }}",
                                      where));
      return false;
    }
    double total = 0;
    for (auto &&[name, value] : *t) {
      std::optional<double> w;
      if (auto i = value.as_integer()) w = static_cast<double>(i->get());
      if (auto f = value.as_floating_point()) w = f->get();
      if (!w || !std::isfinite(*w) || *w < 0) {
        fail(line_of(value), fmt::format("{}.{}: expected a weight, a number 0 or more", where,
                                         name.str()));
        return false;
      }
      total += *w;
      route.backends.push_back({std::string(name.str()), *w});
    }
    if (!(total > 0)) {
      fail(line_of(node), fmt::format("{}: the weights add up to 0; give one app a weight", where));
      return false;
    }
    return true;
  }

  void finish_routes(Layout &layout) {
    std::map<std::string, int> used;
    for (const Route &r : layout.routes) {
      for (const Backend &b : r.backends) {
        if (!layout.find(b.app)) {
          std::vector<std::string_view> names;
          for (const auto &a : layout.apps) names.push_back(a.name);
          fail(r.line, fmt::format("route {}: no app is named {}{}", r.prefix, b.app,
                                   suggestion(b.app, names)));
        }
        used[b.app]++;
      }
    }
    for (size_t i = 0; i < layout.routes.size(); ++i) {
      for (size_t j = 0; j < i; ++j) {
        const Route &a = layout.routes[j], &b = layout.routes[i];
        if (a.prefix == b.prefix && iequals_ascii(a.hostname, b.hostname))
          fail(b.line, fmt::format("route {}{}: already routed on line {}", b.hostname, b.prefix,
                                   a.line));
      }
    }
    if (layout.routes.empty() && layout.apps.size() == 1) {
      Route all;
      all.prefix = "/";
      all.backends.push_back({layout.apps.front().name, 1});
      layout.routes.push_back(std::move(all));
      return;
    }
    for (const AppSpec &app : layout.apps) {
      if (!used.count(app.name))
        fail(app.line, fmt::format("apps.{}: not mounted: give it prefix = \"/...\" or name it in "
                                   "a [[routes]] entry",
                                   app.name));
    }
  }

  static bool iequals_ascii(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
             return std::tolower(static_cast<unsigned char>(x)) ==
                    std::tolower(static_cast<unsigned char>(y));
           });
  }

  const Config &options_;
  Config top_;
  std::vector<Mistake> *mistakes_;
  std::string dir_;
  int route_count_ = 0;
};

}  // namespace

const AppSpec *Layout::find(std::string_view name) const {
  for (const AppSpec &a : apps) {
    if (a.name == name) return &a;
  }
  return nullptr;
}

std::optional<Layout> load_layout(const Config &options, std::vector<Mistake> *mistakes) {
  mistakes->clear();
  if (options.config.empty()) {
    Layout layout;
    layout.server = options;
    layout.apps.push_back({kDefaultApp, options, 0});
    Route all;
    all.prefix = "/";
    all.backends.push_back({kDefaultApp, 1});
    layout.routes.push_back(std::move(all));
    return layout;
  }
  return Reader(options, mistakes).read();
}

std::string format_mistakes(const std::string &file, const std::vector<Mistake> &mistakes) {
  std::string out;
  for (const Mistake &m : mistakes) {
    if (!out.empty()) out += '\n';
    out += m.line > 0 ? fmt::format("{}:{}: {}", file, m.line, m.message)
                      : fmt::format("{}: {}", file, m.message);
  }
  return out;
}

}  // namespace valve
