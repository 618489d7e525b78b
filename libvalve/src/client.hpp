// A client's connection: parses requests (one at a time, pipelined ones held back), enforces the
// header, idle and size limits, and writes responses.
#pragma once

#include <uv.h>

#include <string>

#include "http.hpp"
#include "proxy.hpp"
#include "util.hpp"

namespace valve {

class Context;

class ClientConn final : public HttpParser::Handler, public Proxy::Client {
 public:
  // Who keeps the connections: it starts a proxy for each request and hears of the end.
  class Host {
   public:
    virtual Proxy &open_proxy(ClientConn &client, Head head) = 0;
    virtual void on_client_closed(ClientConn &client) = 0;

   protected:
    ~Host() = default;
  };

  ClientConn(Context &ctx, Host &host);
  ~ClientConn() override;
  ClientConn(const ClientConn &) = delete;
  ClientConn &operator=(const ClientConn &) = delete;

  int accept(uv_stream_t *listener);

  // Writes bytes of the current response. True while the write queue is below its high mark.
  bool send(std::string_view data) override;
  // The proxy wrote its whole response. The next pipelined request is parsed, or the
  // connection closes if keep_alive is false.
  void response_done(bool keep_alive) override;
  // Writes a final error response outside any request, then closes.
  void fail(int status, std::string_view message);
  // Block or unblock reading for the request body (the worker is not ready for it), or in a
  // tunnel for what the client sends.
  void hold_body(bool hold) override;
  // The worker switched protocols (101, a WebSocket): from now on the bytes the client sends go
  // unparsed to the proxy (on_tunnel_data), those that came early first.
  void start_tunnel() override;
  // Shutting down: close now if idle, else after the current response.
  void drain();
  void close() override;

  const std::string &peer_ip() const override { return peer_ip_; }
  bool peer_trusted() const override { return peer_trusted_; }
  bool idle() const { return current_ == nullptr && !parser_.in_message(); }

  int on_head(Head &head) override;
  int on_body(std::string_view data) override;
  int on_complete() override;

 private:
  enum Block : unsigned { kBody = 1, kPipeline = 2 };
  void on_read(ssize_t nread, const uv_buf_t *buf);
  void feed(const char *data, size_t len);
  // start: the message's bytes from its beginning when this read began it (else empty).
  void parse_error(llhttp_errno_t err, std::string_view start);
  // An absolute-form target (RFC 9112 3.2.2) to origin-form, its authority as Host: false when
  // the target is no http(s) URI.
  static bool to_origin_form(Head &head);
  void set_block(Block b, bool on);
  void start_reading();
  void on_written();
  void arm_idle_timer();

  Context &ctx_;
  Host &host_;
  uv_tcp_t *tcp_;
  HttpParser parser_;
  Timer timer_;
  Proxy *current_ = nullptr;
  std::string pipelined_;  // bytes after a complete request, parsed once its response is done
  bool paused_ = false;
  unsigned blocks_ = 0;
  bool reading_ = false;
  bool closing_ = false;
  bool draining_ = false;
  bool eof_ = false;
  bool tunnel_ = false;
  std::string peer_ip_;
  bool peer_trusted_ = false;
};

}  // namespace valve
