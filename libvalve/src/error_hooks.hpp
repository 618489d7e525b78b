// Forwards error reports to an alerting system: --error-hook-command runs a command with the
// report's JSON on its stdin, --error-hook-url POSTs it. Bounded: each delivery has
// --error-hook-timeout, at most kHookDeliveries run at once, at most kHookQueue more wait (the rest
// are dropped and counted), and nothing blocks the loop. Commands are reaped as they end.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "context.hpp"

namespace valve {

constexpr size_t kHookDeliveries = 4;
constexpr size_t kHookQueue = 64;

// http://HOST[:PORT][/PATH]: nullopt and *why when it is not one (https is not supported).
struct HookUrl {
  std::string host;  // without an IPv6 literal's brackets
  int port = 80;
  std::string path;  // "/" at least, the query included
  std::string host_header;
};
std::optional<HookUrl> parse_hook_url(std::string_view url, std::string *why);

class ErrorHooks {
 public:
  // Reads the hooks from ctx.config() (error-hook-command, error-hook-url, error-hook-timeout).
  explicit ErrorHooks(Context &ctx);
  ~ErrorHooks();
  ErrorHooks(const ErrorHooks &) = delete;
  ErrorHooks &operator=(const ErrorHooks &) = delete;

  bool enabled() const { return !command_.empty() || url_.has_value(); }
  // Delivers one report (a JSON object) to each hook, now or when a delivery ends.
  void send(std::string report_json);
  // The server's SIGCHLD handler reaped pid (--reap-orphans): true when it was a hook's command.
  bool on_reaped(pid_t pid, int wait_status);
  // Ends every delivery (commands are killed and reaped) and drops those waiting.
  void close();
  size_t running() const { return running_.size(); }

  class Delivery;

 private:
  void start(std::string body, bool command);
  void pump();
  void finished(Delivery *d, const char *result, std::string_view why);

  Context &ctx_;
  std::string command_;
  std::optional<HookUrl> url_;
  double timeout_;
  bool closed_ = false;
  std::deque<std::pair<std::string, bool>> waiting_;  // (body, is the command's)
  std::list<std::unique_ptr<Delivery>> running_;
  DeferredCalls calls_;
  friend class Delivery;
};

}  // namespace valve
