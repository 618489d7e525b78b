// The admin interface: status, metrics, probes, reload and scale, on a listener of its own
// (TCP, or a Unix socket created 0600), never on the public port. With a token set, every request
// but the probes and the page itself must send it as "Authorization: Bearer TOKEN".
#pragma once

#include <uv.h>

#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "reload.hpp"

namespace valve {

class Context;
struct App;

class AdminServer {
 public:
  // What the admin interface asks of the server (on the loop thread).
  class Host {
   public:
    virtual std::string status_json_now() = 0;
    virtual std::string metrics_text() = 0;
    // The latest error reports per route (error_reports.hpp), as JSON.
    virtual std::string errors_json() = 0;
    // Whether /readyz passes; else why not.
    virtual bool ready(std::string *why) = 0;
    // Reloads every app; done runs when it is over.
    virtual void reload(ReloadDone done) = 0;
    // Sets n-min and/or n-max of an app (the only one when app is empty) from their text: a
    // message naming the option, or nullopt.
    virtual std::optional<std::string> scale(const std::optional<std::string> &n_min,
                                             const std::optional<std::string> &n_max,
                                             const std::string &app) = 0;
    // Drops the cached answers whose path starts with prefix ("": all) from an app's cache, or
    // from every app's when app is empty: how many, or a message saying why not.
    virtual std::optional<std::string> purge_cache(const std::string &app,
                                                   const std::string &prefix, size_t *purged) = 0;
    // The app an app-specific command means: the named one, or the only one.
    virtual App *find_app(std::string_view name, std::string *why) = 0;

   protected:
    ~Host() = default;
  };

  AdminServer(Context &ctx, Host &host);
  ~AdminServer();
  AdminServer(const AdminServer &) = delete;
  AdminServer &operator=(const AdminServer &) = delete;

  // Listens on spec (127.0.0.1:PORT, [::1]:PORT or unix:/path): 0, or an error with *why.
  int listen(const std::string &spec, std::string *why);
  // "127.0.0.1:9000" or "unix:/path", once listening.
  const std::string &address() const { return address_; }
  // Stops listening and ends every admin connection.
  void close();
  // The bearer token requests must send (empty: none needed); may change while listening.
  void set_token(std::string token) { token_ = std::move(token); }
  bool has_token() const { return !token_.empty(); }

  class Conn;

 private:
  void on_connection(uv_stream_t *listener);
  // Logs a request refused for its token (the method and path, never a token).
  void log_refusal(std::string_view method, std::string_view path, std::string_view problem);

  Context &ctx_;
  Host &host_;
  uv_tcp_t *tcp_ = nullptr;
  uv_pipe_t *pipe_ = nullptr;
  std::string address_;
  std::string unix_path_;
  std::string token_;
  uint64_t refusals_logged_at_ = 0;  // the loop's clock, in ms
  uint64_t refusals_unlogged_ = 0;
  std::list<std::unique_ptr<Conn>> conns_;
  friend class Conn;
};

}  // namespace valve
