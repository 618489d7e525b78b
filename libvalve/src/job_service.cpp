#include "job_service.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "app.hpp"
#include "context.hpp"
#include "http.hpp"
#include "stats.hpp"

namespace valve {

namespace {

constexpr size_t kMaxAnswerHead = 1 << 20;
// What a client polling a job that is not finished is told to wait.
constexpr std::string_view kPollAfter = "Retry-After: 1\r\n";

JobLimits limits_from(const Config &config) {
  JobLimits limits;
  limits.max_jobs = config.jobs_max;
  limits.max_bytes = config.jobs_max_bytes;
  limits.result_ttl = config.job_result_ttl;
  return limits;
}

// Parses an answer as the job's proxy wrote it (HTTP/1.1, framed by length or chunks) into what
// the job keeps: the status, the worker's headers but those that framed this one transfer, the
// body decoded.
class AnswerReader final : public HttpParser::Handler {
 public:
  explicit AnswerReader(bool head_request) : head_request_(head_request) {}

  std::optional<JobAnswer> read(std::string_view bytes) {
    HttpParser parser(HTTP_RESPONSE, *this, kMaxAnswerHead);
    size_t consumed = 0;
    llhttp_errno_t err = parser.execute(bytes.data(), bytes.size(), &consumed);
    if (err == HPE_OK && !complete_) parser.finish();
    if (!complete_) return std::nullopt;
    return std::move(answer_);
  }

  int on_head(Head &head) override {
    answer_.status = head.status;
    answer_.reason = head.reason;
    for (Header &h : head.headers) {
      if (iequals(h.name, "transfer-encoding") || iequals(h.name, "connection") ||
          iequals(h.name, "keep-alive"))
        continue;
      answer_.headers.push_back(std::move(h));
    }
    return head_request_ ? 1 : 0;
  }
  int on_body(std::string_view data) override {
    answer_.body.append(data);
    return 0;
  }
  int on_complete() override {
    complete_ = true;
    return HPE_PAUSED;
  }

 private:
  bool head_request_;
  bool complete_ = false;
  JobAnswer answer_;
};

// The name of a preference: "wait" of "wait=10".
std::string_view preference_name(std::string_view item) {
  return trim(item.substr(0, item.find_first_of("=;")));
}

// Prefer: wait=N (RFC 7240 4.3) in seconds; nullopt when it is absent or not delta-seconds.
std::optional<uint64_t> prefer_wait(const Head &request) {
  std::optional<uint64_t> wait;
  request.find_token("prefer", [&](std::string_view item) {
    if (!iequals(preference_name(item), "wait") || item.find('=') == std::string_view::npos)
      return false;
    std::string_view value = item.substr(item.find('=') + 1);
    value = trim(value.substr(0, value.find(';')));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
      value = value.substr(1, value.size() - 2);
    wait = parse_uint(value);
    return true;
  });
  return wait;
}

JobAnswer error_answer(int status, std::string_view message, std::string_view request_id) {
  auto answer = AnswerReader(false).read(error_response(status, message, request_id, true, {}));
  return std::move(*answer);
}

// The request the job runs: the client's, without the preferences valve applied (respond-async and
// wait; and without an Expect: valve has the body), with the request id the 202 named.
Head job_request(const Proxy &proxy) {
  Head head = proxy.request();
  std::vector<Header> headers;
  headers.reserve(head.headers.size() + 1);
  bool has_request_id = false;
  for (Header &h : head.headers) {
    if (iequals(h.name, "expect")) continue;
    if (iequals(h.name, "x-request-id")) {
      if (has_request_id) continue;
      has_request_id = true;
      h.value = proxy.request_id();
    }
    if (iequals(h.name, "prefer")) {
      std::string rest;
      std::string_view list = h.value;
      while (!list.empty()) {
        size_t comma = list.find(',');
        std::string_view item = trim(list.substr(0, comma));
        if (!item.empty() && !iequals(item, "respond-async") &&
            !iequals(preference_name(item), "wait"))
          rest += (rest.empty() ? "" : ", ") + std::string(item);
        if (comma == std::string_view::npos) break;
        list.remove_prefix(comma + 1);
      }
      if (rest.empty()) continue;
      h.value = std::move(rest);
    }
    headers.push_back(std::move(h));
  }
  if (!has_request_id) headers.push_back({"X-Request-Id", proxy.request_id()});
  head.headers = std::move(headers);
  head.version_major = 1;
  head.version_minor = 1;
  head.keep_alive = true;
  return head;
}

}  // namespace

// The client of a job's proxy: it keeps the answer the proxy writes, then stores it in the table.
class JobService::Runner final : public Proxy::Client {
 public:
  Runner(JobService &service, std::string id, std::string peer_ip, bool trusted, bool head)
      : service_(service),
        id_(std::move(id)),
        peer_ip_(std::move(peer_ip)),
        trusted_(trusted),
        head_(head) {}

  const std::string &id() const { return id_; }
  Proxy *proxy = nullptr;

  const std::string &peer_ip() const override { return peer_ip_; }
  bool peer_trusted() const override { return trusted_; }
  bool send(std::string_view data) override {
    if (too_big_) return true;
    if (bytes_.size() + data.size() > service_.table_.room()) {
      too_big_ = true;  // read on and dropped: the job stores valve's 503 instead
      bytes_ = std::string();
    } else {
      bytes_.append(data);
    }
    return true;
  }
  void response_done(bool) override { service_.on_answer(*this); }
  void hold_body(bool) override {}
  void start_tunnel() override {}
  void close() override {
    service_.on_broken(*this, "the worker failed in the middle of its answer");
  }
  bool job() const override { return true; }
  void on_dispatched() override { service_.on_started(*this); }

  bool too_big() const { return too_big_; }
  std::optional<JobAnswer> answer() const { return AnswerReader(head_).read(bytes_); }

 private:
  JobService &service_;
  std::string id_;
  std::string peer_ip_;
  bool trusted_;
  bool head_;
  bool too_big_ = false;
  std::string bytes_;
};

// A job's place under its app's jobs-workers-max: held in the app's queue with the request it will
// run, then admitted (its proxy made) until that proxy is over.
struct JobService::Slot final : FairQueue::Entry {
  std::string id, app, client_key, peer_ip;
  bool trusted = false;
  bool admitted = false;
  Head request;      // until admitted
  std::string body;  // likewise
};

// A client that asked to wait (Prefer: wait=N) for its job's answer: it gets the answer if it comes
// within the time, else its 202 then.
struct JobService::Waiter {
  Waiter(uv_loop_t *loop, std::function<void()> over) : timer(loop, std::move(over)) {}
  Proxy *client = nullptr;  // null once it left: the job's answer is then dropped
  uint64_t seconds = 0;
  Timer timer;
};

JobService::JobService(Context &ctx, Proxy::Host &server)
    : ctx_(ctx),
      server_(server),
      table_(limits_from(ctx.config())),
      calls_(ctx.deferred()),
      expiry_timer_(ctx.loop(), [this] {
        expire();
        admit_all();  // a bound raised by a reload, or n-max by a scale
      }) {}

JobService::~JobService() {
  // A job's proxy still there when the server goes (its pool ended first): nothing calls it now.
  for (auto &[proxy, runner] : runners_) delete proxy;
}

bool JobService::is_job_target(std::string_view target) {
  return target.starts_with(kPrefix) || target == kPrefix.substr(0, kPrefix.size() - 1);
}

bool JobService::wants_job(const Head &request) const {
  return table_.limits().max_jobs > 0 && request.has_token("prefer", "respond-async");
}

std::string JobService::location(const Job &job) const {
  return fmt::format("{}{}", kPrefix, job.id);
}

void JobService::serve(Proxy &proxy) {
  expire();
  const Head &req = proxy.request();
  std::string_view id = req.target;
  id = id.substr(0, id.find('?'));
  id.remove_prefix(std::min(id.size(), kPrefix.size()));
  Job *job = table_.find(id);
  bool get = req.method == "GET" || req.method == "HEAD";
  if (!get && req.method != "DELETE")
    return proxy.send_error(405,
                            fmt::format("a job answers GET, HEAD and DELETE, not {}", req.method),
                            "Allow: GET, HEAD, DELETE\r\n");
  if (!job)
    return proxy.send_error(404,
                            "no such job: it never was, its answer expired "
                            "(job-result-ttl) or was deleted, or valve restarted");
  std::string json_headers = fmt::format(
      "Content-Type: application/json\r\nCache-Control: no-store\r\nX-Request-Id: {}\r\n",
      proxy.request_id());
  if (get && job->finished()) return send_stored(proxy, *job->answer, {});
  Json doc = job_json(*job, location(*job));
  if (get) {
    std::string body = json_text(doc) + "\n";
    return proxy.send_answer(
        202, "Accepted",
        fmt::format("{}{}Content-Length: {}\r\n", json_headers, kPollAfter, body.size()), body);
  }
  // DELETE: a job not finished is cancelled (out of the queue, or its worker stopped); a finished
  // one's answer is dropped. Either way it is gone.
  bool unfinished = !job->finished();
  if (unfinished) {
    doc["state"] = "cancelled";
    ++ctx_.stats().jobs_cancelled;
    ctx_.log().info("job {} ({} {}, request {}) cancelled while {}", job->id, job->method,
                    escape_for_log(job->target), job->request_id, job_state_name(job->state));
  }
  drop(std::string(job->id));
  std::string body = json_text(doc) + "\n";
  proxy.send_answer(200, "OK", fmt::format("{}Content-Length: {}\r\n", json_headers, body.size()),
                    body);
}

void JobService::submit(Proxy &proxy) {
  if (!proxy.whole_request())
    return proxy.send_error(413, fmt::format("a job's request body must fit request-buffer-size "
                                             "({} bytes)",
                                             ctx_.config().request_buffer_size));
  expire();
  int64_t now = unix_ms();
  double retry_after = 0;
  if (auto why = table_.refusal(now, &retry_after)) {
    ++ctx_.stats().jobs_refused;
    return proxy.send_error(
        503, fmt::format("no job can be taken now: {}", *why),
        fmt::format("Retry-After: {}\r\n", static_cast<uint64_t>(std::max(1.0, retry_after))));
  }
  const Head &req = proxy.request();
  const std::string app = proxy.app() ? proxy.app()->name : "";
  Job &job = table_.add(req.method, req.target, proxy.request_id(), app, now);
  ++ctx_.stats().jobs_submitted;
  std::string id = job.id;
  // Held first: admit() lets it through at once while its app's jobs are under their bound.
  auto slot = std::make_unique<Slot>();
  slot->id = id;
  slot->app = app;
  slot->client_key = proxy.client_key();
  slot->peer_ip = proxy.peer_ip();
  slot->trusted = proxy.peer_trusted();
  slot->request = job_request(proxy);
  slot->body = proxy.buffered_body();
  apps_[app].held.push(*slot, slot->client_key, Priority::batch);
  slots_.emplace(id, std::move(slot));
  job.held = true;
  sync_gauges();
  // With wait=N the client waits for the answer, at most the job's own time limit (job-timeout);
  // else (or when N is 0) it has its 202 at once, the job's state in it.
  uint64_t wait =
      std::min<uint64_t>(prefer_wait(req).value_or(0),
                         static_cast<uint64_t>(proxy.app() ? proxy.app()->config.job_timeout
                                                           : ctx_.config().job_timeout));
  if (!expiry_timer_.active() && !ctx_.stopping()) expiry_timer_.start(1, 1);
  if (wait > 0) {
    auto waiter = std::make_unique<Waiter>(ctx_.loop(), [this, id] { wait_over(id); });
    waiter->client = &proxy;
    waiter->seconds = wait;
    waiter->timer.start(static_cast<double>(wait));
    waiters_.emplace(id, std::move(waiter));
    admit(app);
    return;
  }
  admit(app);
  if (Job *j = table_.find(id)) send_accepted(proxy, *j, "respond-async");
}

void JobService::send_accepted(Proxy &proxy, const Job &job, std::string_view applied) {
  std::string doc = json_text(job_json(job, location(job))) + "\n";
  proxy.send_answer(202, "Accepted",
                    fmt::format("Content-Type: application/json\r\nCache-Control: no-store\r\n"
                                "Location: {}\r\nPreference-Applied: {}\r\n{}"
                                "X-Request-Id: {}\r\nContent-Length: {}\r\n",
                                location(job), applied, kPollAfter, proxy.request_id(), doc.size()),
                    doc);
}

void JobService::send_stored(Proxy &proxy, const JobAnswer &a, std::string_view extra_headers) {
  // The stored answer, as the request would have had it.
  std::string headers;
  bool has_length = false;
  for (const Header &h : a.headers) {
    has_length |= iequals(h.name, "content-length");
    headers += fmt::format("{}: {}\r\n", h.name, h.value);
  }
  if (!has_length && a.status != 204 && a.status != 304)
    headers += fmt::format("Content-Length: {}\r\n", a.body.size());
  headers += extra_headers;
  proxy.send_answer(a.status, a.reason.empty() ? status_reason(a.status) : a.reason, headers,
                    a.body);
}

uint64_t JobService::workers_max(const std::string &app) {
  const Config *config = server_.app_config(app);
  return (config ? *config : ctx_.config()).jobs_workers();
}

void JobService::admit(const std::string &app) {
  if (stopped_ || ctx_.stopping()) return;
  auto it = apps_.find(app);
  if (it == apps_.end()) return;
  AppJobs &jobs = it->second;  // never erased: launch() may release a slot meanwhile
  uint64_t most = workers_max(app);
  while (jobs.admitted < most) {
    FairQueue::Entry *e = jobs.held.find([](FairQueue::Entry &) { return true; });
    if (!e) break;
    auto &slot = static_cast<Slot &>(*e);
    jobs.held.take(slot);
    slot.admitted = true;
    ++jobs.admitted;
    if (Job *job = table_.find(slot.id)) job->held = false;
    sync_gauges();
    launch(slot);
  }
}

void JobService::admit_all() {
  std::vector<std::string> names;
  for (const auto &[name, jobs] : apps_)
    if (!jobs.held.empty()) names.push_back(name);
  for (const std::string &name : names) admit(name);
}

void JobService::launch(Slot &slot) {
  // Everything taken from the slot first: the proxy may be over, and the slot released, within
  // start().
  Job *job = table_.find(slot.id);
  bool head = job && job->method == "HEAD";
  std::string body = std::move(slot.body);
  auto runner = std::make_unique<Runner>(*this, slot.id, slot.peer_ip, slot.trusted, head);
  Runner &r = *runner;
  r.proxy = new Proxy(ctx_, *this, r, std::move(slot.request));
  runners_.emplace(r.proxy, std::move(runner));
  Proxy *p = r.proxy;
  p->start();
  if (!body.empty()) p->on_client_body(body);
  p->on_client_complete();
}

void JobService::release(const std::string &id) {
  auto it = slots_.find(id);
  if (it == slots_.end()) return;
  Slot &slot = *it->second;
  AppJobs &jobs = apps_[slot.app];
  if (slot.admitted) {
    jobs.held.done(slot);
    if (jobs.admitted > 0) --jobs.admitted;
    // The next held job goes once this callback is over, its worker then free.
    calls_.post([this, app = slot.app] { admit(app); });
  } else {
    jobs.held.remove(slot);
  }
  slots_.erase(it);
  sync_gauges();
}

void JobService::drop(const std::string &id) {
  table_.remove(id);
  auto it = slots_.find(id);
  if (it != slots_.end() && !it->second->admitted) release(id);  // held: it never had a proxy
  if (Runner *r = runner_for(id)) r->proxy->cancel();  // its proxy's end releases its place
  sync_gauges();
}

void JobService::wait_over(const std::string &id) {
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return;
  Waiter *waiter = it->second.release();
  waiters_.erase(it);
  ctx_.defer_delete(waiter);  // its timer is the one calling
  Job *job = table_.find(id);
  if (waiter->client && job)
    send_accepted(*waiter->client, *job, fmt::format("respond-async, wait={}", waiter->seconds));
}

void JobService::forget_waiter(Proxy &proxy) {
  for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
    if (it->second->client != &proxy) continue;
    Waiter &waiter = *it->second;
    waiter.client = nullptr;
    waiter.timer.stop();
    std::string id = it->first;
    Job *job = table_.find(id);
    // As for a request whose client left: out of the queue; a running one finishes, unseen.
    if (!job || job->state == JobState::queued) {
      waiters_.erase(it);
      if (job)
        ctx_.log().debug("job {} ({} {}) dropped: its client left while waiting for it", id,
                         job->method, escape_for_log(job->target));
      drop(id);
    }
    return;
  }
}

void JobService::on_started(Runner &runner) {
  if (Job *job = table_.find(runner.id())) table_.start(*job, unix_ms());
  sync_gauges();
}

void JobService::on_answer(Runner &runner) {
  Job *job = table_.find(runner.id());
  if (!job) return;
  if (runner.too_big())
    return store(runner.id(),
                 error_answer(503,
                              fmt::format("the job's answer is larger than the room left for "
                                          "stored answers ({} bytes of jobs-max-bytes)",
                                          table_.room()),
                              job->request_id));
  auto answer = runner.answer();
  if (!answer)
    return store(runner.id(),
                 error_answer(502, "the worker's answer could not be read back", job->request_id));
  store(runner.id(), std::move(*answer));
}

void JobService::on_broken(Runner &runner, std::string_view why) {
  if (Job *job = table_.find(runner.id()))
    store(runner.id(), error_answer(502, why, job->request_id));
}

void JobService::store(const std::string &id, JobAnswer answer) {
  Job *job = table_.find(id);
  if (!job || job->finished()) return;
  if (answer.bytes() > table_.room())
    answer = error_answer(503,
                          fmt::format("the job's answer ({} bytes) is larger than the room left "
                                      "for stored answers ({} bytes of jobs-max-bytes)",
                                      answer.bytes(), table_.room()),
                          job->request_id);
  table_.finish(*job, std::move(answer), unix_ms());
  ++ctx_.stats().jobs_finished[job_state_name(job->state)];
  ctx_.log().debug("job {} ({} {}) {}: {}", job->id, job->method, escape_for_log(job->target),
                   job_state_name(job->state), job->answer->status);
  auto w = waiters_.find(id);
  if (w != waiters_.end()) {
    // Its client waited (wait=N): it gets the answer now, and nobody has the job's Location.
    std::unique_ptr<Waiter> waiter = std::move(w->second);
    waiters_.erase(w);
    if (waiter->client) {
      ++ctx_.stats().jobs_waited;
      send_stored(*waiter->client, *job->answer,
                  fmt::format("Preference-Applied: wait={}\r\n", waiter->seconds));
    }
    table_.remove(id);
  }
  sync_gauges();
}

void JobService::expire() {
  if (size_t n = table_.expire(unix_ms())) {
    ctx_.stats().jobs_expired += n;
    sync_gauges();
  }
  if (table_.size() == 0) expiry_timer_.stop();
}

void JobService::sync_gauges() {
  Stats &st = ctx_.stats();
  st.jobs_queued = table_.count(JobState::queued);
  st.jobs_running = table_.count(JobState::running);
  size_t held = 0;
  for (const auto &[name, jobs] : apps_) held += jobs.held.size();
  st.jobs_held = held;
  st.jobs_stored_bytes = table_.stored_bytes();
}

JobService::Runner *JobService::runner_for(std::string_view id) {
  for (auto &[proxy, runner] : runners_)
    if (runner->id() == id) return runner.get();
  return nullptr;
}

void JobService::stop() {
  stopped_ = true;  // held jobs are never let through now
  expiry_timer_.stop();
  // Clients waiting for an answer (wait=N) have their 202 now.
  std::vector<std::string> waiting;
  for (const auto &[id, waiter] : waiters_)
    if (waiter->client) waiting.push_back(id);
  for (const std::string &id : waiting) {
    auto it = waiters_.find(id);
    if (it == waiters_.end()) continue;
    std::unique_ptr<Waiter> waiter = std::move(it->second);
    waiters_.erase(it);
    if (Job *job = table_.find(id))
      send_accepted(*waiter->client, *job, fmt::format("respond-async, wait={}", waiter->seconds));
  }
  std::vector<Proxy *> proxies;
  for (auto &[proxy, runner] : runners_) proxies.push_back(proxy);
  for (Proxy *p : proxies)
    if (runners_.count(p)) p->on_client_gone();
}

Json JobService::json() const {
  Json out = Json::object();
  out["kept"] = table_.size();
  out["max"] = table_.limits().max_jobs;
  out["stored_bytes"] = table_.stored_bytes();
  out["max_bytes"] = table_.limits().max_bytes;
  // Per app: the jobs let through to its workers, those held back, and the bound.
  Json apps = Json::object();
  size_t held = 0;
  for (const auto &[name, jobs] : apps_) {
    held += jobs.held.size();
    if (jobs.admitted == 0 && jobs.held.empty()) continue;
    Json a = Json::object();
    a["admitted"] = jobs.admitted;
    a["held"] = jobs.held.size();
    const Config *config = server_.app_config(name);
    a["workers_max"] = (config ? *config : ctx_.config()).jobs_workers();
    apps[name] = std::move(a);
  }
  out["held"] = held;
  out["apps"] = std::move(apps);
  // In the order they came; ids are the keys to the answers: only their first 8 digits show.
  std::vector<const Job *> jobs;
  for (const auto &[id, job] : table_.jobs()) jobs.push_back(&job);
  std::stable_sort(jobs.begin(), jobs.end(),
                   [](const Job *a, const Job *b) { return a->submitted_ms < b->submitted_ms; });
  Json list = Json::array();
  for (const Job *job : jobs) {
    Json j = job_json(*job, "");
    j.erase("location");
    j["id"] = job->id.substr(0, 8);
    list.push_back(std::move(j));
  }
  out["jobs"] = std::move(list);
  return out;
}

Routing JobService::route(const Head &request, std::string_view peer_ip) {
  return server_.route(request, peer_ip);
}

const std::vector<Route> &JobService::routes() const { return server_.routes(); }

void JobService::on_proxy_done(Proxy &proxy) {
  auto it = runners_.find(&proxy);
  if (it != runners_.end()) {
    release(it->second->id());
    ctx_.defer_delete(it->second.release());
    runners_.erase(it);
  }
  // The server counts the app's request over and deletes the proxy, as it does a client's.
  server_.on_proxy_done(proxy);
}

}  // namespace valve
