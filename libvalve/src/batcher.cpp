#include "batcher.hpp"

#include <fmt/format.h>

#include <iterator>
#include <utility>

#include "context.hpp"
#include "json.hpp"
#include "stats.hpp"
#include "worker.hpp"

namespace valve {

namespace {

// A batch's answer is read whole before it is split: past this it is malformed.
constexpr size_t kMaxAnswerBytes = 64 << 20;

template <typename... A>
void append_format(std::string &out, fmt::format_string<A...> f, A &&...a) {
  fmt::format_to(std::back_inserter(out), f, std::forward<A>(a)...);
}

bool json_media_type(const std::string *content_type) {
  if (!content_type) return false;
  std::string_view v = trim(std::string_view(*content_type).substr(0, content_type->find(';')));
  return iequals(v, "application/json");
}

}  // namespace

bool batchable_request(const Head &request, std::string_view prefix, std::string_view body) {
  if (request.method != "POST") return false;
  std::string_view target = request.target;
  if (target.substr(0, target.find('?')) != prefix) return false;
  if (!json_media_type(request.find("content-type"))) return false;
  return !body.empty() && Json::accept(body);
}

std::string batch_body(const std::vector<std::string_view> &bodies) {
  size_t size = 2;
  for (std::string_view b : bodies) size += b.size() + 1;
  std::string out;
  out.reserve(size);
  out += '[';
  for (size_t i = 0; i < bodies.size(); ++i) {
    if (i > 0) out += ',';
    out += bodies[i];
  }
  out += ']';
  return out;
}

std::optional<std::vector<std::string>> split_batch_answer(int status, std::string_view body,
                                                           size_t n) {
  if (status < 200 || status > 299) return std::nullopt;
  Json answer = Json::parse(body, nullptr, false);
  if (answer.is_discarded() || !answer.is_array() || answer.size() != n) return std::nullopt;
  std::vector<std::string> parts;
  parts.reserve(n);
  for (const Json &element : answer)
    parts.push_back(element.dump(-1, ' ', false, Json::error_handler_t::replace));
  return parts;
}

// ---- Batcher

Batcher::Batcher(Context &ctx, Pool &pool, const Config &config, BatchSpec spec)
    : ctx_(ctx), pool_(pool), config_(config), spec_(std::move(spec)) {}

Batcher::~Batcher() {
  for (auto &b : batches_) b->abandon();
}

bool Batcher::pool_idle() const {
  if (pool_.queue_depth() > 0) return false;
  for (const auto &w : pool_.workers()) {
    if (w->accepting() && w->in_flight() < config_.concurrency()) return true;
  }
  return false;
}

bool Batcher::offer(Member &member, const std::string &client_key, Priority priority) {
  Batch *&open = open_[static_cast<size_t>(priority)];
  if (open && open->size() < spec_.max) {
    open->add(member);
    return true;
  }
  // No wait when a worker is free and nothing else is queued: the request goes alone.
  if (pool_idle()) return false;
  batches_.push_back(std::make_unique<Batch>(*this, member.request(), client_key, priority));
  Batch &batch = *batches_.back();
  open = &batch;
  batch.add(member);
  pool_.submit(batch);  // queued (members join it), dispatched, or refused
  return true;
}

void Batcher::leave(Member &member) {
  if (member.batch_) member.batch_->remove(member);
}

void Batcher::closed(Batch &batch) {
  for (Batch *&open : open_) {
    if (open == &batch) open = nullptr;
  }
}

void Batcher::finished(Batch &batch) {
  closed(batch);
  ctx_.defer_erase(batches_, &batch);
}

// ---- Batch

Batch::Batch(Batcher &batcher, const Head &first, std::string client_key, Priority priority)
    : batcher_(batcher),
      head_(first),
      id_(random_hex(16)),
      client_key_(std::move(client_key)),
      priority_(priority),
      timer_(batcher.context().loop(), [this] { on_timeout(); }) {
  head_.target = batcher_.spec().path;
}

Batch::~Batch() = default;

void Batch::add(Batcher::Member &member) {
  members_.push_back(&member);
  member.batch_ = this;
  if (++live_ >= batcher_.spec().max) batcher_.closed(*this);  // full: the next opens another
}

void Batch::remove(Batcher::Member &member) {
  for (auto &m : members_) {
    if (m == &member) m = nullptr;
  }
  member.batch_ = nullptr;
  --live_;
  if (phase_ == Phase::open && live_ == 0) {
    batcher_.pool().cancel(*this);
    end();
  }
}

void Batch::abandon() {
  for (auto *m : members_) {
    if (m) m->batch_ = nullptr;
  }
  members_.clear();
  live_ = 0;
  if (phase_ == Phase::open) batcher_.pool().cancel(*this);
  detach(false);
  phase_ = Phase::over;
  timer_.stop();
}

void Batch::on_queued() { timer_.start(batcher_.config().queue_timeout); }

void Batch::reject(int status, std::string_view message) {
  timer_.stop();
  std::vector<Batcher::Member *> members = std::exchange(members_, {});
  live_ = 0;
  for (auto *m : members) {
    if (!m) continue;
    m->batch_ = nullptr;
    m->batch_failed(status, message, true);
  }
  end();
}

void Batch::dispatch(Worker &worker, UpstreamConn &conn) {
  phase_ = Phase::sent;
  batcher_.closed(*this);
  std::erase(members_, nullptr);
  worker_ = &worker;
  worker_id_ = worker.id();
  upstream_ = &conn;
  conn.attach(*this);
  Stats &stats = batcher_.context().stats();
  ++stats.batches;
  stats.batched_requests += members_.size();
  const Logger &log = batcher_.context().log();
  if (log.enabled(LogLevel::debug)) {
    std::string ids;
    for (auto *m : members_) ids += (ids.empty() ? "" : " ") + m->request_id();
    log.debug("batch {} of {} requests to worker {} ({}): {}", id_, members_.size(), worker_id_,
              batcher_.spec().path, ids);
  }
  timer_.start(batcher_.config().timeout);
  conn.send(upstream_request());
}

std::string Batch::upstream_request() const {
  std::vector<std::string_view> bodies;
  bodies.reserve(members_.size());
  for (auto *m : members_) bodies.push_back(m->batch_request_body());
  std::string body = batch_body(bodies);
  std::string out;
  out.reserve(512 + body.size());
  append_format(out, "POST {} HTTP/1.1\r\n", head_.target);
  bool underscores = batcher_.config().underscores_in_headers;
  bool has_host = false;
  for (const auto &h : head_.headers) {
    if (is_dropped_hop(head_, h.name)) continue;
    if (iequals(h.name, "content-length") || iequals(h.name, "transfer-encoding") ||
        iequals(h.name, "expect") || iequals(h.name, "x-request-id"))
      continue;
    if (!underscores && h.name.find('_') != std::string::npos) continue;
    if (iequals(h.name, "host")) has_host = true;
    append_format(out, "{}: {}\r\n", h.name, h.value);
  }
  if (!has_host) out += "Host: \r\n";
  append_format(out, "X-Request-Id: {}\r\nValve-Batch-Size: {}\r\nContent-Length: {}\r\n\r\n", id_,
                members_.size(), body.size());
  out += body;
  return out;
}

int Batch::on_upstream_head(Head &head) {
  status_ = head.status;
  if (worker_) {
    worker_->note_answered();
    worker_->note_request_result(true);
  }
  timer_.start(batcher_.config().timeout);
  return 0;
}

void Batch::on_upstream_body(std::string_view data) {
  if (answer_.size() + data.size() > kMaxAnswerBytes) {
    too_big_ = true;
    return;
  }
  answer_.append(data);
}

void Batch::on_upstream_complete(bool reusable) {
  timer_.stop();
  detach(reusable);
  deliver(status_, answer_);
  end();
}

void Batch::on_upstream_failed(std::string_view reason) {
  timer_.stop();
  if (worker_) worker_->note_request_result(false);
  detach(false);
  fail(502, fmt::format("the worker failed before answering the batch: {}", reason), worker_id_);
  end();
}

void Batch::on_timeout() {
  if (phase_ == Phase::open) {
    batcher_.pool().cancel(*this);
    reject(503, fmt::format("no worker was free within the queue timeout ({} s)",
                            format_seconds(batcher_.config().queue_timeout)));
    return;
  }
  if (phase_ != Phase::sent) return;
  ++batcher_.context().stats().timeouts;
  batcher_.context().log().warn(
      "batch {} to {}: worker {} gave no answer within {} s; replacing it", id_,
      batcher_.spec().path, worker_id_, format_seconds(batcher_.config().timeout));
  if (worker_) worker_->kill("a request timed out");
  detach(false);
  fail(504,
       fmt::format("the worker gave no answer to the batch within {} s",
                   format_seconds(batcher_.config().timeout)),
       worker_id_);
  end();
}

void Batch::detach(bool reusable) {
  UpstreamConn *conn = std::exchange(upstream_, nullptr);
  Worker *w = std::exchange(worker_, nullptr);
  if (conn && w) {
    conn->detach();
    batcher_.pool().done(*this);  // before the worker is free, as a proxy does
    w->release(*conn, reusable);
  }
}

void Batch::deliver(int status, std::string_view body) {
  auto parts = too_big_ ? std::nullopt : split_batch_answer(status, body, members_.size());
  if (!parts) {
    fail(502, fmt::format("the batch route {} answered {} with {}", batcher_.spec().path, status,
                          status >= 200 && status <= 299
                              ? fmt::format("no JSON array of {} elements", members_.size())
                              : std::string("an error")));
    return;
  }
  std::vector<Batcher::Member *> members = std::exchange(members_, {});
  live_ = 0;
  for (size_t i = 0; i < members.size(); ++i) {
    if (!members[i]) continue;  // its client left: its element is dropped
    members[i]->batch_ = nullptr;
    members[i]->batch_answered((*parts)[i], worker_id_);
  }
}

void Batch::fail(int status, std::string message, uint64_t failed_worker) {
  Context &ctx = batcher_.context();
  bool singly = batcher_.spec().retry_singly && !ctx.stopping();
  ++ctx.stats().batch_failures;
  ctx.log().warn("batch {} of {} requests to {}: {}; {}", id_, members_.size(),
                 batcher_.spec().path, message,
                 singly ? "sending each alone" : fmt::format("answering each with {}", status));
  std::vector<Batcher::Member *> members = std::exchange(members_, {});
  live_ = 0;
  for (auto *m : members) {
    if (!m) continue;
    m->batch_ = nullptr;
    if (singly) {
      ++ctx.stats().batch_fallbacks;
      m->batch_alone(failed_worker);
    } else {
      m->batch_failed(status, message, false);
    }
  }
}

void Batch::end() {
  if (phase_ == Phase::over) return;
  phase_ = Phase::over;
  timer_.stop();
  batcher_.finished(*this);
}

}  // namespace valve
