// Long jobs on the public port: a request with Prefer: respond-async gets 202 and the Location of a
// job, /_valve/jobs/{id}; the request itself runs later, as it would have synchronously, through a
// proxy of its own whose client is the job (it keeps the answer instead of sending it). GET on the
// job answers its state, then the stored answer; DELETE cancels it. The table is jobs.hpp's.
// At most jobs-workers-max jobs of an app are let through to its pool at once; the others are held
// here, in a fair queue of their own (round-robin across clients), and go on as those finish. With
// Prefer: wait=N too, the client waits up to N seconds for the answer itself before its 202.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "context.hpp"
#include "fair_queue.hpp"
#include "jobs.hpp"
#include "proxy.hpp"
#include "util.hpp"

namespace valve {

class JobService final : public Proxy::Host {
 public:
  // The URL space of jobs: no app's route reaches it.
  static constexpr std::string_view kPrefix = "/_valve/jobs/";

  // server: routes the jobs' requests and ends their proxies, as it does its clients'.
  JobService(Context &ctx, Proxy::Host &server);
  ~JobService();
  JobService(const JobService &) = delete;
  JobService &operator=(const JobService &) = delete;

  static bool is_job_target(std::string_view target);
  // The request asks to be answered later (Prefer: respond-async) and jobs are on (jobs-max > 0).
  bool wants_job(const Head &request) const;
  // Answers GET, HEAD or DELETE on /_valve/jobs/{id} through proxy.
  void serve(Proxy &proxy);
  // The request of proxy, its body read whole, becomes a job: 202, or refused past the bounds.
  void submit(Proxy &proxy);
  // Shutting down: queued jobs leave the queue; running ones end with their workers.
  void stop();
  // Every job, for the status.
  Json json() const;
  // The client of a request waiting for its job's answer (Prefer: wait=N) left: a job not yet on
  // a worker is dropped, a running one finishes unseen. Harmless for any other proxy.
  void forget_waiter(Proxy &proxy);

  // ---- Proxy::Host, for the jobs' own proxies
  Routing route(const Head &request, std::string_view peer_ip) override;
  const std::vector<Route> &routes() const override;
  void on_proxy_done(Proxy &proxy) override;

 private:
  class Runner;
  friend class Runner;
  struct Slot;
  struct Waiter;
  // An app's jobs: those held back, and how many are let through to its pool (running, or
  // waiting there for a free worker).
  struct AppJobs {
    FairQueue held{0, 0};
    size_t admitted = 0;
  };

  // Lets the app's held jobs through while fewer than its jobs-workers-max are.
  void admit(const std::string &app);
  void admit_all();
  uint64_t workers_max(const std::string &app);
  // A job let through: its own proxy takes its request to the pool.
  void launch(Slot &slot);
  // The job's proxy is over (or it never had one): its place is free for the next.
  void release(const std::string &id);
  // Takes an unfinished job out: out of the hold or the pool's queue, or its worker stopped.
  void drop(const std::string &id);
  void wait_over(const std::string &id);
  // The 202 and the stored answer, as the client gets them.
  void send_accepted(Proxy &proxy, const Job &job, std::string_view applied);
  void send_stored(Proxy &proxy, const JobAnswer &answer, std::string_view extra_headers);
  void on_started(Runner &runner);
  void on_answer(Runner &runner);
  void on_broken(Runner &runner, std::string_view why);
  void store(const std::string &id, JobAnswer answer);
  void expire();
  void sync_gauges();
  Runner *runner_for(std::string_view id);
  std::string location(const Job &job) const;

  Context &ctx_;
  Proxy::Host &server_;
  JobTable table_;
  std::unordered_map<Proxy *, std::unique_ptr<Runner>> runners_;
  std::unordered_map<std::string, std::unique_ptr<Slot>> slots_;      // by job id, until it is over
  std::map<std::string, AppJobs, std::less<>> apps_;                  // by app name
  std::unordered_map<std::string, std::unique_ptr<Waiter>> waiters_;  // by job id
  bool stopped_ = false;
  DeferredCalls calls_;
  Timer expiry_timer_;
};

}  // namespace valve
