#include "upstream.hpp"

#include <fmt/format.h>

#include "context.hpp"
#include "util.hpp"

namespace valve {

namespace {
constexpr size_t kMaxResponseHead = 64 * 1024;
}  // namespace

UpstreamConn::UpstreamConn(Context &ctx, Owner &owner, WorkerAddress address, uint64_t worker_id)
    : ctx_(ctx),
      owner_(owner),
      address_(std::move(address)),
      worker_id_(worker_id),
      calls_(ctx.deferred()),
      parser_(HTTP_RESPONSE, *this, kMaxResponseHead) {}

UpstreamConn::~UpstreamConn() = default;

uv_stream_t *UpstreamConn::stream() { return stream_.get(); }

void UpstreamConn::connect() {
  int rc = stream_.connect(
      ctx_.loop(), this, address_.socket_path, address_.port,
      [](void *self, int status) { static_cast<UpstreamConn *>(self)->on_connect(status); });
  if (rc != 0) calls_.post([this, rc] { on_connect(rc); });
}

void UpstreamConn::on_connect(int status) {
  if (broken_) return;
  if (status != 0) {
    fail(fmt::format("cannot connect to worker {}: {}", worker_id_, uv_message(status)));
    return;
  }
  connected_ = true;
  stream_.quickack();
  if (!unsent_.empty()) {
    std::string data = std::move(unsent_);
    unsent_.clear();
    send(data);
  }
  if (!paused_) start_reading();
}

void UpstreamConn::attach(Handler &handler) { handler_ = &handler; }

void UpstreamConn::detach() {
  handler_ = nullptr;
  paused_ = false;
  if (tunnel_) broken_ = true;  // a tunnel's connection is never reused
  if (connected_ && !broken_)
    start_reading();  // an idle connection watches for the worker closing it
}

bool UpstreamConn::send(std::string_view data) {
  if (broken_) return true;
  if (!connected_) {
    unsent_ += data;
    return unsent_.size() < kWriteHighWater;
  }
  int rc = write_now(stream(), {data}, [](uv_stream_t *s, int status) {
    auto *self = static_cast<UpstreamConn *>(s->data);
    if (status != 0) {
      self->fail(fmt::format("writing to the worker failed: {}", uv_message(status)));
    } else if (self->handler_ && write_queue_size(s) < kWriteLowWater) {
      self->handler_->on_upstream_drained();
    }
  });
  if (rc != 0) {
    calls_.post(
        [this, rc] { fail(fmt::format("writing to the worker failed: {}", uv_message(rc))); });
    return true;
  }
  return write_queue_size(stream()) < kWriteHighWater;
}

void UpstreamConn::start_reading() {
  uv_read_start(stream(), alloc_read_buffer, [](uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
    if (auto *self = static_cast<UpstreamConn *>(s->data)) self->on_read(n, buf);
  });
}

void UpstreamConn::pause_reading() {
  paused_ = true;
  if (connected_ && !broken_) uv_read_stop(stream());
}

void UpstreamConn::resume_reading() {
  if (!paused_) return;
  paused_ = false;
  if (connected_ && !broken_) start_reading();
}

void UpstreamConn::on_read(ssize_t nread, const uv_buf_t *buf) {
  if (nread == 0 || broken_) return;
  if (tunnel_) {
    if (nread < 0) {
      fail(nread == UV_EOF ? std::string("the worker closed the connection")
                           : fmt::format("reading from the worker failed: {}",
                                         uv_message(static_cast<int>(nread))));
    } else if (handler_) {
      handler_->on_upstream_tunnel_data(std::string_view(buf->base, static_cast<size_t>(nread)));
    }
    return;
  }
  if (nread < 0) {
    if (nread == UV_EOF && handler_ && parser_.in_message() && parser_.message_needs_eof()) {
      parser_.finish();  // a close-delimited body ends here
      if (complete_)
        finish_response(0);
      else
        fail("the worker closed the connection mid-answer");
      return;
    }
    fail(nread == UV_EOF ? std::string("the worker closed the connection")
                         : fmt::format("reading from the worker failed: {}",
                                       uv_message(static_cast<int>(nread))));
    return;
  }
  if (!handler_) {
    fail("the worker sent data with no request pending");
    return;
  }
  size_t consumed = 0;
  llhttp_errno_t err = parser_.execute(buf->base, static_cast<size_t>(nread), &consumed);
  if (broken_) return;
  if ((err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) && complete_ && switching_) {
    complete_ = false;
    tunnel_ = true;
    if (Handler *h = handler_)
      h->on_upstream_switched(std::string_view(buf->base + consumed, nread - consumed));
    return;
  }
  if (err == HPE_PAUSED && complete_) {
    finish_response(static_cast<size_t>(nread) - consumed);
    return;
  }
  if (err != HPE_OK) {
    fail(!refusal_.empty()
             ? refusal_
             : fmt::format("the worker's answer is malformed: {}", parser_.error_reason()));
    return;
  }
  handler_->on_upstream_unfinished();
  // Over TCP, a worker that writes a response in pieces with Nagle on (plumber/httpuv does) waits
  // for our ACK of the first piece, which Linux delays up to 40 ms: a stall on every request.
  // Setting TCP_QUICKACK sends that pending ACK at once; Linux clears it after use, so it is set
  // again after every read that leaves an answer unfinished (a whole answer needs no ACK sooner).
  stream_.quickack();
}

void UpstreamConn::finish_response(size_t leftover) {
  complete_ = false;
  bool reusable = parser_.should_keep_alive() && leftover == 0;
  parser_.resume();
  if (!reusable) broken_ = true;  // never reused: no further reads on it
  if (Handler *h = handler_) h->on_upstream_complete(reusable);
}

int UpstreamConn::on_head(Head &head) {
  if (head.status < 100 || head.status > 599) {
    // A status is three digits, 100 to 599 (RFC 9110 15): anything else is not an answer to pass.
    refusal_ = fmt::format("the worker answered with status {}, outside 100-599", head.status);
    return -1;
  }
  if (head.status >= 100 && head.status < 200 && head.status != 101) {
    interim_ = true;  // 100 Continue, 103 Early Hints: not forwarded
    return 0;
  }
  if (head.status == 101) {
    if (!handler_ || !handler_->websocket() || !head.upgrade) {
      refusal_ = "the worker switched protocols (101) though no WebSocket was asked for";
      return -1;
    }
    switching_ = true;
  }
  return handler_ ? handler_->on_upstream_head(head) : -1;
}

int UpstreamConn::on_body(std::string_view data) {
  if (handler_) handler_->on_upstream_body(data);
  return 0;
}

int UpstreamConn::on_complete() {
  if (interim_) {
    interim_ = false;
    return 0;
  }
  complete_ = true;
  return HPE_PAUSED;
}

void UpstreamConn::fail(std::string reason) {
  if (broken_) return;
  broken_ = true;
  if (connected_) uv_read_stop(stream());
  if (Handler *h = handler_) {
    h->on_upstream_failed(reason);  // detaches and releases this connection
  } else {
    owner_.drop_idle(*this);
  }
}

}  // namespace valve
