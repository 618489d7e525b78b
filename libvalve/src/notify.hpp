// The service manager's readiness protocol (systemd's sd_notify): one datagram per message on the
// Unix socket named by $NOTIFY_SOCKET. Spoken directly: a few lines, no libsystemd.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <optional>
#include <string>
#include <string_view>

namespace valve {

class Notifier {
 public:
  Notifier() = default;
  ~Notifier();
  Notifier(const Notifier &) = delete;
  Notifier &operator=(const Notifier &) = delete;

  // Opens $NOTIFY_SOCKET (a path, or an abstract name starting with '@'). Unset: stays inactive
  // and returns nullopt; set but unusable: inactive, and returns why.
  std::optional<std::string> open_from_environment();
  bool active() const { return fd_ >= 0; }

  // Sends "KEY=VALUE\n..." lines. Best effort: a service manager that went away is not an error.
  void send(std::string_view message);
  // STATUS=text, sent only when it differs from the last status sent.
  void status(std::string_view text);

 private:
  int fd_ = -1;
  sockaddr_un addr_{};
  socklen_t addr_len_ = 0;
  std::string last_status_;
};

// The environment variable that names the socket; workers never inherit it.
inline constexpr std::string_view kNotifySocketVariable = "NOTIFY_SOCKET";

}  // namespace valve
