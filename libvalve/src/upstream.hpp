// A connection from valve to one worker, kept alive between requests.
#pragma once

#include <uv.h>

#include <string>

#include "http.hpp"
#include "util.hpp"

namespace valve {

class Worker;
class Proxy;

class UpstreamConn final : public HttpParser::Handler {
 public:
  explicit UpstreamConn(Worker &worker);
  ~UpstreamConn() override;
  UpstreamConn(const UpstreamConn &) = delete;
  UpstreamConn &operator=(const UpstreamConn &) = delete;

  void connect();
  void attach(Proxy &proxy);
  void detach();
  // Writes request bytes; true while the write queue is below its high mark.
  bool send(std::string_view data);
  void pause_reading();
  void resume_reading();
  // Fails the connection: its proxy hears of it, or, idle, the worker drops it.
  void fail(std::string reason);
  bool broken() const { return broken_; }
  bool connected() const { return connected_; }
  // The worker switched protocols (101): bytes pass unparsed until either side closes.
  bool tunneling() const { return tunnel_; }

  Worker &worker() { return worker_; }
  Proxy *proxy() { return proxy_; }

  int on_head(Head &head) override;
  int on_body(std::string_view data) override;
  int on_complete() override;

 private:
  void on_connect(int status);
  void on_read(ssize_t nread, const uv_buf_t *buf);
  void finish_response(size_t leftover);
  void start_reading();
  uv_stream_t *stream();

  Worker &worker_;
  Proxy *proxy_ = nullptr;
  WorkerStream stream_;  // a Unix socket (plumber workers, {socket}) or loopback TCP ({port})
  HttpParser parser_;
  std::string unsent_;  // written before the connection was up
  bool connected_ = false;
  bool paused_ = false;
  bool broken_ = false;
  bool interim_ = false;
  bool complete_ = false;
  bool switching_ = false;  // a 101 is being parsed
  bool tunnel_ = false;
  std::string refusal_;  // why on_head refused the answer
};

}  // namespace valve
