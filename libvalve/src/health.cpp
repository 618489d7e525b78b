#include "health.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "config.hpp"

namespace valve {

Probe::Probe(Context &ctx, WorkerAddress address, Done done)
    : ctx_(ctx),
      address_(std::move(address)),
      done_(std::move(done)),
      timer_(ctx.loop(), [this] { finish(-1, "no answer in time"); }),
      calls_(ctx.deferred()) {}

Probe::~Probe() { stream_.close(); }

void Probe::start(std::string path, double timeout) {
  stream_.close();
  seen_.clear();
  path_ = std::move(path);
  running_ = true;
  if (timeout > 0) timer_.start(timeout);
  int rc = stream_.connect(
      ctx_.loop(), this, address_.socket_path, address_.port,
      [](void *self, int status) { static_cast<Probe *>(self)->on_connect(status); });
  // Reported from the loop, never from inside start().
  if (rc != 0) calls_.post([this, rc] { finish(-1, uv_message(rc)); });
}

void Probe::finish(int status, std::string why) {
  if (!running_) return;
  running_ = false;
  timer_.stop();
  stream_.close();
  done_(status, std::move(why));  // may destroy this probe: nothing after it
}

void Probe::on_connect(int status) {
  if (status != 0) return finish(-1, uv_message(status));
  if (path_.empty()) return finish(0, {});
  write_string(stream_.get(), fmt::format("GET {} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: "
                                          "valve-probe\r\nConnection: close\r\n\r\n",
                                          path_));
  uv_read_start(stream_.get(), alloc_read_buffer,
                [](uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
                  if (auto *self = static_cast<Probe *>(s->data)) self->on_read(n, buf);
                });
}

void Probe::on_read(ssize_t n, const uv_buf_t *buf) {
  if (n < 0) return finish(-1, "the connection closed before an answer");
  seen_.append(buf->base, static_cast<size_t>(n));
  size_t eol = seen_.find('\n');
  if (eol == std::string::npos) {
    if (seen_.size() > 1024) finish(-1, "not an HTTP answer");
    return;
  }
  // "HTTP/1.1 200 OK"
  int status = 0;
  if (seen_.starts_with("HTTP/1.") && seen_.size() >= 12) {
    auto code = parse_uint(std::string_view(seen_).substr(9, 3));
    if (code && *code >= 100 && *code <= 999) status = static_cast<int>(*code);
  }
  if (status == 0) return finish(-1, "not an HTTP answer");
  finish(status, {});
}

ReadinessProbe::ReadinessProbe(Context &ctx, WorkerAddress address, bool forked,
                               std::function<bool()> requests_waiting, std::function<void()> ready)
    : probe_(ctx, std::move(address),
             [this](int status, const std::string &) { on_result(status); }),
      retry_(ctx.loop(), [this] { attempt(); }),
      requests_waiting_(std::move(requests_waiting)),
      ready_(std::move(ready)),
      delay_(forked ? 0.005 : 0.02),
      growth_(forked ? 1.2 : 1.5) {}

void ReadinessProbe::attempt() { probe_.start("/__valve/ready", 0); }

void ReadinessProbe::on_result(int status) {
  if (status > 0 && (++answers_ >= kWarmupAnswers || requests_waiting_()))
    return ready_();                       // may destroy this probe
  if (status > 0) return retry_.start(0);  // the warm-up request, at once
  retry_.start(delay_);
  delay_ = std::min(0.25, delay_ * growth_);
}

std::optional<std::string> Health::on_check(bool ok, std::string_view what) {
  if (ok) {
    fails_ = 0;
    ++passes_;
    if (unhealthy_ && passes_ >= limits_.rise)
      return fmt::format("{} health checks in a row passed", passes_);
    return std::nullopt;
  }
  passes_ = 0;
  ++fails_;
  if (!unhealthy_ && fails_ >= limits_.fall)
    return fmt::format("{} health checks in a row failed (last: {})", fails_, what);
  return std::nullopt;
}

std::optional<std::string> Health::on_request(bool ok) {
  if (ok) {
    request_fails_ = 0;
    return std::nullopt;
  }
  if (++request_fails_ >= limits_.max_fails && limits_.max_fails > 0 && !unhealthy_)
    return fmt::format("{} requests in a row failed", request_fails_);
  return std::nullopt;
}

void Health::set(bool unhealthy) {
  unhealthy_ = unhealthy;
  passes_ = fails_ = request_fails_ = 0;
}

}  // namespace valve
