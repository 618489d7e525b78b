#include "notify.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

namespace valve {

Notifier::~Notifier() {
  if (fd_ >= 0) ::close(fd_);
}

std::optional<std::string> Notifier::open_from_environment() {
  const char *name = getenv(std::string(kNotifySocketVariable).c_str());
  if (name == nullptr || *name == '\0') return std::nullopt;
  std::string_view path = name;
  if (path.front() != '/' && path.front() != '@')
    return fmt::format("NOTIFY_SOCKET {}: not a socket path or an abstract name (@...)", path);
  if (path.size() >= sizeof addr_.sun_path)
    return fmt::format("NOTIFY_SOCKET {}: longer than {} bytes", path, sizeof addr_.sun_path - 1);
  addr_ = {};
  addr_.sun_family = AF_UNIX;
  memcpy(addr_.sun_path, path.data(), path.size());
  if (path.front() == '@') addr_.sun_path[0] = '\0';  // Linux's abstract namespace
  addr_len_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return fmt::format("NOTIFY_SOCKET {}: {}", path, strerror(errno));
  return std::nullopt;
}

void Notifier::send(std::string_view message) {
  if (fd_ < 0) return;
  ssize_t rc;
  do {
    rc = sendto(fd_, message.data(), message.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
                reinterpret_cast<const sockaddr *>(&addr_), addr_len_);
  } while (rc < 0 && errno == EINTR);
}

void Notifier::status(std::string_view text) {
  if (fd_ < 0 || text == last_status_) return;
  last_status_ = text;
  send(fmt::format("STATUS={}", text));
}

}  // namespace valve
