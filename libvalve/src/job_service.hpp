// Long jobs on the public port: a request with Prefer: respond-async gets 202 and the Location of a
// job, /_valve/jobs/{id}; the request itself runs later, as it would have synchronously, through a
// proxy of its own whose client is the job (it keeps the answer instead of sending it). GET on the
// job answers its state, then the stored answer; DELETE cancels it. The table is jobs.hpp's.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "jobs.hpp"
#include "proxy.hpp"
#include "util.hpp"

namespace valve {

class Context;

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

  // ---- Proxy::Host, for the jobs' own proxies
  Routing route(const Head &request, std::string_view peer_ip) override;
  const std::vector<Route> &routes() const override;
  void on_proxy_done(Proxy &proxy) override;

 private:
  class Runner;
  friend class Runner;

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
  Timer expiry_timer_;
};

}  // namespace valve
