// The admin interface: status, metrics, probes, reload and scale, on a listener of its own
// (loopback TCP, or a Unix socket created 0600), never on the public port.
#pragma once

#include <uv.h>

#include <list>
#include <memory>
#include <string>

namespace valve {

class Server;

class AdminServer {
 public:
  explicit AdminServer(Server &server);
  ~AdminServer();
  AdminServer(const AdminServer &) = delete;
  AdminServer &operator=(const AdminServer &) = delete;

  // Listens on spec (127.0.0.1:PORT, [::1]:PORT or unix:/path): 0, or an error with *why.
  int listen(const std::string &spec, std::string *why);
  // "127.0.0.1:9000" or "unix:/path", once listening.
  const std::string &address() const { return address_; }
  // Stops listening and ends every admin connection.
  void close();

  class Conn;

 private:
  void on_connection(uv_stream_t *listener);

  Server &server_;
  uv_tcp_t *tcp_ = nullptr;
  uv_pipe_t *pipe_ = nullptr;
  std::string address_;
  std::string unix_path_;
  std::list<std::unique_ptr<Conn>> conns_;
  friend class Conn;
};

// The Prometheus text for the server's metrics (loop thread).
std::string metrics_text(Server &server);

}  // namespace valve
