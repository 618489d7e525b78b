// The proxy: one request and its response, joining a client connection to a worker.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cache.hpp"
#include "batcher.hpp"
#include "http.hpp"
#include "pool.hpp"
#include "upstream.hpp"
#include "util.hpp"
#include "websocket.hpp"

namespace valve {

class Context;
class JobService;
class Worker;
struct ApiOperation;
struct App;
struct Config;
struct Route;
struct Routing;

class Proxy final : public Pool::Request,
                    public UpstreamConn::Handler,
                    public Cache::Waiter,
                    public Batcher::Member {
 public:
  // Where the exchange is, in the order the phases come (response_started() relies on it): a retry
  // goes from waiting or holding back to queued or waiting, and any phase may end in finished.
  // Whether the client is still there is apart from it: client_ is null once it left (or once its
  // answer is done). proxy.cpp's may_enter() lists every transition.
  enum class Phase {
    routing,     // made: start() routes it and checks it
    buffering,   // the body is read whole before the request goes to the pool
    collapsed,   // waits for the answer to an identical request a worker has (the cache)
    queued,      // in the pool's queue, waiting for a free worker
    waiting,     // a worker has the request; the head of its answer has not come
    holding,     // the answer has begun and none of it reached the client: it is held back while
                 // the request may still go to another worker (or no client is left to get it)
    responding,  // the client is getting an answer: the worker's, or valve's own error
    tunnel,      // the worker switched protocols (101): bytes pass both ways unparsed
    done,        // the answer is over: the client's connection was handed back
    finished,    // recorded, and the host told: nothing more happens
  };
  static const char *phase_name(Phase phase);

  // The client connection the request came on (a ClientConn): what the answer is written to.
  class Client {
   public:
    virtual const std::string &peer_ip() const = 0;
    // The peer is a trusted proxy: its X-Forwarded-For is kept.
    virtual bool peer_trusted() const = 0;
    // Writes bytes of the answer. True while the write queue is below its high mark.
    virtual bool send(std::string_view data) = 0;
    // The answer is all written: the next pipelined request is parsed, or the connection closes.
    virtual void response_done(bool keep_alive) = 0;
    // Block or unblock reading the request body (or, in a tunnel, what the client sends).
    virtual void hold_body(bool hold) = 0;
    // The worker switched protocols: the client's bytes go unparsed to on_tunnel_data().
    virtual void start_tunnel() = 0;
    virtual void close() = 0;
    // A job's own client (job_service.hpp): its request runs with --job-timeout, in the batch
    // class. It hears when a worker takes the request.
    virtual bool job() const { return false; }
    virtual void on_dispatched() {}

   protected:
    ~Client() = default;
  };

  // Who routes requests and keeps the proxies.
  class Host {
   public:
    // The app for a request (none when no route matches); the app counts it in progress.
    virtual Routing route(const Head &request, std::string_view peer_ip) = 0;
    virtual const std::vector<Route> &routes() const = 0;
    // The proxy is over: the host forgets it (and deletes it after the current callback).
    virtual void on_proxy_done(Proxy &proxy) = 0;
    // Who takes Prefer: respond-async requests and answers /_valve/jobs/ (null: nobody).
    virtual JobService *jobs() { return nullptr; }
    // The settings of the app of that name that serves now (a reload's new one once it does),
    // or null when none does: the jobs read their bound on workers (jobs-workers-max) from it.
    virtual const Config *app_config(std::string_view app) {
      (void)app;
      return nullptr;
    }

   protected:
    ~Host() = default;
  };

  Proxy(Context &ctx, Host &host, Client &client, Head request);
  ~Proxy();
  Proxy(const Proxy &) = delete;
  Proxy &operator=(const Proxy &) = delete;

  // ---- from the client connection
  void start();
  void on_client_body(std::string_view data);
  void on_client_complete();
  void on_client_gone();
  void on_client_drained();
  // Tunnel bytes from the client (after a 101).
  void on_tunnel_data(std::string_view data);

  // ---- from the jobs (job_service.hpp)
  // valve's own answer: the status line, then headers (each ending in CRLF, Content-Length among
  // them), then the body (left out for HEAD). Connection: close is added when the client's
  // connection cannot stay open.
  void send_answer(int status, std::string_view reason, std::string_view headers,
                   std::string_view body);
  void send_error(int status, std::string_view message, std::string_view extra_headers = {},
                  const nlohmann::ordered_json *detail = nullptr);
  // The body read whole before submit() (a job's request body).
  const std::string &buffered_body() const { return pending_body_; }
  const std::string &peer_ip() const { return peer_ip_; }
  bool peer_trusted() const { return client_ && client_->peer_trusted(); }
  // A job's request is cancelled: it leaves the queue, or its worker is stopped (and replaced).
  void cancel();

  // ---- Pool::Request: from the pool
  void on_queued() override;
  void dispatch(Worker &worker, UpstreamConn &conn) override;
  // Ends a queued request with 503 (queue full, queue timeout, shutting down) or 429 (its client
  // has too many waiting).
  void reject(int status, std::string_view message) override;

  // ---- UpstreamConn::Handler: from the worker's connection
  int on_upstream_head(Head &head) override;
  void on_upstream_body(std::string_view data) override;
  void on_upstream_complete(bool reusable) override;
  void on_upstream_unfinished() override;
  void on_upstream_failed(std::string_view reason) override;
  void on_upstream_drained() override;
  void on_upstream_tunnel_data(std::string_view data) override;
  void on_upstream_switched(std::string_view early) override;

  // ---- Cache::Waiter: the identical request it waited for has its answer
  void on_flight_over() override;
  // ---- Batcher::Member: a batch it joined (batcher.hpp) answers it
  std::string_view batch_request_body() const override { return pending_body_; }
  void batch_answered(std::string_view json, uint64_t worker_id) override;
  void batch_failed(int status, std::string_view message, bool retry_after) override;
  void batch_alone(uint64_t avoid_worker) override;

  bool retryable() const;
  // All of the request has been read (a bodiless one once its head is).
  bool whole_request() const { return request_complete_ || !has_body_; }
  uint64_t excluded_worker() const override { return excluded_worker_; }
  const Head &request() const override { return request_; }
  const std::string &request_id() const override { return request_id_; }
  // Valve began answering the client (the worker's answer passed on, its 101, or valve's own
  // error): no other answer can be given. Asked by the client's connection, while it is there.
  bool response_started() const { return phase_ >= Phase::responding; }
  Phase phase() const { return phase_; }
  const char *phase_name() const { return phase_name(phase_); }
  // The app the routes chose (null before, or when none matched).
  App *app() const { return app_; }
  // A WebSocket handshake, passed on to the worker with its Upgrade headers.
  bool websocket() const override { return websocket_; }
  // The worker the client's session is pinned to (the valve_worker cookie), "" when none.
  const std::string &affinity() const override { return affinity_; }
  const std::string &client_key() const override { return client_key_; }
  Priority priority() const override { return priority_; }

 private:
  enum class Framing { none, length, chunked, close };

  // To the app's pool, once the body is buffered (or at once when it streams).
  void submit();
  void release_buffered();  // pending_body_ is sent or dropped: out of the server's budget
  // Expect: 100-continue is answered once, when valve starts reading the body.
  void send_continue();
  // The worker's end-to-end headers, then X-Request-Id (unless it set one) and Valve-App: what
  // every answer's head passes on. keep_content_length: whether the worker's Content-Length stays.
  void append_worker_headers(std::string &out, const Head &head, bool keep_content_length) const;
  int switch_protocols(Head &head);  // the worker's 101: tell the client, then tunnel
  void abort_client();  // closes the client's connection (if any) and ends the proxy
  void write_client(std::string_view data);
  void release_hold();     // sends what was held back
  void drop_hold();        // forgets it
  void enter(Phase next);  // every change of phase_ goes through here
  void end_response();
  void detach_upstream(bool reusable);
  void on_timeout();
  // A tunnel's limits (idle, lifetime, ping): checked at each deadline, the timer set to the next.
  void check_tunnel();
  // Ends the tunnel at one of valve's limits (reason: a label of valve_tunnels_closed_total): a
  // Close frame (code 1001) to each side that is between frames, then the worker is released.
  void close_tunnel(const char *reason, std::string_view why, std::string_view close_text);
  void maybe_finish();
  void record();  // metrics and the access log, once the request is over
  // The figures of the request's route template, and an error report for a worker's 5xx.
  void record_route(int status, double seconds, double queue_seconds);
  // The spec's operation for the request (its path as the worker gets it), or null: matched once.
  const ApiOperation *operation();
  std::string upstream_head() const;

  const Config &config() const;  // the app's, once routed; the server's before

  // The cache (cache.hpp), with its app's cache-size. cache_lookup(): true when the cache
  // answered the request or it now waits for an identical one. cache_answer_head(): the answer's
  // Cache-Status, and whether it is copied aside to be stored; cache_store(): it is whole.
  bool cache_lookup();
  void serve_cached(const Cache::Lookup &found, bool collapsed);
  std::string cache_answer_head(const Head &head);
  void cache_store();
  void cache_land();  // a flight it leads is over: its waiters look again or go on alone

  Context &ctx_;
  Host &host_;
  App *app_ = nullptr;           // where the routes sent it
  std::string upstream_target_;  // the target the worker gets (its prefix stripped)
  std::string stripped_prefix_;  // sent as X-Forwarded-Prefix
  Client *client_;
  UpstreamConn *upstream_ = nullptr;
  Worker *worker_ = nullptr;
  Head request_;
  std::string request_id_;
  std::string peer_ip_;
  Phase phase_ = Phase::routing;
  std::string pending_body_;  // body read before the worker's connection could take it
  // What the request is, fixed by start(): whether it has a body, forwarded with chunked framing,
  // and whether it is a WebSocket handshake.
  bool has_body_ = false;
  bool body_chunked_ = false;
  bool websocket_ = false;
  bool check_requests_ = false;  // its route's check-requests, else its app's
  // The app's spec when operation() first asked, and the operation of it the request matches:
  // matched once, for the type check and for the per-route figures.
  std::shared_ptr<const ApiSpec> spec_;
  const ApiOperation *operation_ = nullptr;
  std::string affinity_;
  std::string client_key_;  // whose request it is, for the fair queue
  Priority priority_ = Priority::normal;
  // Set by start(): a worker's time to answer (--timeout, the route's timeout, or --job-timeout
  // for a job's run) and the time it may wait in the queue. job_: the request asked to be a job.
  double timeout_ = 0;
  double queue_timeout_ = 0;
  bool job_ = false;
  BatchSpec batch_;           // the route's micro-batching: off once the request goes alone
  std::string batch_prefix_;  // the route's path, the one path that is batched
  uint64_t body_bytes_ = 0;
  // The client sent all of its request: the client's side, which ends apart from the answer (a
  // worker may answer before the body is all read).
  bool request_complete_ = false;
  uint64_t buffered_ = 0;       // of pending_body_, counted in Stats::buffered_body_bytes
  bool continue_sent_ = false;  // 100 Continue went to the client: it is sent once at most
  // False once the answer's head announced a body that a HEAD, 204 or 304 answer must not have:
  // the worker's connection is closed after this answer. A fact about the answer, not a phase.
  bool reuse_upstream_ = true;
  bool retried_ = false;         // the one retry is spent: a second failure is the client's 502
  unsigned unsent_retries_ = 0;  // sent elsewhere after a worker could not be connected to
  uint64_t excluded_worker_ = 0;
  // The client's connection stays open after this answer: decided by the answer's head (or the
  // error valve sends), used when the connection is handed back.
  bool client_keep_alive_ = true;
  Framing framing_ = Framing::none;
  int status_ = 0;
  uint64_t arrived_ns_;
  uint64_t dispatched_ns_ = 0;      // first handed to a worker (0: never)
  uint64_t upstream_start_ns_ = 0;  // the last worker got it
  uint64_t upstream_end_ns_ = 0;    // ... and finished answering or failed
  uint64_t bytes_out_ = 0;          // body bytes sent to the client
  uint64_t served_by_ = 0;          // the worker that took it last (0: none)
  // The cache: the request's key ("" when the cache does not serve it), why it went to a worker,
  // whether it leads identical requests, the answer being copied aside, the POST route's options.
  std::string cache_key_;
  CacheForward cache_forward_ = CacheForward::none;
  bool cache_leads_ = false;
  std::unique_ptr<CachedAnswer> cache_answer_;
  double cache_request_time_ = 0;
  bool cache_post_ = false;
  std::vector<std::string> cache_key_headers_;
  // What that worker printed during the request, and its pid: kept for a 5xx (error_reports.hpp).
  std::vector<std::string> worker_output_;
  pid_t worker_pid_ = 0;
  Timer timer_;
  std::string held_;  // the answer so far, while holding (see kHoldBytes)
  Timer hold_timer_;
  // In a tunnel: the frames each way, and when (uv_now, ms) it opened, last passed data either way,
  // last heard from the client, and sent a ping still unanswered (0: none).
  FrameTracker from_worker_;
  FrameTracker from_client_;
  uint64_t tunnel_opened_ms_ = 0;
  uint64_t tunnel_data_ms_ = 0;
  uint64_t client_heard_ms_ = 0;
  uint64_t ping_sent_ms_ = 0;
  const char *tunnel_end_ = nullptr;  // the limit that closed it; else the side that did
};

}  // namespace valve
