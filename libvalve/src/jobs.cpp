#include "jobs.hpp"

#include <fmt/format.h>
#include <sys/random.h>

#include <cerrno>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <utility>

#include "util.hpp"

namespace valve {

const char *job_state_name(JobState state) {
  switch (state) {
    case JobState::queued:
      return "queued";
    case JobState::running:
      return "running";
    case JobState::done:
      return "done";
    case JobState::failed:
      return "failed";
  }
  return "?";
}

uint64_t JobAnswer::bytes() const {
  uint64_t n = reason.size() + body.size() + 16;
  for (const Header &h : headers) n += h.name.size() + h.value.size() + 4;
  return n;
}

std::optional<std::string> JobTable::refusal(int64_t now_ms, double *retry_after) const {
  // The first stored answer to expire frees a place and its bytes.
  int64_t first = 0;
  for (const auto &[id, job] : jobs_)
    if (job.finished() && (first == 0 || job.expires_ms < first)) first = job.expires_ms;
  *retry_after = first > 0 ? std::max<double>(1, std::ceil((first - now_ms) / 1000.0)) : 0;
  if (limits_.max_jobs == 0) return "jobs are off (jobs-max is 0)";
  if (jobs_.size() >= limits_.max_jobs)
    return fmt::format("{} jobs are kept, the most there may be (jobs-max)", jobs_.size());
  if (limits_.max_bytes > 0 && stored_bytes_ >= limits_.max_bytes)
    return fmt::format("stored answers fill the {} bytes they may (jobs-max-bytes)",
                       limits_.max_bytes);
  return std::nullopt;
}

Job &JobTable::add(std::string method, std::string target, std::string request_id, std::string app,
                   int64_t now_ms) {
  std::string id = new_job_id();
  while (jobs_.count(id)) id = new_job_id();
  Job &job = jobs_[id];
  job.id = std::move(id);
  job.method = std::move(method);
  job.target = std::move(target);
  job.request_id = std::move(request_id);
  job.app = std::move(app);
  job.submitted_ms = now_ms;
  return job;
}

Job *JobTable::find(std::string_view id) {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : &it->second;
}

void JobTable::start(Job &job, int64_t now_ms) {
  if (job.state != JobState::queued) return;
  job.state = JobState::running;
  job.started_ms = now_ms;
}

void JobTable::finish(Job &job, JobAnswer answer, int64_t now_ms) {
  if (job.finished()) return;
  job.state = answer.status >= 500 ? JobState::failed : JobState::done;
  if (job.started_ms == 0) job.started_ms = now_ms;
  job.finished_ms = now_ms;
  job.expires_ms = now_ms + static_cast<int64_t>(limits_.result_ttl * 1000);
  stored_bytes_ += answer.bytes();
  job.answer = std::move(answer);
}

uint64_t JobTable::room() const {
  if (limits_.max_bytes == 0) return std::numeric_limits<uint64_t>::max();
  return limits_.max_bytes > stored_bytes_ ? limits_.max_bytes - stored_bytes_ : 0;
}

bool JobTable::remove(std::string_view id) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return false;
  if (it->second.answer) stored_bytes_ -= it->second.answer->bytes();
  jobs_.erase(it);
  return true;
}

size_t JobTable::expire(int64_t now_ms) {
  size_t n = 0;
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    if (it->second.finished() && it->second.expires_ms <= now_ms) {
      if (it->second.answer) stored_bytes_ -= it->second.answer->bytes();
      it = jobs_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

size_t JobTable::count(JobState state) const {
  size_t n = 0;
  for (const auto &[id, job] : jobs_) n += job.state == state;
  return n;
}

Json job_json(const Job &job, std::string_view location) {
  auto time = [](int64_t ms) { return ms ? Json(format_utc(ms)) : Json(nullptr); };
  Json j = Json::object();
  j["id"] = job.id;
  j["state"] = job_state_name(job.state);
  j["held"] = job.held;
  j["location"] = location;
  j["method"] = job.method;
  j["target"] = job.target;
  j["request_id"] = job.request_id;
  j["app"] = job.app;
  j["submitted"] = time(job.submitted_ms);
  j["started"] = time(job.started_ms);
  j["finished"] = time(job.finished_ms);
  j["expires"] = time(job.expires_ms);
  j["status"] = job.answer ? Json(job.answer->status) : Json(nullptr);
  return j;
}

std::string new_job_id() {
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof bytes) {
    ssize_t n = getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error("getrandom failed");
    got += static_cast<size_t>(n);
  }
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string id(32, '0');
  for (size_t i = 0; i < sizeof bytes; ++i) {
    id[2 * i] = kDigits[bytes[i] >> 4];
    id[2 * i + 1] = kDigits[bytes[i] & 0xf];
  }
  return id;
}

}  // namespace valve
