// A connection from valve to one worker, kept alive between requests.
#pragma once

#include <uv.h>

#include <string>

#include "context.hpp"
#include "http.hpp"
#include "util.hpp"

namespace valve {

class Context;

class UpstreamConn final : public HttpParser::Handler {
 public:
  // The request the connection carries (a proxy): it hears the answer.
  class Handler {
   public:
    // Whether the request asked for a WebSocket (only then may the worker answer 101).
    virtual bool websocket() const = 0;
    // The answer's head (0 to go on, -1 to refuse it), its body, its end.
    virtual int on_upstream_head(Head &head) = 0;
    virtual void on_upstream_body(std::string_view data) = 0;
    virtual void on_upstream_complete(bool reusable) = 0;
    // A read ended with the answer still unfinished.
    virtual void on_upstream_unfinished() = 0;
    // The connection failed; the handler detaches and releases it.
    virtual void on_upstream_failed(std::string_view reason) = 0;
    // The write queue drained below its low mark: send more of the request.
    virtual void on_upstream_drained() = 0;
    // The worker's 101 is parsed; early is what it sent after it. Then tunnel bytes.
    virtual void on_upstream_switched(std::string_view early) = 0;
    virtual void on_upstream_tunnel_data(std::string_view data) = 0;

   protected:
    ~Handler() = default;
  };

  // The worker the connection belongs to: it keeps idle connections.
  class Owner {
   public:
    // An idle connection failed or was closed by the worker: forget it.
    virtual void drop_idle(UpstreamConn &conn) = 0;

   protected:
    ~Owner() = default;
  };

  // worker_id: for messages.
  UpstreamConn(Context &ctx, Owner &owner, WorkerAddress address, uint64_t worker_id);
  ~UpstreamConn() override;
  UpstreamConn(const UpstreamConn &) = delete;
  UpstreamConn &operator=(const UpstreamConn &) = delete;

  void connect();
  void attach(Handler &handler);
  void detach();
  // Writes request bytes; true while the write queue is below its high mark.
  bool send(std::string_view data);
  void pause_reading();
  void resume_reading();
  // Fails the connection: its handler hears of it, or, idle, the worker drops it.
  void fail(std::string reason);
  bool broken() const { return broken_; }
  bool connected() const { return connected_; }
  // The worker switched protocols (101): bytes pass unparsed until either side closes.
  bool tunneling() const { return tunnel_; }

  Handler *handler() { return handler_; }

  int on_head(Head &head) override;
  int on_body(std::string_view data) override;
  int on_complete() override;

 private:
  void on_connect(int status);
  void on_read(ssize_t nread, const uv_buf_t *buf);
  void finish_response(size_t leftover);
  void start_reading();
  uv_stream_t *stream();

  Context &ctx_;
  Owner &owner_;
  WorkerAddress address_;
  uint64_t worker_id_;
  DeferredCalls calls_;
  Handler *handler_ = nullptr;
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
