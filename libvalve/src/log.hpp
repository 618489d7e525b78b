// valve's log: leveled lines, to a host callback or to stderr.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace valve {

// The option log-level: the least severe lines written.
enum class LogLevel { debug = 0, info = 1, warn = 2, error = 3 };

using LogSink = void (*)(void *user_data, int level, const char *line);

class Logger {
 public:
  Logger() = default;
  Logger(LogLevel threshold, LogSink sink, void *user_data)
      : threshold_(threshold), sink_(sink), user_data_(user_data) {}

  bool enabled(LogLevel level) const { return level >= threshold_; }
  // Lines to stderr as JSON objects ({"time", "level", "message"}) instead of text.
  void set_json(bool json) { json_ = json; }
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
  bool json_ = false;
};

// At most one log line a period for a warning that can come with every request (a full queue
// under overload): a line per request would cost a write to stderr each, hundreds a second, and
// stall the loop whenever whatever reads stderr falls behind. The counters count every one.
class LogThrottle {
 public:
  explicit LogThrottle(uint64_t period_ms = 1000) : period_ms_(period_ms) {}
  // True if this occurrence is to be logged; then `suppressed` is how many were not since.
  bool allow(uint64_t now_ms, uint64_t &suppressed) {
    if (logged_ && now_ms < next_ms_) {
      ++suppressed_;
      return false;
    }
    logged_ = true;
    next_ms_ = now_ms + period_ms_;
    suppressed = suppressed_;
    suppressed_ = 0;
    return true;
  }

 private:
  uint64_t period_ms_;
  uint64_t next_ms_ = 0;
  uint64_t suppressed_ = 0;
  bool logged_ = false;
};

// One line a request, to stdout ("-") or a file opened for appending. Lines are gathered and
// written once per loop turn (flush()); reopen() starts a new file after log rotation.
class AccessLog {
 public:
  AccessLog() = default;
  ~AccessLog();
  AccessLog(const AccessLog &) = delete;
  AccessLog &operator=(const AccessLog &) = delete;

  // "-" or a path; a message naming the option on failure.
  std::optional<std::string> open(const std::string &target, bool json);
  bool enabled() const { return fd_ >= 0; }
  bool json() const { return json_; }
  // Adds a line; returns true when it is the first since the last flush (schedule a flush).
  bool add(std::string_view line);
  void flush();
  std::optional<std::string> reopen();

 private:
  std::string target_;
  int fd_ = -1;
  bool json_ = false;
  std::string buffer_;
};

// The time now in UTC, as 2026-11-23T10:00:00.123Z.
std::string utc_timestamp();

const char *level_name(LogLevel level);

}  // namespace valve
