#include "log.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "json.hpp"
#include "util.hpp"

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

std::string utc_timestamp() { return format_utc(unix_ms()); }

void Logger::write(LogLevel level, std::string_view message) const {
  if (!enabled(level)) return;
  if (sink_) {
    std::string line(message);
    sink_(user_data_, static_cast<int>(level), line.c_str());
    return;
  }
  std::string line;
  if (json_) {
    line =
        json_text({{"time", utc_timestamp()}, {"level", level_name(level)}, {"message", message}});
    line += '\n';
  } else {
    line = fmt::format("{} {:<5} {}\n", utc_timestamp(), level_name(level), message);
  }
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

AccessLog::~AccessLog() {
  flush();
  if (fd_ > STDERR_FILENO) ::close(fd_);
}

std::optional<std::string> AccessLog::open(const std::string &target, bool json) {
  target_ = target;
  json_ = json;
  if (target_.empty()) return std::nullopt;
  return reopen();
}

std::optional<std::string> AccessLog::reopen() {
  if (target_.empty()) return std::nullopt;
  flush();
  if (target_ == "-") {
    fd_ = STDOUT_FILENO;
    return std::nullopt;
  }
  int fd = ::open(target_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return fmt::format("access-log {}: cannot open: {}", target_, strerror(errno));
  if (fd_ > STDERR_FILENO) ::close(fd_);
  fd_ = fd;
  return std::nullopt;
}

bool AccessLog::add(std::string_view line) {
  if (fd_ < 0) return false;
  bool first = buffer_.empty();
  buffer_.append(line);
  buffer_ += '\n';
  return first;
}

void AccessLog::flush() {
  size_t done = 0;
  while (fd_ >= 0 && done < buffer_.size()) {
    ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // a full disk or a closed pipe: the lines are dropped, serving goes on
    done += static_cast<size_t>(n);
  }
  buffer_.clear();
}

}  // namespace valve
