// valvectl: runs a pool of R plumber workers behind one HTTP port, using libvalve's C API.
#include <valve/valve.h>

#include <iostream>
#include <string>

#include "valvectl.hpp"

namespace valvectl {

void print_error(std::string_view message) { std::cerr << "valvectl: " << message << '\n'; }

}  // namespace valvectl

int main(int argc, char **argv) {
  CLI::App app{"Serve a plumber API from a supervised pool of R worker processes.", "valvectl"};
  app.set_help_flag("--help", "print this help and exit");  // -h is --host, as in valve-rs
  app.set_version_flag("--version", std::string("valvectl ") + valve_version_string(),
                       "print the version and exit");
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.footer(
      "Exit status: 0 after a clean stop (SIGINT or SIGTERM), 1 when no worker became ready, "
      "2 for a bad flag or value.");

  // Subcommands join here, one file each; without one, valvectl serves.
  valvectl::ServeCommand serve(app);
  valvectl::AdminCommands admin(app);
  valvectl::CheckCommand check(app);
  app.require_subcommand(0, 1);
  // Hidden: the reference, generated from the same table as --help (docs/configuration.md and the
  // man page are made with these).
  bool markdown = false, man = false;
  app.add_flag("--help-markdown", markdown)->group("");
  app.add_flag("--help-man", man)->group("");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    valvectl::print_error(e.what());
    return valvectl::kExitUsage;
  }
  if (markdown || man) {
    if (markdown) valvectl::print_markdown(app, std::cout);
    if (man) valvectl::print_man(app, std::cout);
    return std::cout.good() ? valvectl::kExitOk : valvectl::kExitFailure;
  }
  if (check.chosen()) return check.run();
  if (const CLI::App *command = admin.chosen()) {
    // "valvectl --admin X status" would silently ignore X: a subcommand's flags follow its name.
    for (const CLI::Option *option : app.get_options()) {
      if (option->count() == 0) continue;
      valvectl::print_error(option->get_name() + ": a flag for serving, not one of " +
                            command->get_name() + "'s (see valvectl " + command->get_name() +
                            " --help)");
      return valvectl::kExitUsage;
    }
    return admin.run();
  }
  return serve.run();
}
