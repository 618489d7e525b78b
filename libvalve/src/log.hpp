// valve's log: leveled lines, to a host callback or to stderr.
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>

#include "config.hpp"

namespace valve {

using LogSink = void (*)(void *user_data, int level, const char *line);

class Logger {
 public:
  Logger() = default;
  Logger(LogLevel threshold, LogSink sink, void *user_data)
      : threshold_(threshold), sink_(sink), user_data_(user_data) {}

  bool enabled(LogLevel level) const { return level >= threshold_; }
  void write(LogLevel level, std::string_view message) const;

  template <typename... A>
  void debug(fmt::format_string<A...> f, A &&...a) const {
    emit(LogLevel::debug, f, std::forward<A>(a)...);
  }
  template <typename... A>
  void info(fmt::format_string<A...> f, A &&...a) const {
    emit(LogLevel::info, f, std::forward<A>(a)...);
  }
  template <typename... A>
  void warn(fmt::format_string<A...> f, A &&...a) const {
    emit(LogLevel::warn, f, std::forward<A>(a)...);
  }
  template <typename... A>
  void error(fmt::format_string<A...> f, A &&...a) const {
    emit(LogLevel::error, f, std::forward<A>(a)...);
  }

 private:
  template <typename... A>
  void emit(LogLevel level, fmt::format_string<A...> f, A &&...a) const {
    if (enabled(level)) write(level, fmt::format(f, std::forward<A>(a)...));
  }

  LogLevel threshold_ = LogLevel::info;
  LogSink sink_ = nullptr;
  void *user_data_ = nullptr;
};

const char *level_name(LogLevel level);

}  // namespace valve
