// Micro-batching: concurrent JSON requests to one route gathered into one request to the API's
// batch route (a JSON array of their bodies), whose array answer is split back, one element each.
// A batch waits in the pool's queue as any request does; members join it while it waits, so
// batches grow with the queue and add no wait of their own. An idle pool sends requests alone.
#pragma once

#include <array>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "http.hpp"
#include "pool.hpp"
#include "router.hpp"
#include "upstream.hpp"
#include "util.hpp"

namespace valve {

class Context;
class Worker;
class Batch;

// Whether a request may join a batch: a POST whose path (query aside) is exactly prefix, with a
// JSON Content-Type and a body that is one JSON value (so that no body can change the array).
bool batchable_request(const Head &request, std::string_view prefix, std::string_view body);
// The batch route's body: the members' bodies as one JSON array.
std::string batch_body(const std::vector<std::string_view> &bodies);
// The batch route's answer split into n JSON texts, one per member; nullopt unless it is a 2xx
// whose body is a JSON array of n elements.
std::optional<std::vector<std::string>> split_batch_answer(int status, std::string_view body,
                                                           size_t n);

class Batcher {
 public:
  // A request in a batch (a proxy): what it sends, and how it is answered.
  class Member {
   public:
    virtual const Head &request() const = 0;
    virtual const std::string &request_id() const = 0;
    virtual std::string_view batch_request_body() const = 0;
    // Its element of the batch's answer (a JSON text), from the worker worker_id.
    virtual void batch_answered(std::string_view json, uint64_t worker_id) = 0;
    // The batch failed or was refused: valve's error for it.
    virtual void batch_failed(int status, std::string_view message, bool retry_after) = 0;
    // The batch failed: it goes alone to its route, as a request of its own, avoiding the worker
    // that failed it (0: none).
    virtual void batch_alone(uint64_t avoid_worker) = 0;
    bool in_batch() const { return batch_ != nullptr; }

   protected:
    ~Member() = default;

   private:
    friend class Batch;
    friend class Batcher;
    Batch *batch_ = nullptr;
  };

  Batcher(Context &ctx, Pool &pool, const Config &config, BatchSpec spec);
  ~Batcher();
  Batcher(const Batcher &) = delete;
  Batcher &operator=(const Batcher &) = delete;

  // Takes the request into a batch (true), or leaves it to go alone (false): when a worker is free
  // and nothing waits.
  bool offer(Member &member, const std::string &client_key, Priority priority);
  // The member's client left: it leaves its batch (a batch still waiting with no one left is
  // withdrawn; an answer for it is dropped).
  static void leave(Member &member);

  const BatchSpec &spec() const { return spec_; }
  Context &context() { return ctx_; }
  Pool &pool() { return pool_; }
  const Config &config() const { return config_; }
  // A batch is over: it is deleted after the current callback.
  void finished(Batch &batch);
  // The batch was handed to a worker: members join a new one.
  void closed(Batch &batch);

 private:
  bool pool_idle() const;

  Context &ctx_;
  Pool &pool_;
  const Config &config_;
  BatchSpec spec_;
  std::list<std::unique_ptr<Batch>> batches_;
  std::array<Batch *, kPriorities> open_{};  // per class: waiting in the queue, taking members
};

// One batch: a request in the pool's queue, then on a worker's connection.
class Batch final : public Pool::Request, public UpstreamConn::Handler {
 public:
  enum class Phase { open, sent, over };

  Batch(Batcher &batcher, const Head &first, std::string client_key, Priority priority);
  ~Batch();
  Batch(const Batch &) = delete;
  Batch &operator=(const Batch &) = delete;

  void add(Batcher::Member &member);
  void remove(Batcher::Member &member);
  size_t size() const { return live_; }
  Phase phase() const { return phase_; }
  // Withdraws it from the pool and the worker (the batcher ends first).
  void abandon();

  // ---- Pool::Request
  const Head &request() const override { return head_; }
  uint64_t excluded_worker() const override { return 0; }
  const std::string &affinity() const override { return affinity_; }
  const std::string &client_key() const override { return client_key_; }
  Priority priority() const override { return priority_; }
  void dispatch(Worker &worker, UpstreamConn &conn) override;
  void on_queued() override;
  void reject(int status, std::string_view message) override;

  // ---- UpstreamConn::Handler
  bool websocket() const override { return false; }
  int on_upstream_head(Head &head) override;
  void on_upstream_body(std::string_view data) override;
  void on_upstream_complete(bool reusable) override;
  void on_upstream_unfinished() override {}
  void on_upstream_failed(std::string_view reason) override;
  void on_upstream_drained() override {}
  void on_upstream_switched(std::string_view) override {}
  void on_upstream_tunnel_data(std::string_view) override {}

 private:
  std::string upstream_request() const;
  void detach(bool reusable);
  void on_timeout();
  // Each member gets its element, or the failure (alone with batch-retry-singly).
  void deliver(int status, std::string_view body);
  void fail(int status, std::string message, uint64_t failed_worker = 0);
  void end();

  Batcher &batcher_;
  Head head_;  // the first member's, for the queue and the headers the worker gets
  std::string id_;
  std::string client_key_;
  std::string affinity_;
  Priority priority_;
  Phase phase_ = Phase::open;
  std::vector<Batcher::Member *> members_;  // null where one left
  size_t live_ = 0;
  UpstreamConn *upstream_ = nullptr;
  Worker *worker_ = nullptr;
  uint64_t worker_id_ = 0;
  int status_ = 0;
  std::string answer_;
  bool too_big_ = false;
  Timer timer_;
};

}  // namespace valve
