#include "proxy.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cassert>
#include <iterator>
#include <limits>
#include <random>
#include <utility>

#include "app.hpp"
#include "context.hpp"
#include "job_service.hpp"
#include "error_reports.hpp"
#include "json.hpp"
#include "openapi.hpp"
#include "pool.hpp"
#include "request_check.hpp"
#include "router.hpp"
#include "stats.hpp"
#include "upstream.hpp"
#include "worker.hpp"

namespace valve {

namespace {

constexpr unsigned kUnsentRetries = 3;
// Request bodies read whole before dispatch (--request-buffer-size each) share this much memory:
// past it, a body streams as it would past its own limit, so many slow uploads cannot exhaust it.
constexpr uint64_t kBufferedBodiesBudget = 64 << 20;
// A retryable request's answer is held back until it is complete, this big, or this old: a worker
// that dies within it has sent the client nothing, so the request can go to another worker.
constexpr size_t kHoldBytes = 64 * 1024;
constexpr double kHoldSeconds = 0.1;
// Pins a browser session to one worker of a shiny pool: the worker's affinity token.
constexpr std::string_view kAffinityCookie = "valve_worker";

// Appends formatted text to out, in place.
template <typename... A>
void append(std::string &out, fmt::format_string<A...> f, A &&...a) {
  fmt::format_to(std::back_inserter(out), f, std::forward<A>(a)...);
}

std::string chunk(std::string_view data) {
  return fmt::format("{:x}\r\n{}\r\n", data.size(), data);
}

uint64_t to_ms(double seconds) { return static_cast<uint64_t>(seconds * 1000); }

// A Ping valve sends a quiet client; its Pong (or anything else it sends) proves it is there.
constexpr std::string_view kPingPayload = "valve";
// A ping that falls due while the worker is in the middle of a frame waits this long for its end.
constexpr double kPingRetrySeconds = 0.1;

}  // namespace

Proxy::Proxy(Context &ctx, Host &host, Client &client, Head request)
    : ctx_(ctx),
      host_(host),
      client_(&client),
      request_(std::move(request)),
      peer_ip_(client.peer_ip()),
      arrived_ns_(uv_hrtime()),
      timer_(ctx.loop(), [this] { on_timeout(); }),
      hold_timer_(ctx.loop(), [this] { release_hold(); }) {
  const std::string *id = request_.find("x-request-id");
  request_id_ = id && !id->empty() && id->size() <= 200 ? *id : random_hex(16);
}

Proxy::~Proxy() {
  Batcher::leave(*this);
  if (job_)
    if (JobService *jobs = host_.jobs()) jobs->forget_waiter(*this);
  release_buffered();
}

void Proxy::release_buffered() {
  ctx_.stats().buffered_body_bytes -= buffered_;
  buffered_ = 0;
}

const Config &Proxy::config() const { return app_ ? app_->config : ctx_.config(); }

const char *Proxy::phase_name(Phase phase) {
  switch (phase) {
    case Phase::routing:
      return "routing";
    case Phase::buffering:
      return "buffering";
    case Phase::collapsed:
      return "collapsed";
    case Phase::queued:
      return "queued";
    case Phase::waiting:
      return "waiting";
    case Phase::holding:
      return "holding";
    case Phase::responding:
      return "responding";
    case Phase::tunnel:
      return "tunnel";
    case Phase::done:
      return "done";
    case Phase::finished:
      return "finished";
  }
  return "?";
}

namespace {

// The phases each one goes on to (enter() checks it in builds with assertions). Any phase but the
// last ends in finished once neither the client nor a worker's connection is left.
[[maybe_unused]] bool may_enter(Proxy::Phase from, Proxy::Phase to) {
  using P = Proxy::Phase;
  if (to == P::finished) return from != P::finished;
  switch (from) {
    case P::routing:  // the body is read first, or the request goes to the pool; or valve's error
      return to == P::buffering || to == P::collapsed || to == P::queued || to == P::waiting ||
             to == P::responding;
    case P::buffering:  // the body is all here, or too big to buffer: to the pool
      return to == P::collapsed || to == P::queued || to == P::waiting || to == P::responding;
    case P::collapsed:  // the answer it waited for is stored (or not): it is served, or to the pool
      return to == P::queued || to == P::waiting || to == P::responding;
    case P::queued:  // a worker is free; or valve's error (queue timeout, shutdown, 413)
      return to == P::waiting || to == P::responding;
    case P::waiting:  // the answer's head: held back, passed on, or a 101; a worker that failed
                      // before it: the request goes to the pool again
      return to == P::holding || to == P::responding || to == P::tunnel || to == P::queued ||
             to == P::waiting;
    case P::holding:  // released; the whole answer read with no client left; a worker that failed
                      // within it: the request goes to the pool again
      return to == P::responding || to == P::done || to == P::queued || to == P::waiting;
    case P::responding:
    case P::tunnel:
      return to == P::done;
    case P::done:
    case P::finished:
      return false;
  }
  return false;
}

}  // namespace

void Proxy::enter(Phase next) {
  assert(may_enter(phase_, next));
  phase_ = next;
}

bool Proxy::retryable() const {
  return !retried_ && !has_body_ && (request_.method == "GET" || request_.method == "HEAD");
}

void Proxy::start() {
  has_body_ = request_.chunked || request_.content_length.value_or(0) > 0;
  body_chunked_ = request_.chunked;
  JobService *jobs = host_.jobs();
  if (jobs && JobService::is_job_target(request_.target)) return jobs->serve(*this);
  Routing routing = host_.route(request_, peer_ip_);
  if (!routing.app) {
    const std::string *host = request_.find("host");
    std::string prefixes;
    for (const Route &r : host_.routes())
      prefixes += (prefixes.empty() ? "" : ", ") + r.hostname + r.prefix;
    send_error(404, fmt::format("no route for {}{}; the routes are {}", host ? *host : "",
                                request_.target.substr(0, request_.target.find('?')), prefixes));
    return;
  }
  app_ = routing.app;
  upstream_target_ = request_.target;
  if (routing.route->strip_prefix && routing.route->prefix != "/") {
    upstream_target_ = strip_prefix(request_.target, routing.route->prefix);
    stripped_prefix_ = routing.route->prefix;
  }
  // A WebSocket handshake (RFC 6455 4.1: GET, HTTP/1.1, no body) goes to the worker with its
  // Upgrade headers. Any other Upgrade (h2c, ...) is dropped, as hop-by-hop headers are, and the
  // request is served as plain HTTP/1.1, as nginx does.
  websocket_ = request_.upgrade && request_.method == "GET" && !has_body_ &&
               request_.version_minor >= 1 && request_.has_token("upgrade", "websocket");
  affinity_ = request_.cookie(kAffinityCookie);
  client_key_ = valve::client_key(config().client_key, request_, peer_ip_);
  priority_ = request_priority(routing.route->priority, config().priority_header, request_,
                               client_ && client_->peer_trusted());
  // A job's run (job_service.hpp) queues behind interactive requests, and has its own limits.
  bool job_run = client_ && client_->job();
  if (job_run) priority_ = Priority::batch;
  timeout_ = job_run                      ? config().job_timeout
             : routing.route->timeout > 0 ? routing.route->timeout
                                          : config().timeout;
  queue_timeout_ =
      job_run ? std::max(config().queue_timeout, config().job_timeout) : config().queue_timeout;
  if (app_->cache && routing.route->cache_post) {
    cache_post_ = true;
    cache_key_headers_ = routing.route->cache_key_headers;
  }
  check_requests_ = routing.route->check_requests.value_or(config().check_requests);
  if (routing.route->batch.enabled()) {
    batch_ = routing.route->batch;
    batch_prefix_ = routing.route->prefix;
  }
  uint64_t limit = config().max_body_size;
  if (limit > 0 && request_.content_length.value_or(0) > limit) {
    send_error(413, fmt::format("request body of {} bytes is larger than the limit of {} bytes",
                                *request_.content_length, limit));
    return;
  }
  uint64_t buffer = config().request_buffer_size;
  // Prefer: respond-async: the body is read whole (it must fit request-buffer-size), then submit()
  // hands the request to the jobs, which answer 202.
  job_ = jobs && !websocket_ && jobs->wants_job(request_);
  if (job_ && has_body_ && (buffer == 0 || request_.content_length.value_or(0) > buffer)) {
    send_error(413,
               fmt::format("a job's request body must fit request-buffer-size ({} bytes)", buffer));
    return;
  }
  if (has_body_ && client_ && buffer > 0 && request_.content_length.value_or(0) <= buffer &&
      !ctx_.stopping()) {
    // Read the body whole first: a slow upload never holds a worker, and a malformed one (a bad
    // chunk) is refused before any worker has seen even its head.
    enter(Phase::buffering);
    send_continue();
    timer_.start(config().header_timeout);
    return;
  }
  submit();
}

// The pool places it at once: dispatch() (waiting), on_queued() (queued) or reject().
void Proxy::submit() {
  timer_.stop();
  if (ctx_.stopping()) {
    send_error(503, "the server is shutting down", "Retry-After: 1\r\n");
    return;
  }
  if (check_requests_) {  // the API's declared types (request_check.hpp): refused before any worker
    std::string_view body = pending_body_;
    Json detail = check_proxied(operation(), request_, upstream_target_,
                                request_complete_ || !has_body_ ? &body : nullptr);
    if (!detail.is_null()) {
      ++ctx_.stats().check_refusals;
      send_error(static_cast<int>(config().check_status),
                 "the request's parameters do not match the API's declared types", {}, &detail);
      return;
    }
  }
  if (job_) return host_.jobs()->submit(*this);
  if (app_->cache && cache_lookup()) return;
  // A whole JSON body for a batching route waits in a batch, unless a worker is free for it now.
  if (batch_.enabled() && request_complete_ &&
      batchable_request(request_, batch_prefix_, pending_body_)) {
    enter(Phase::queued);
    if (app_->batcher(batch_).offer(*this, client_key_, priority_)) return;
  }
  if (has_body_ && client_ && !request_complete_) client_->hold_body(true);
  app_->pool->submit(*this);
}

void Proxy::batch_alone(uint64_t avoid_worker) {
  batch_ = BatchSpec();
  if (avoid_worker != 0) excluded_worker_ = avoid_worker;
  app_->pool->submit(*this);
}

void Proxy::batch_failed(int status, std::string_view message, bool retry_after) {
  if (retry_after) {
    reject(status, message);
  } else {
    send_error(status, message);
  }
}

void Proxy::batch_answered(std::string_view json, uint64_t worker_id) {
  served_by_ = worker_id;
  status_ = 200;
  if (!client_) {
    maybe_finish();
    return;
  }
  enter(Phase::responding);
  client_keep_alive_ = request_.keep_alive && !ctx_.stopping();
  bool client_11 = request_.version_major == 1 && request_.version_minor >= 1;
  std::string out = fmt::format(
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
      "X-Request-Id: {}\r\n",
      json.size(), request_id_);
  if (ctx_.names_apps()) append(out, "Valve-App: {}\r\n", app_->name);
  out += client_keep_alive_ ? (client_11 ? "" : "Connection: keep-alive\r\n")
                            : "Connection: close\r\n";
  out += "\r\n";
  out += json;
  bytes_out_ = json.size();
  write_client(out);
  end_response();
  maybe_finish();
}

void Proxy::on_client_body(std::string_view data) {
  body_bytes_ += data.size();
  uint64_t limit = config().max_body_size;
  if (limit > 0 && body_bytes_ > limit) {
    // Only a chunked body can get here: a too-long Content-Length was refused up front.
    if (phase_ == Phase::queued) app_->pool->cancel(*this);
    if (upstream_) detach_upstream(false);
    send_error(413, fmt::format("request body is larger than the limit of {} bytes", limit));
    return;
  }
  if (phase_ == Phase::done || phase_ == Phase::finished) return;
  if (!upstream_) {
    pending_body_.append(data);
    if (phase_ == Phase::buffering) {
      uint64_t &budget = ctx_.stats().buffered_body_bytes;
      budget += data.size();
      buffered_ += data.size();
      if (pending_body_.size() > config().request_buffer_size || budget > kBufferedBodiesBudget) {
        submit();  // too big to buffer (a chunked body, or the budget is spent): it streams
      } else {
        timer_.start(config().header_timeout);  // the body is still arriving
      }
    }
    return;
  }
  if (!(body_chunked_ ? upstream_->send(chunk(data)) : upstream_->send(data)) && client_)
    client_->hold_body(true);
}

void Proxy::on_client_complete() {
  request_complete_ = true;
  if (phase_ == Phase::buffering) {
    submit();
    return;
  }
  if (upstream_ && body_chunked_) upstream_->send("0\r\n\r\n");  // before dispatch: added then
}

void Proxy::on_client_gone() {
  client_ = nullptr;
  Batcher::leave(*this);
  if (job_)  // it may wait for its job's answer (Prefer: wait=N)
    if (JobService *jobs = host_.jobs()) jobs->forget_waiter(*this);
  if (phase_ == Phase::queued) app_->pool->cancel(*this);
  if (phase_ == Phase::collapsed) app_->cache->stop_waiting(cache_key_, *this);
  drop_hold();  // what was held back cannot reach it now
  if (upstream_ && phase_ == Phase::tunnel) detach_upstream(false);  // it closed its WebSocket
  // A worker that has the whole request is busy with it: it gets no new request until it answers
  // (the response is read and dropped). One that got part of a body never started on it.
  if (upstream_ && !request_complete_) detach_upstream(false);
  // Reading may be paused for a slow client: the rest of the answer is now read and dropped.
  if (upstream_) upstream_->resume_reading();
  maybe_finish();
}

void Proxy::on_client_drained() {
  if (upstream_) upstream_->resume_reading();
}

void Proxy::on_tunnel_data(std::string_view data) {
  if (!upstream_) return;
  uint64_t now = uv_now(ctx_.loop());
  // Any byte shows the client is there; only data frames (or non-frames) count as activity.
  client_heard_ms_ = now;
  ping_sent_ms_ = 0;
  if (from_client_.feed(data).data || from_client_.broken()) tunnel_data_ms_ = now;
  if (!upstream_->send(std::string(data)) && client_) client_->hold_body(true);
}

void Proxy::on_queued() {
  if (phase_ != Phase::queued) enter(Phase::queued);  // a batch's member was already
  timer_.start(queue_timeout_);
}

void Proxy::reject(int status, std::string_view message) {
  ++(status == 429 ? ctx_.stats().client_limited : ctx_.stats().rejected);
  send_error(status, message, "Retry-After: 1\r\n");
}

void Proxy::dispatch(Worker &worker, UpstreamConn &conn) {
  enter(Phase::waiting);
  worker_ = &worker;
  if (websocket_) worker.hold_tunnel(true);  // until its request is over: --tunnel-workers-max
  served_by_ = worker.id();
  upstream_ = &conn;
  upstream_start_ns_ = uv_hrtime();
  if (dispatched_ns_ == 0) {
    dispatched_ns_ = upstream_start_ns_;
    double wait = (dispatched_ns_ - arrived_ns_) / 1e9;
    ctx_.stats().queue_wait.observe(wait);
    ctx_.stats().queue_wait_by_priority[static_cast<size_t>(priority_)].observe(wait);
  }
  conn.attach(*this);
  timer_.start(timeout_);
  if (client_) client_->on_dispatched();
  std::string out = upstream_head();
  if (!pending_body_.empty()) {
    out += body_chunked_ ? chunk(pending_body_) : pending_body_;
    pending_body_ = std::string();
    release_buffered();
  }
  if (body_chunked_ && request_complete_) out += "0\r\n\r\n";
  bool room = conn.send(out);
  if (client_ && !request_complete_) {
    send_continue();
    client_->hold_body(!room);
  }
}

void Proxy::send_continue() {
  if (continue_sent_ || !client_) return;
  const std::string *expect = request_.find("expect");
  if (!expect || !iequals(*expect, "100-continue")) return;
  client_->send("HTTP/1.1 100 Continue\r\n\r\n");
  continue_sent_ = true;
}

std::string Proxy::upstream_head() const {
  const Client *c = client_;
  bool trusted = c && c->peer_trusted();
  std::string out;
  out.reserve(512);
  append(out, "{} {} HTTP/1.1\r\n", request_.method, upstream_target_);
  const std::string *xff = nullptr;
  const std::string *xfproto = nullptr;
  const std::string *xfhost = nullptr;
  bool has_request_id = false;
  bool underscores = config().underscores_in_headers;
  for (const auto &h : request_.headers) {
    if (is_dropped_hop(request_, h.name)) continue;
    if (iequals(h.name, "expect")) continue;
    // plumber (httpuv) reads X_User and X-User as one variable, HTTP_X_USER: an underscore could
    // forge a header that a front proxy vouches for.
    if (!underscores && h.name.find('_') != std::string::npos) continue;
    if (iequals(h.name, "content-length") && body_chunked_) continue;
    if (iequals(h.name, "x-forwarded-for")) {
      xff = &h.value;
      continue;
    }
    if (iequals(h.name, "x-forwarded-proto")) {
      xfproto = &h.value;
      continue;
    }
    if (iequals(h.name, "x-forwarded-host")) {
      xfhost = &h.value;
      continue;
    }
    if (iequals(h.name, "x-forwarded-prefix") && !stripped_prefix_.empty()) continue;
    if (iequals(h.name, "x-request-id")) {
      if (has_request_id) continue;
      has_request_id = true;
      append(out, "X-Request-Id: {}\r\n", request_id_);
      continue;
    }
    append(out, "{}: {}\r\n", h.name, h.value);
  }
  if (!has_request_id) append(out, "X-Request-Id: {}\r\n", request_id_);
  if (!stripped_prefix_.empty()) append(out, "X-Forwarded-Prefix: {}\r\n", stripped_prefix_);
  if (websocket_) append(out, "Connection: Upgrade\r\nUpgrade: {}\r\n", *request_.find("upgrade"));
  if (xff)
    append(out, "X-Forwarded-For: {}, {}\r\n", *xff, peer_ip_);
  else
    append(out, "X-Forwarded-For: {}\r\n", peer_ip_);
  // A loopback peer is a front proxy we trust to say how the client reached it.
  append(out, "X-Forwarded-Proto: {}\r\n", trusted && xfproto ? *xfproto : "http");
  const std::string *host = request_.find("host");
  // An HTTP/1.0 request may have no Host; the HTTP/1.1 one the worker gets must (RFC 9112 3.2).
  if (!host) out += "Host: \r\n";
  if (trusted && xfhost) {
    append(out, "X-Forwarded-Host: {}\r\n", *xfhost);
  } else if (host) {
    append(out, "X-Forwarded-Host: {}\r\n", *host);
  }
  if (body_chunked_) out += "Transfer-Encoding: chunked\r\n";
  out += "\r\n";
  return out;
}

int Proxy::on_upstream_head(Head &head) {
  status_ = head.status;
  // An answer that parses is the app's, whatever its status (a 503 it sets, plumber's 405): the
  // worker works. Only what the parser refuses, or no answer, counts against it.
  if (worker_) {
    worker_->note_answered();
    worker_->note_request_result(true);
  }
  if (head.status == 101) return switch_protocols(head);
  timer_.start(timeout_);  // the rest of the answer gets a full timeout too
  bool head_request = request_.method == "HEAD";
  bool bodiless_status = head.status == 204 || head.status == 304;
  // An answer to HEAD, a 204 and a 304 have no body (RFC 9110 9.3.2, RFC 9112 6.3), but a server
  // may send the one its head announces all the same (plumber does after HEAD): that connection
  // is not used again.
  if ((head_request || bodiless_status) &&
      (head.chunked || head.content_length.value_or(0) > 0 ||
       (head_request && !head.content_length && !bodiless_status)))
    reuse_upstream_ = false;
  bool bodyless = head_request || bodiless_status;
  bool client_11 = request_.version_major == 1 && request_.version_minor >= 1;
  if (bodyless) {
    framing_ = Framing::none;
  } else if (head.content_length && !head.chunked) {
    framing_ = Framing::length;
  } else if (client_11) {
    framing_ = Framing::chunked;
  } else {
    framing_ = Framing::close;
  }
  client_keep_alive_ = request_.keep_alive && framing_ != Framing::close && !ctx_.stopping();

  std::string out;
  out.reserve(512);
  append(out, "HTTP/1.1 {} {}\r\n", head.status,
         head.reason.empty() ? status_reason(head.status) : head.reason);
  // A Content-Length stays where it frames the body valve sends, or describes a bodiless answer's
  // body; a 204 never has one (RFC 9110 8.6), while a 304's names the 200's size.
  append_worker_headers(
      out, head, (framing_ == Framing::length || framing_ == Framing::none) && head.status != 204);
  if (std::string cache_status = cache_answer_head(head); !cache_status.empty())
    append(out, "Cache-Status: {}\r\n", cache_status);
  if (worker_ && config().shiny() && affinity_ != worker_->affinity())
    append(out, "Set-Cookie: {}={}; Path=/; HttpOnly; SameSite=Lax\r\n", kAffinityCookie,
           worker_->affinity());
  if (framing_ == Framing::chunked) out += "Transfer-Encoding: chunked\r\n";
  out += client_keep_alive_ ? (client_11 ? "" : "Connection: keep-alive\r\n")
                            : "Connection: close\r\n";
  out += "\r\n";
  // A retryable request's answer is held back (the hold's timer starts if it is not all here); with
  // no client left none of it goes anywhere, and a failure is still no failure mid-answer.
  enter(client_ && !retryable() ? Phase::responding : Phase::holding);
  write_client(out);
  return head_request ? 1 : 0;
}

void Proxy::append_worker_headers(std::string &out, const Head &head,
                                  bool keep_content_length) const {
  bool has_request_id = false;
  for (const auto &h : head.headers) {
    if (is_dropped_hop(head, h.name)) continue;
    if (!keep_content_length && iequals(h.name, "content-length")) continue;
    if (iequals(h.name, "x-request-id")) has_request_id = true;
    if (ctx_.names_apps() && iequals(h.name, "valve-app")) continue;  // valve says which
    append(out, "{}: {}\r\n", h.name, h.value);
  }
  if (!has_request_id) append(out, "X-Request-Id: {}\r\n", request_id_);
  if (ctx_.names_apps()) append(out, "Valve-App: {}\r\n", app_->name);
}

int Proxy::switch_protocols(Head &head) {
  // The request timeout ends here: a WebSocket lasts until either side closes it.
  timer_.stop();
  drop_hold();
  enter(Phase::tunnel);
  client_keep_alive_ = false;
  std::string out = "HTTP/1.1 101 Switching Protocols\r\n";
  append_worker_headers(out, head, true);
  const std::string *upgrade = head.find("upgrade");
  out +=
      fmt::format("Connection: Upgrade\r\nUpgrade: {}\r\n\r\n", upgrade ? *upgrade : "websocket");
  write_client(std::move(out));
  ++ctx_.stats().websockets;
  ++ctx_.stats().websockets_open;
  if (worker_) worker_->note_tunnel(true);
  tunnel_opened_ms_ = tunnel_data_ms_ = client_heard_ms_ = uv_now(ctx_.loop());
  timer_.start(0);  // check_tunnel() sets the first deadline, once the 101 is parsed
  return 0;
}

void Proxy::on_upstream_switched(std::string_view early) {
  if (!client_) {
    // The client left before the worker's 101: nobody to tunnel for.
    detach_upstream(false);
    maybe_finish();
    return;
  }
  client_->start_tunnel();
  if (!early.empty()) on_upstream_tunnel_data(early);
}

void Proxy::on_upstream_tunnel_data(std::string_view data) {
  if (from_worker_.feed(data).data || from_worker_.broken()) tunnel_data_ms_ = uv_now(ctx_.loop());
  bytes_out_ += data.size();
  write_client(std::string(data));
}

void Proxy::on_upstream_body(std::string_view data) {
  if (data.empty() || framing_ == Framing::none) return;
  if (cache_answer_) {  // copied aside while it fits an entry
    if (cache_answer_->body.size() + data.size() > app_->cache->entry_max())
      cache_answer_.reset();
    else
      cache_answer_->body.append(data);
  }
  bytes_out_ += data.size();
  if (framing_ == Framing::chunked) {
    write_client(chunk(data));
  } else {
    write_client(data);  // written from the read buffer, copied only if the client lags
  }
}

void Proxy::on_upstream_unfinished() {
  if (phase_ == Phase::holding && client_ && !hold_timer_.active()) hold_timer_.start(kHoldSeconds);
}

void Proxy::on_upstream_complete(bool reusable) {
  cache_store();
  if (framing_ == Framing::chunked) write_client("0\r\n\r\n");
  end_response();
  detach_upstream(reusable && request_complete_ && reuse_upstream_);
  maybe_finish();
}

void Proxy::on_upstream_failed(std::string_view reason) {
  Worker *w = worker_;
  uint64_t worker_id = w ? w->id() : 0;
  if (phase_ == Phase::tunnel) {
    // The worker closed the WebSocket, or went away: what it sent reaches the client, then the
    // client's connection closes too.
    ctx_.log().debug("request {} {} {}: WebSocket to worker {} closed: {}", request_id_,
                     request_.method, request_.target, worker_id, reason);
    detach_upstream(false);
    end_response();
    maybe_finish();
    return;
  }
  // Nothing reached a worker that could not even be connected to: sending the request elsewhere
  // cannot run it twice, so it does not use up the one retry (a few times at most).
  bool never_sent = upstream_ && !upstream_->connected() && !has_body_;
  if (w) w->note_request_result(false);
  detach_upstream(false);
  drop_hold();  // what was held never reached the client: the request may still go elsewhere
  cache_answer_.reset();
  if (response_started()) {
    ctx_.log().warn("request {} {} {}: worker {} failed mid-answer ({}); closing the client",
                    request_id_, request_.method, request_.target, worker_id, reason);
    abort_client();
    return;
  }
  bool resend = never_sent && unsent_retries_ < kUnsentRetries;
  if (client_ && (resend || retryable()) && !ctx_.stopping()) {
    ctx_.log().warn("request {} {} {}: worker {} failed before answering ({}); {}", request_id_,
                    request_.method, request_.target, worker_id, reason,
                    resend ? "it never got the request: sending it to another" : "retrying once");
    if (resend) {
      ++unsent_retries_;
    } else {
      retried_ = true;
    }
    ++ctx_.stats().retries;
    excluded_worker_ = worker_id;
    app_->pool->submit(*this, true);
    return;
  }
  send_error(502, fmt::format("the worker failed before answering: {}", reason));
}

void Proxy::on_upstream_drained() {
  if (client_ && (phase_ == Phase::tunnel || !request_complete_)) client_->hold_body(false);
}

void Proxy::on_timeout() {
  if (phase_ == Phase::tunnel) {
    check_tunnel();
    return;
  }
  if (phase_ == Phase::buffering) {
    send_error(408, fmt::format("the request body did not arrive within {} s",
                                format_seconds(config().header_timeout)));
    return;
  }
  if (phase_ == Phase::collapsed) {
    app_->cache->stop_waiting(cache_key_, *this);
    app_->cache->count(&CacheCounts::lock_timeouts);
    app_->pool->submit(*this);  // it waited long enough: it goes on its own
    return;
  }
  if (phase_ == Phase::queued) {
    app_->pool->cancel(*this);
    reject(503, fmt::format("no worker was free within the queue timeout ({} s)",
                            format_seconds(queue_timeout_)));
    return;
  }
  Worker *w = worker_;
  if (!w) return;
  ++ctx_.stats().timeouts;
  ctx_.log().warn("request {} {} {}: worker {} gave no answer within {} s; replacing it",
                  request_id_, request_.method, request_.target, w->id(), format_seconds(timeout_));
  w->kill("a request timed out");  // first, so the pool gives it nothing more
  send_error(504, fmt::format("the worker gave no answer within {} s", format_seconds(timeout_)));
}

void Proxy::check_tunnel() {
  if (!upstream_ || !client_) return;
  const Config &cfg = config();
  uint64_t now = uv_now(ctx_.loop());
  uint64_t lifetime = to_ms(cfg.tunnel_max_lifetime);
  uint64_t idle = to_ms(cfg.tunnel_idle_timeout);
  uint64_t ping = to_ms(cfg.tunnel_ping_interval);
  if (lifetime > 0 && now >= tunnel_opened_ms_ + lifetime)
    return close_tunnel(
        "lifetime",
        fmt::format("open for {} s (tunnel-max-lifetime)", format_seconds(cfg.tunnel_max_lifetime)),
        "lifetime limit");
  if (idle > 0 && now >= tunnel_data_ms_ + idle)
    return close_tunnel("idle",
                        fmt::format("no data for {} s (tunnel-idle-timeout)",
                                    format_seconds(cfg.tunnel_idle_timeout)),
                        "idle timeout");
  uint64_t next = std::numeric_limits<uint64_t>::max();
  if (lifetime > 0) next = std::min(next, tunnel_opened_ms_ + lifetime);
  if (idle > 0) next = std::min(next, tunnel_data_ms_ + idle);
  // A frame can go to the client only between two of the worker's.
  if (ping > 0 && !from_worker_.broken()) {
    if (ping_sent_ms_ != 0) {
      if (now >= ping_sent_ms_ + ping)
        return close_tunnel("ping",
                            fmt::format("no answer to a ping within {} s (tunnel-ping-interval)",
                                        format_seconds(cfg.tunnel_ping_interval)),
                            "");
      next = std::min(next, ping_sent_ms_ + ping);
    } else if (now < client_heard_ms_ + ping) {
      next = std::min(next, client_heard_ms_ + ping);
    } else if (from_worker_.at_boundary()) {
      write_client(websocket::frame(websocket::Opcode::ping, kPingPayload));
      ping_sent_ms_ = now;
      next = std::min(next, now + ping);
    } else {
      next = std::min(next, now + to_ms(kPingRetrySeconds));
    }
  }
  if (next != std::numeric_limits<uint64_t>::max()) timer_.start((next - now) / 1000.0);
}

void Proxy::close_tunnel(const char *reason, std::string_view why, std::string_view close_text) {
  ctx_.log().info("request {} {} {}: closing its WebSocket to worker {}: {}", request_id_,
                  request_.method, request_.target, served_by_, why);
  tunnel_end_ = reason;
  // A client that does not answer pings may not read either: it is closed at once, not flushed.
  bool silent_client = std::string_view(reason) == "ping";
  std::string payload = websocket::close_payload(websocket::kGoingAway, close_text);
  if (upstream_ && !from_client_.broken() && from_client_.at_boundary()) {
    static thread_local std::mt19937 rng{std::random_device{}()};
    upstream_->send(websocket::masked_frame(websocket::Opcode::close, payload, rng()));
  }
  if (!silent_client && !from_worker_.broken() && from_worker_.at_boundary())
    write_client(websocket::frame(websocket::Opcode::close, payload));
  detach_upstream(false);  // the worker is free for other requests now
  if (silent_client) {
    abort_client();
    return;
  }
  end_response();
  maybe_finish();
}

void Proxy::send_error(int status, std::string_view message, std::string_view extra_headers,
                       const Json *detail) {
  timer_.stop();
  drop_hold();
  if (upstream_) detach_upstream(false);
  status_ = status;
  if (!client_ || response_started()) {
    abort_client();
    return;
  }
  enter(Phase::responding);  // valve's own answer
  // After an error the rest of the request may still be on the wire: close unless it was all read
  // (a bodiless request is, once its head is: valve's own 404 keeps a pipelined connection).
  client_keep_alive_ = request_.keep_alive && whole_request() && !ctx_.stopping();
  std::string headers(extra_headers);
  if (app_ && ctx_.names_apps()) headers += fmt::format("Valve-App: {}\r\n", app_->name);
  std::string answer =
      error_response(status, message, request_id_, client_keep_alive_, headers, detail);
  // An answer to HEAD is its head alone, Content-Length as a GET's would be (RFC 9110 9.3.2).
  if (request_.method == "HEAD") answer.resize(answer.find("\r\n\r\n") + 4);
  write_client(answer);
  end_response();
  maybe_finish();
}

void Proxy::send_answer(int status, std::string_view reason, std::string_view headers,
                        std::string_view body) {
  timer_.stop();
  status_ = status;
  if (!client_ || response_started()) {
    abort_client();
    return;
  }
  enter(Phase::responding);
  client_keep_alive_ = request_.keep_alive && whole_request() && !ctx_.stopping();
  std::string out = fmt::format("HTTP/1.1 {} {}\r\n{}{}\r\n", status, reason, headers,
                                client_keep_alive_ ? "" : "Connection: close\r\n");
  if (request_.method != "HEAD") out += body;
  bytes_out_ += body.size();
  write_client(out);
  end_response();
  maybe_finish();
}

void Proxy::cancel() {
  Worker *w = worker_;
  on_client_gone();  // out of the queue, or its answer is read and dropped
  if (w) w->kill("its job was cancelled");
}

void Proxy::abort_client() {
  // Part of an answer went out, or none can: the connection is the only way left to say so.
  if (client_) client_->close();
  client_ = nullptr;
  maybe_finish();
}

void Proxy::write_client(std::string_view data) {
  if (!client_) return;
  if (phase_ == Phase::holding) {
    held_ += data;
    if (held_.size() > kHoldBytes) release_hold();
    return;
  }
  if (!client_->send(data) && upstream_) upstream_->pause_reading();
}

void Proxy::release_hold() {
  if (phase_ != Phase::holding || !client_) return;
  hold_timer_.stop();
  enter(Phase::responding);
  write_client(std::exchange(held_, {}));
}

void Proxy::drop_hold() {
  hold_timer_.stop();
  held_.clear();
}

void Proxy::end_response() {
  release_hold();
  timer_.stop();
  if (phase_ == Phase::done || phase_ == Phase::finished) return;
  enter(Phase::done);
  if (Client *c = client_) {
    client_ = nullptr;
    c->response_done(client_keep_alive_ && whole_request());
  }
}

void Proxy::detach_upstream(bool reusable) {
  UpstreamConn *conn = upstream_;
  Worker *w = worker_;
  if (conn) {
    upstream_end_ns_ = uv_hrtime();
    if (phase_ != Phase::tunnel && app_)
      app_->counts.busy_seconds += (upstream_end_ns_ - upstream_start_ns_) / 1e9;
  }
  upstream_ = nullptr;
  worker_ = nullptr;
  if (conn && phase_ == Phase::tunnel) {
    --ctx_.stats().websockets_open;
    // A limit of valve's, or the side that left: the client once it is gone, else the worker.
    ctx_.stats().tunnels_closed[tunnel_end_ ? tunnel_end_ : client_ ? "worker" : "client"]++;
    if (w) w->note_tunnel(false);
  }
  if (conn && w && websocket_) w->hold_tunnel(false);
  // A 5xx, or no answer yet (valve's 502 or 504 may follow): what the worker printed meanwhile.
  if (conn && w && phase_ != Phase::tunnel && (status_ == 0 || status_ >= 500)) {
    worker_output_ = w->request_output();
    worker_pid_ = w->pid();
  }
  if (conn && w) {
    conn->detach();
    if (app_) app_->pool->done(*this);  // before the worker is free: it may take this client's next
    w->release(*conn, reusable);
  }
}

void Proxy::maybe_finish() {
  // Not while a worker's connection is attached, nor while the client waits for (the rest of) its
  // answer: client_ is null once the answer is done. A queued request always has its client (one
  // that leaves takes it out of the queue).
  if (phase_ == Phase::finished || upstream_ || client_) return;
  cache_land();  // it led identical requests and gave them nothing to share
  enter(Phase::finished);
  timer_.stop();
  record();
  host_.on_proxy_done(*this);
}

void Proxy::record() {
  uint64_t now = uv_hrtime();
  // Nothing was answered: the client left first (499, as nginx logs it).
  int status = status_ != 0 ? status_ : 499;
  double total_ms = (now - arrived_ns_) / 1e6;
  double queue_ms = ((dispatched_ns_ ? dispatched_ns_ : now) - arrived_ns_) / 1e6;
  double upstream_ms =
      upstream_start_ns_ ? ((upstream_end_ns_ ? upstream_end_ns_ : now) - upstream_start_ns_) / 1e6
                         : 0.0;
  Stats &stats = ctx_.stats();
  stats.by_class[std::min(status / 100, 5)]++;
  if (app_) app_->counts.answers[std::min(status / 100, 5)]++;
  stats.latency.observe(total_ms / 1000);
  if (app_) record_route(status, total_ms / 1000, dispatched_ns_ ? queue_ms / 1000 : -1);
  if (ctx_.wants_events()) {
    Json event = Json::object();
    event["event"] = "request_completed";
    event["request_id"] = request_id_;
    event["method"] = request_.method;
    event["target"] = request_.target;
    event["status"] = status;
    event["worker"] = served_by_;
    event["duration_ms"] = json_rounded(total_ms, 3);
    ctx_.emit(json_text(event));
  }
  AccessLog &log = ctx_.access_log();
  if (!log.enabled()) return;
  auto json_line = [&] {
    // One object per loop thread, its members set in place: the first line adds them in this
    // order, the next ones only replace values, at about two thirds of a new object's cost.
    static thread_local Json entry = Json::object();
    entry["time"] = utc_timestamp();
    entry["request_id"] = request_id_;
    entry["client"] = peer_ip_;
    entry["method"] = request_.method;
    entry["path"] = request_.target;
    entry["status"] = status;
    entry["bytes"] = bytes_out_;
    entry["worker"] = served_by_;
    entry["queue_ms"] = json_rounded(queue_ms, 3);
    entry["upstream_ms"] = json_rounded(upstream_ms, 3);
    entry["duration_ms"] = json_rounded(total_ms, 3);
    entry["app"] = app_ ? app_->name : "";
    return json_text(entry);
  };
  std::string line =
      log.json() ? json_line()
                 : fmt::format(
                       "{} {} \"{} {} HTTP/{}.{}\" {} {} id={} worker={} queue_ms={:.3f} "
                       "upstream_ms={:.3f} duration_ms={:.3f}",
                       utc_timestamp(), peer_ip_, request_.method, escape_for_log(request_.target),
                       request_.version_major, request_.version_minor, status, bytes_out_,
                       escape_for_log(request_id_), served_by_ ? std::to_string(served_by_) : "-",
                       queue_ms, upstream_ms, total_ms);
  if (!log.json() && ctx_.names_apps()) line += " app=" + (app_ ? app_->name : "-");
  if (log.add(line)) ctx_.defer([&log] { log.flush(); });
}

// ---- the cache ---------------------------------------------------------------------------------

namespace {

double now_seconds() { return static_cast<double>(unix_ms()) / 1000; }

bool safe_method(std::string_view m) {
  return m == "GET" || m == "HEAD" || m == "OPTIONS" || m == "TRACE";
}

}  // namespace

bool Proxy::cache_lookup() {
  Cache &cache = *app_->cache;
  const std::string &method = request_.method;
  const std::string *host_header = request_.find("host");
  std::string_view host = host_header ? std::string_view(*host_header) : std::string_view();
  bool get = method == "GET" || method == "HEAD";
  // A POST to a cache-post route, its body read whole (a body too big to buffer streams).
  bool post = method == "POST" && cache_post_ && request_complete_;
  if (!get && !post) {
    cache_forward_ = method == "POST" && cache_post_ ? CacheForward::bypass : CacheForward::method;
    return false;
  }
  // Ranges, and preconditions that a stored answer cannot weigh, go to the worker.
  if (websocket_ || request_.find("range") || request_.find("if-match") ||
      request_.find("if-unmodified-since") || request_.find("if-range")) {
    cache_forward_ = CacheForward::bypass;
    return false;
  }
  cache_key_ =
      post ? Cache::post_key(host, request_.target, pending_body_, request_, cache_key_headers_)
           : Cache::key(method, host, request_.target);
  cache_request_time_ = now_seconds();
  Cache::Lookup found = cache.lookup(cache_key_, request_, cache_request_time_);
  if (found.answer) {
    cache.count(&CacheCounts::hits);
    serve_cached(found, false);
    return true;
  }
  cache_forward_ = found.forward;
  CacheControl cc = parse_cache_control(request_);
  if (cc.only_if_cached) {
    cache.count(&CacheCounts::misses);
    send_error(504,
               "the request asked for a stored answer only (only-if-cached) and the cache "
               "has none that may serve it",
               "Cache-Status: valve; detail=only-if-cached\r\n");
    return true;
  }
  cache.count(&CacheCounts::misses);
  // Identical requests at once: the first goes to a worker, the others wait for its answer.
  bool conditional = request_.find("if-none-match") || request_.find("if-modified-since");
  if (method == "HEAD" || conditional || cc.no_store || found.forward == CacheForward::request ||
      !(config().cache_lock_timeout > 0))
    return false;
  if (cache.lead(cache_key_)) {
    cache_leads_ = true;
    return false;
  }
  cache.wait(cache_key_, *this);
  enter(Phase::collapsed);
  timer_.start(config().cache_lock_timeout);
  return true;
}

void Proxy::on_flight_over() {
  timer_.stop();
  Cache &cache = *app_->cache;
  Cache::Lookup found = cache.lookup(cache_key_, request_, now_seconds());
  if (found.answer) {
    cache.count(&CacheCounts::coalesced);
    serve_cached(found, true);
    return;
  }
  app_->pool->submit(*this);  // nothing to share (an error, an uncacheable answer, Vary)
}

void Proxy::serve_cached(const Cache::Lookup &found, bool collapsed) {
  const CachedAnswer &answer = *found.answer;
  status_ = found.not_modified ? 304 : answer.status;
  enter(Phase::responding);
  client_keep_alive_ = request_.keep_alive && whole_request() && !ctx_.stopping();
  std::string extra;
  if (!answer.find("x-request-id")) append(extra, "X-Request-Id: {}\r\n", request_id_);
  if (ctx_.names_apps()) append(extra, "Valve-App: {}\r\n", app_->name);
  bool client_11 = request_.version_major == 1 && request_.version_minor >= 1;
  extra += client_keep_alive_ ? (client_11 ? "" : "Connection: keep-alive\r\n")
                              : "Connection: close\r\n";
  std::string status = collapsed ? fmt::format("valve; fwd=miss; collapsed; ttl={}", found.ttl)
                                 : fmt::format("valve; hit; ttl={}", found.ttl);
  std::string out = cached_head(answer, found, status, extra);
  if (request_.method != "HEAD" && !found.not_modified) {
    out += answer.body;
    bytes_out_ += answer.body.size();
  }
  write_client(out);
  end_response();
  maybe_finish();
}

std::string Proxy::cache_answer_head(const Head &head) {
  Cache *cache = app_ ? app_->cache.get() : nullptr;
  if (!cache) return {};
  if (cache_key_.empty()) {
    // RFC 9111 4.4: a non-error answer to an unsafe method makes the stored answers for its URI,
    // and for the ones its Location and Content-Location name on this host, invalid.
    bool ok = head.status >= 200 && head.status < 400;
    if (ok && cache_forward_ == CacheForward::method && !safe_method(request_.method)) {
      const std::string *host_header = request_.find("host");
      std::string_view host = host_header ? std::string_view(*host_header) : std::string_view();
      cache->invalidate(host, request_.target);
      for (const char *name : {"location", "content-location"}) {
        const std::string *uri = head.find(name);
        if (uri && uri->starts_with('/') && !uri->starts_with("//")) cache->invalidate(host, *uri);
      }
    }
    return fmt::format("valve; fwd={}", cache_forward_name(cache_forward_));
  }
  std::string status =
      fmt::format("valve; fwd={}; fwd-status={}", cache_forward_name(cache_forward_), head.status);
  if (request_.method == "HEAD") return status;
  if (auto refused = Cache::refuses(request_, head)) {
    std::string detail = *refused;
    std::replace(detail.begin(), detail.end(), ' ', '-');
    return status + "; detail=" + detail;
  }
  if (head.content_length.value_or(0) > cache->entry_max()) return status + "; detail=too-big";
  cache_answer_ = std::make_unique<CachedAnswer>(
      Cache::make_answer(request_, head, cache_request_time_, now_seconds()));
  if (head.content_length && !head.chunked) status += "; stored";
  return status;
}

void Proxy::cache_store() {
  if (cache_answer_) {
    app_->cache->store(cache_key_, std::move(*cache_answer_));
    cache_answer_.reset();
  }
  cache_land();
}

void Proxy::cache_land() {
  if (!cache_leads_) return;
  cache_leads_ = false;
  app_->cache->land(cache_key_);
}

const ApiOperation *Proxy::operation() {
  if (!spec_) {
    spec_ = app_->pool->spec();
    if (!spec_) return nullptr;
    std::string_view path(upstream_target_);
    operation_ = spec_->match(request_.method, path.substr(0, path.find('?')));
  }
  return operation_;
}

void Proxy::record_route(int status, double seconds, double queue_seconds) {
  // A view into the spec the proxy holds (spec_), the one its request was checked against.
  const ApiOperation *op = operation();
  std::string_view route = op ? std::string_view(op->path_template) : kUnmatchedRoute;
  app_->counts.count_route(route, status, seconds, queue_seconds);
  if (status < 500 || served_by_ == 0) return;  // valve's own 503s never reached a worker
  ErrorReport report;
  report.time_ms = unix_ms();
  report.app = app_->name;
  report.route = std::string(route);
  report.method = request_.method;
  report.target = request_.target;
  report.status = status;
  report.request_id = request_id_;
  report.worker = served_by_;
  report.pid = worker_pid_;
  report.error = r_error_text(worker_output_);
  report.output = std::move(worker_output_);
  ++ctx_.stats().error_reports;
  ctx_.errors().add(std::move(report));
}


}  // namespace valve
