// valvectl's reference, generated from libvalve's option table and valvectl's own flags, so that
// --help, docs/configuration.md (--help-markdown) and the man page (--help-man) never drift.
#include <valve/valve.h>

#include <string>
#include <string_view>
#include <vector>

#include "valvectl.hpp"

namespace valvectl {
namespace {

// One serving flag as the reference shows it.
struct FlagDoc {
  std::string key;
  std::vector<std::string> names;  // "-n", "--n-max"
  std::string env;
  std::string default_value;  // "" when the table has none
  std::string help;
};

std::vector<FlagDoc> serving_flags() {
  std::vector<FlagDoc> out;
  for (size_t i = 0; const char *key = valve_config_key(i); ++i) {
    if (set_by_valvectl(key)) continue;
    FlagDoc doc{key, {}, env_name(key), valve_config_default(key), option_help(key)};
    std::string names = flag_names(key);  // "--n-max,-n": the short one first
    size_t comma = names.find(',');
    if (comma != std::string::npos) doc.names.push_back(names.substr(comma + 1));
    doc.names.push_back(names.substr(0, comma));
    out.push_back(std::move(doc));
  }
  return out;
}

// Every command that runs, a group's ("cache") in its place by its own ("cache purge").
std::vector<const CLI::App *> commands(const CLI::App &app) {
  std::vector<const CLI::App *> out;
  for (const CLI::App *command : app.get_subcommands([](const CLI::App *) { return true; })) {
    auto inner = commands(*command);
    if (inner.empty()) out.push_back(command);
    out.insert(out.end(), inner.begin(), inner.end());
  }
  return out;
}

// "purge" under "cache" is "cache purge".
std::string command_name(const CLI::App *command) {
  const CLI::App *parent = command->get_parent();
  if (parent && parent->get_parent()) return command_name(parent) + " " + command->get_name();
  return command->get_name();
}

constexpr std::string_view kSummary =
    "Serve a plumber API from a supervised pool of R worker processes.";

// What the reference says besides the table, shared by both formats. Markdown-ish: `code`.
constexpr std::string_view kPrecedence =
    "A flag wins over its environment variable, which wins over the default. A flag given twice "
    "keeps its last value (each is checked); `--env` collects every value. A true-or-false flag "
    "may stand alone (`--preload` means `--preload true`). Durations are seconds, fractions "
    "allowed, with an optional `ms`, `s` "
    "or `m` suffix (`--timeout 1.5`, `--timeout 500ms`); sizes take an optional `k`, `m` or `g` "
    "(`--max-body-size 10m`). Help is `--help` only: `-h` means `--host`, as in valve-rs.";
constexpr std::string_view kEnvNote =
    "valvectl reads each `VALVECTL_*` variable, then removes them all from its environment, so "
    "its workers (which may themselves be valvectl) never inherit them. The `VALVE_` prefix is "
    "left to what valve sets in each worker's environment: `VALVE_WORKER_ID` (1, 2, ...), "
    "`VALVE_FILE` and `VALVE_SOCKET` (plumber workers), `VALVE_SOCKET` or `VALVE_PORT` (a `--cmd` "
    "worker, for `{socket}` or `{port}`). Workers never see `NOTIFY_SOCKET`; of the rest of "
    "valvectl's environment they get only PATH, HOME, USER, LOGNAME, LANG, LANGUAGE, LC_*, TZ, "
    "TMPDIR and R's library paths, plus what `--env-file` and `--env` give them.";
constexpr std::string_view kAdminEnv =
    "`VALVE_ADMIN`, else `VALVECTL_ADMIN`: the admin address for `status`, `reload` and `scale` "
    "when `--admin` is not given. `VALVE_ADMIN_TOKEN` (the token itself), else "
    "`VALVE_ADMIN_TOKEN_FILE`, else `VALVECTL_ADMIN_TOKEN_FILE` (files): the bearer token they "
    "send when `--admin-token-file` is not given.";

struct ExitDoc {
  const char *status;
  const char *when;
};
constexpr ExitDoc kExits[] = {
    {"0", "a clean stop (SIGINT or SIGTERM); a subcommand that succeeded"},
    {"1",
     "no worker became ready (the message ends with the worker's last output); a subcommand "
     "that could not reach valvectl or whose request failed"},
    {"2",
     "a bad flag, value or environment variable (the message names it and the value), an "
     "address that cannot be bound, R or plumber missing"},
};

struct SignalDoc {
  const char *signal;
  const char *effect;
};
constexpr SignalDoc kSignals[] = {
    {"SIGTERM, SIGINT",
     "stop gracefully: stop accepting, let requests in flight finish for "
     "`--graceful-timeout`, then stop the workers; a second one stops at once"},
    {"SIGHUP",
     "reload: start a new generation of workers (re-reading the API file), move "
     "traffic to it once it is ready, drain the old one; no request is dropped"},
    {"SIGUSR1", "reopen the `--access-log` file (log rotation)"},
};

std::string shown_default(const FlagDoc &f) {
  return f.default_value.empty() ? "" : f.default_value;
}

// ---- Markdown

std::string md_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '|') out += '\\';
    out += c;
  }
  return out;
}

std::string md_code(std::string_view text) { return "`" + std::string(text) + "`"; }

// ---- roff (man(7))

// Turns `code` into bold and escapes what roff would read as requests or escapes.
std::string roff(std::string_view text) {
  std::string out;
  bool code = false;
  for (char c : text) {
    if (c == '`') {
      out += code ? "\\fR" : "\\fB";
      code = !code;
    } else if (c == '\\') {
      out += "\\e";
    } else if (c == '-') {
      out += "\\-";
    } else {
      out += c;
    }
  }
  if (!out.empty() && (out.front() == '.' || out.front() == '\'')) out.insert(0, "\\&");
  return out;
}

}  // namespace

void print_markdown(const CLI::App &app, std::ostream &out) {
  out << "<!-- Generated by `valvectl --help-markdown` from libvalve's option table "
         "(libvalve/src/config.hpp) and valvectl's flags. Do not edit: run scripts/gen-docs. -->\n"
      << "# valvectl: flags, environment variables and configuration keys\n\n"
      << "`valvectl [FLAGS]` serves a plumber API; `valvectl status|reload|scale` steer a running "
         "one (see [operations](operations.md)). "
      << kSummary << "\n\n"
      << kPrecedence << "\n\n"
      << "## Serving flags\n\n"
      << "Each flag is also a configuration key of the C API and the bindings, its name without "
         "the dashes: `valve_config_set(cfg, \"n-max\", \"4\")`, Python `valve.Server(file, "
         "n_max=4)`, R `valve_start(file, n_max = 4)`, Go `valve.Set(\"n-max\", \"4\")`.\n\n"
      << "| flag | environment variable | default | meaning |\n"
      << "| --- | --- | --- | --- |\n";
  for (const FlagDoc &f : serving_flags()) {
    std::string names;
    for (const std::string &n : f.names) names += (names.empty() ? "" : ", ") + md_code(n);
    std::string def = shown_default(f);
    out << "| " << names << " | " << md_code(f.env) << " | " << (def.empty() ? "" : md_code(def))
        << " | " << md_escape(f.help) << " |\n";
  }
  out << "| `--help`, `--version` | | | print this help, or `valvectl <version>`, and exit |\n\n"
      << kEnvNote << "\n\n"
      << "## Keys valvectl sets itself\n\n"
      << "These configuration keys have no flag: valvectl, which owns its process, turns them "
         "all on. A program embedding libvalve chooses (the library's default is shown).\n\n"
      << "| key | default | meaning |\n| --- | --- | --- |\n";
  for (const char *key : kSetByValvectl) {
    out << "| " << md_code(key) << " | " << md_code(valve_config_default(key)) << " | "
        << md_escape(option_help(key)) << " |\n";
  }
  out << "\n## Commands\n\n"
      << "`valvectl check FILE` reads a config file (see [routing](routing.md)) as `--config` "
         "would and lists each mistake with its line. `valvectl status`, `valvectl reload`, "
         "`valvectl scale` and `valvectl cache purge` talk to the admin interface of a valvectl "
         "started with `--admin`. "
      << kAdminEnv << "\n\n";
  for (const CLI::App *command : commands(app)) {
    out << "### valvectl " << command_name(command) << "\n\n"
        << command->get_description() << ".\n\n"
        << "| flag | meaning |\n| --- | --- |\n";
    for (const CLI::Option *option : command->get_options()) {
      if (option->get_name() == "--help") continue;
      std::string type = option->get_type_name();
      out << "| "
          << md_code(option->get_name() +
                     (option->get_expected_min() > 0 && !type.empty() ? " " + type : ""))
          << " | " << md_escape(option->get_description()) << " |\n";
    }
    out << "\n";
  }
  out << "## Signals\n\n| signal | effect |\n| --- | --- |\n";
  for (const SignalDoc &s : kSignals) out << "| " << s.signal << " | " << s.effect << " |\n";
  out << "\n## Exit status\n\n| status | when |\n| --- | --- |\n";
  for (const ExitDoc &e : kExits) out << "| " << e.status << " | " << e.when << " |\n";
}

void print_man(const CLI::App &app, std::ostream &out) {
  out << ".\\\" Generated by `valvectl --help-man` from libvalve's option table. Do not edit.\n"
      << ".TH VALVECTL 1 \"\" \"valvectl " << valve_version_string() << "\" \"User Commands\"\n"
      << ".SH NAME\nvalvectl \\- " << roff(kSummary) << "\n"
      << ".SH SYNOPSIS\n.B valvectl\n[\\fIFLAGS\\fR]\n.br\n"
      << ".B valvectl\n\\fBstatus\\fR|\\fBreload\\fR|\\fBscale\\fR [\\fB\\-\\-admin\\fR "
         "\\fIADDR\\fR] [\\fIFLAGS\\fR]\n"
      << ".SH DESCRIPTION\n"
      << roff(
             "valvectl runs an R plumber API as a pool of supervised R worker processes behind "
             "one HTTP port. It queues requests, starts and retires workers with demand, "
             "enforces timeouts and replaces workers that die or hang.")
      << "\n.PP\n"
      << roff(kPrecedence) << "\n"
      << ".SH OPTIONS\n";
  for (const FlagDoc &f : serving_flags()) {
    out << ".TP\n";
    std::string names;
    for (const std::string &n : f.names)
      names += (names.empty() ? "" : ", ") + ("\\fB" + roff(n) + "\\fR");
    out << names << (is_switch(f.key) ? " [\\fItrue\\fR|\\fIfalse\\fR]\n" : " \\fIVALUE\\fR\n")
        << roff(f.help);
    std::string def = shown_default(f);
    if (!def.empty()) out << " (default: " << roff(def) << ")";
    out << ". Environment: \\fB" << roff(f.env) << "\\fR.\n";
  }
  out << ".TP\n\\fB\\-\\-help\\fR, \\fB\\-\\-version\\fR\nPrint this help, or the version, and "
         "exit.\n"
      << ".SH COMMANDS\n"
      << roff(kAdminEnv) << "\n";
  for (const CLI::App *command : commands(app)) {
    out << ".SS " << command_name(command) << "\n" << roff(command->get_description()) << ".\n";
    for (const CLI::Option *option : command->get_options()) {
      if (option->get_name() == "--help") continue;
      std::string type = option->get_type_name();
      out << ".TP\n\\fB" << roff(option->get_name()) << "\\fR";
      if (option->get_expected_min() > 0 && !type.empty()) out << " \\fI" << roff(type) << "\\fR";
      out << "\n" << roff(option->get_description()) << "\n";
    }
  }
  out << ".SH ENVIRONMENT\n"
      << roff("Each serving flag has an environment variable, listed with it above.") << "\n.PP\n"
      << roff(kEnvNote) << "\n.PP\n"
      << roff(
             "NOTIFY_SOCKET: when set (by systemd for Type=notify), valvectl sends READY=1 once "
             "its first worker is ready, STATUS= as the pool changes, RELOADING=1 and READY=1 "
             "around a reload, and STOPPING=1 on shutdown.")
      << "\n.SH SIGNALS\n";
  for (const SignalDoc &s : kSignals)
    out << ".TP\n.B " << roff(s.signal) << "\n" << roff(s.effect) << ".\n";
  out << ".SH \"EXIT STATUS\"\n";
  for (const ExitDoc &e : kExits) out << ".TP\n.B " << e.status << "\n" << roff(e.when) << ".\n";
  out << ".SH EXAMPLES\n.nf\n"
      << roff(
             "valvectl -f plumber.R -n 4\n"
             "valvectl -f api.R -p 8080 --n-min 2 --timeout 30 --admin 127.0.0.1:9000\n"
             "VALVECTL_N_MAX=8 valvectl -f api.R\n"
             "valvectl status --admin 127.0.0.1:9000\n"
             "valvectl scale --admin 127.0.0.1:9000 --n-min 2 --n-max 8")
      << "\n.fi\n"
      << ".SH \"SEE ALSO\"\n"
      << roff(
             "The documentation in docs/ of valve's source: configuration.md, operations.md, "
             "deployment.md, migrating.md.")
      << "\n";
}

}  // namespace valvectl
