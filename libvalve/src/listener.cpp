#include "listener.hpp"

#include <fmt/format.h>

#include <vector>

#include "context.hpp"
#include "valve/valve.h"

namespace valve {

Listener::Listener(Context &ctx, Proxy::Host &proxies) : ctx_(ctx), proxies_host_(proxies) {}

Listener::~Listener() { close(); }

int Listener::listen(std::string *address, std::string *why) {
  const Config &config = ctx_.config();
  std::string host = config.host == "localhost" ? "127.0.0.1" : config.host;
  sockaddr_storage addr{};
  bool v6 = false;
  if (uv_ip4_addr(host.c_str(), static_cast<int>(config.port),
                  reinterpret_cast<sockaddr_in *>(&addr)) != 0) {
    if (uv_ip6_addr(host.c_str(), static_cast<int>(config.port),
                    reinterpret_cast<sockaddr_in6 *>(&addr)) != 0) {
      *why = fmt::format("host {}: not an IPv4 or IPv6 address", config.host);
      return VALVE_EINVALID;
    }
    v6 = true;
  }
  tcp_ = new_handle<uv_tcp_t>(this);
  uv_tcp_init(ctx_.loop(), tcp_);
  int rc = uv_tcp_bind(tcp_, reinterpret_cast<const sockaddr *>(&addr), 0);
  if (rc == 0) {
    rc = uv_listen(reinterpret_cast<uv_stream_t *>(tcp_), 1024, [](uv_stream_t *s, int status) {
      auto *self = static_cast<Listener *>(s->data);
      if (self && status == 0) self->on_connection();
    });
  }
  if (rc != 0) {
    bool host_problem = rc == UV_EADDRNOTAVAIL;
    *why = host_problem
               ? fmt::format("host {}: cannot listen there: {}", config.host, uv_message(rc))
               : fmt::format("port {}: cannot listen on {}: {}", config.port, config.host,
                             uv_message(rc));
    close_handle(tcp_);
    return rc;
  }
  sockaddr_storage bound{};
  int len = sizeof bound;
  uv_tcp_getsockname(tcp_, reinterpret_cast<sockaddr *>(&bound), &len);
  int port = ntohs(v6 ? reinterpret_cast<sockaddr_in6 *>(&bound)->sin6_port
                      : reinterpret_cast<sockaddr_in *>(&bound)->sin_port);
  *address = v6 ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
  return 0;
}

void Listener::on_connection() {
  auto *client = new ClientConn(ctx_, *this);
  if (client->accept(reinterpret_cast<uv_stream_t *>(tcp_)) != 0) {
    delete client;
    return;
  }
  clients_.insert(client);
  if (clients_.size() > ctx_.config().max_connections) {
    ++ctx_.stats().rejected;
    ctx_.log().debug("refusing a connection: {} are open (max-connections)", clients_.size() - 1);
    client->fail(503, fmt::format("too many connections: {} are open (max-connections)",
                                  clients_.size() - 1));
  }
}

void Listener::close() {
  if (tcp_) close_handle(tcp_);
}

void Listener::drain() {
  close();
  std::vector<ClientConn *> clients(clients_.begin(), clients_.end());
  for (ClientConn *c : clients) c->drain();
}

void Listener::close_clients() {
  std::vector<ClientConn *> clients(clients_.begin(), clients_.end());
  for (ClientConn *c : clients) c->close();
}

Proxy &Listener::open_proxy(ClientConn &client, Head head) {
  auto *proxy = new Proxy(ctx_, proxies_host_, client, std::move(head));
  proxies_.insert(proxy);
  return *proxy;
}

void Listener::close_proxy(Proxy &proxy) {
  proxies_.erase(&proxy);
  ctx_.defer_delete(&proxy);
}

void Listener::on_client_closed(ClientConn &client) {
  if (clients_.erase(&client)) ctx_.defer_delete(&client);
}

}  // namespace valve
