#include "log.hpp"

#include <sys/time.h>

#include <cstdio>
#include <ctime>

namespace valve {

const char *level_name(LogLevel level) {
  switch (level) {
    case LogLevel::debug:
      return "debug";
    case LogLevel::info:
      return "info";
    case LogLevel::warn:
      return "warn";
    case LogLevel::error:
      return "error";
  }
  return "info";
}

void Logger::write(LogLevel level, std::string_view message) const {
  if (!enabled(level)) return;
  if (sink_) {
    std::string line(message);
    sink_(user_data_, static_cast<int>(level), line.c_str());
    return;
  }
  timeval tv{};
  gettimeofday(&tv, nullptr);
  tm parts{};
  gmtime_r(&tv.tv_sec, &parts);
  std::string line =
      fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z {:<5} {}\n", parts.tm_year + 1900,
                  parts.tm_mon + 1, parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec,
                  tv.tv_usec / 1000, level_name(level), message);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace valve
