// The job table: requests sent with Prefer: respond-async (RFC 7240), each run later through the
// pool while its client polls for the answer. Pure bookkeeping: ids, states, the bounds on how many
// are kept and on the bytes of their stored answers, and when a finished job's answer expires. The
// time is always passed in (wall-clock milliseconds), so that it can be tested without a loop.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "http.hpp"
#include "json.hpp"

namespace valve {

enum class JobState { queued, running, done, failed };
const char *job_state_name(JobState state);

// A worker's answer as a job keeps it: what GET on the job gives back.
struct JobAnswer {
  int status = 0;
  std::string reason;
  std::vector<Header> headers;  // as the client would have got them, framing headers aside
  std::string body;
  // What it holds in memory, counted against the bound on stored bytes.
  uint64_t bytes() const;
};

struct Job {
  std::string id;  // 32 hex digits from the kernel's random source: knowing it is the key
  std::string method, target, request_id, app;
  JobState state = JobState::queued;
  bool held = false;  // queued in valve: its app's jobs hold jobs-workers-max workers
  int64_t submitted_ms = 0, started_ms = 0, finished_ms = 0, expires_ms = 0;  // 0: not yet
  std::optional<JobAnswer> answer;                                            // once finished

  bool finished() const { return state == JobState::done || state == JobState::failed; }
};

struct JobLimits {
  size_t max_jobs = 100;    // kept at once, whatever their state (0: no jobs)
  uint64_t max_bytes = 0;   // of stored answers (0: no limit)
  double result_ttl = 600;  // seconds a finished job's answer is kept
};

class JobTable {
 public:
  explicit JobTable(JobLimits limits) : limits_(limits) {}
  JobTable(const JobTable &) = delete;
  JobTable &operator=(const JobTable &) = delete;

  // Why a new job cannot be taken now, or nullopt: the table is full, or stored answers fill the
  // bytes they may. retry_after: seconds until the first stored answer expires (0 when none will).
  std::optional<std::string> refusal(int64_t now_ms, double *retry_after) const;
  // A new queued job with a fresh id (call refusal() first: add() does not check the bounds).
  Job &add(std::string method, std::string target, std::string request_id, std::string app,
           int64_t now_ms);
  Job *find(std::string_view id);
  void start(Job &job, int64_t now_ms);
  // Stores the answer: done below 500, failed from 500 up (the app's error, or valve's own when
  // the worker failed, the job timed out or the answer did not fit). Its lifetime starts now.
  void finish(Job &job, JobAnswer answer, int64_t now_ms);
  // Bytes still free for stored answers (max when unbounded).
  uint64_t room() const;
  // Forgets a job (cancelled, or its answer deleted). False if there was none.
  bool remove(std::string_view id);
  // Forgets finished jobs whose answers have expired; returns how many.
  size_t expire(int64_t now_ms);

  size_t size() const { return jobs_.size(); }
  size_t count(JobState state) const;
  uint64_t stored_bytes() const { return stored_bytes_; }
  const JobLimits &limits() const { return limits_; }
  const std::map<std::string, Job, std::less<>> &jobs() const { return jobs_; }

 private:
  JobLimits limits_;
  std::map<std::string, Job, std::less<>> jobs_;
  uint64_t stored_bytes_ = 0;
};

// A job's state as JSON: what GET on it answers until it is finished, and what status lists.
Json job_json(const Job &job, std::string_view location);
// 32 hex digits from getrandom(2): request ids come from a fast PRNG whose outputs every answer
// shows, so they must not be what guards a job's answer.
std::string new_job_id();

}  // namespace valve
