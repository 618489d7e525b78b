// The public port: accepts client connections and keeps them, with the proxies of the requests
// they carry, until they close.
#pragma once

#include <uv.h>

#include <string>
#include <unordered_set>

#include "client.hpp"
#include "proxy.hpp"

namespace valve {

class Context;

class Listener final : public ClientConn::Host {
 public:
  // proxies: who routes the requests (each proxy is handed it).
  Listener(Context &ctx, Proxy::Host &proxies);
  ~Listener();
  Listener(const Listener &) = delete;
  Listener &operator=(const Listener &) = delete;

  // Listens on the server's host and port: 0, or an error with *why naming the option. *address
  // is what it listens on, such as 127.0.0.1:3000 or [::1]:3000.
  int listen(std::string *address, std::string *why);
  // Stops accepting; each client closes once its current answer is done.
  void drain();
  // Closes every client connection now.
  void close_clients();
  void close();  // stops accepting
  // A proxy is over: forget it, delete it after the current callback.
  void close_proxy(Proxy &proxy);

  size_t connections() const { return clients_.size(); }
  size_t requests_in_progress() const { return proxies_.size(); }

  Proxy &open_proxy(ClientConn &client, Head head) override;
  void on_client_closed(ClientConn &client) override;

 private:
  void on_connection();

  Context &ctx_;
  Proxy::Host &proxies_host_;
  uv_tcp_t *tcp_ = nullptr;
  std::unordered_set<ClientConn *> clients_;
  std::unordered_set<Proxy *> proxies_;
};

}  // namespace valve
