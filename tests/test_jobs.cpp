// jobs.hpp: the job table's states, ids, bounds and expiry.
#include <doctest/doctest.h>

#include <set>
#include <string>

#include "jobs.hpp"

namespace {

using valve::Job;
using valve::JobAnswer;
using valve::JobLimits;
using valve::JobState;
using valve::JobTable;

JobAnswer answer(int status, std::string body) {
  JobAnswer a;
  a.status = status;
  a.reason = "OK";
  a.headers = {{"Content-Type", "text/plain"}};
  a.body = std::move(body);
  return a;
}

JobLimits limits(size_t max_jobs, uint64_t max_bytes, double ttl) {
  JobLimits l;
  l.max_jobs = max_jobs;
  l.max_bytes = max_bytes;
  l.result_ttl = ttl;
  return l;
}

}  // namespace

TEST_CASE("jobs: ids are 32 hex digits, each new") {
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) {
    std::string id = valve::new_job_id();
    CHECK(id.size() == 32);
    CHECK(id.find_first_not_of("0123456789abcdef") == std::string::npos);
    ids.insert(id);
  }
  CHECK(ids.size() == 1000);
}

TEST_CASE("jobs: queued, running, then done below 500 and failed from 500 up") {
  JobTable table(limits(10, 0, 60));
  Job &a = table.add("GET", "/a", "rid-a", "default", 1000);
  Job &b = table.add("POST", "/b", "rid-b", "default", 1000);
  CHECK(a.id != b.id);
  CHECK(table.find(a.id) == &a);
  CHECK(table.find("nope") == nullptr);
  CHECK(table.count(JobState::queued) == 2);
  table.start(a, 2000);
  CHECK(a.state == JobState::running);
  CHECK(a.started_ms == 2000);
  CHECK(table.count(JobState::running) == 1);
  table.finish(a, answer(201, "made"), 3000);
  CHECK(a.state == JobState::done);
  CHECK(a.finished_ms == 3000);
  CHECK(a.expires_ms == 63000);
  CHECK(a.answer->body == "made");
  // A job that never ran (refused by the pool) is finished all the same, started when it ended.
  table.finish(b, answer(504, "late"), 4000);
  CHECK(b.state == JobState::failed);
  CHECK(b.started_ms == 4000);
  // A second answer changes nothing.
  table.finish(b, answer(200, "again"), 5000);
  CHECK(b.state == JobState::failed);
  CHECK(b.answer->body == "late");
  valve::Json j = valve::job_json(a, "/_valve/jobs/x");
  CHECK(j["state"] == "done");
  CHECK(j["status"] == 201);
  CHECK(j["location"] == "/_valve/jobs/x");
  CHECK(j["submitted"] == "1970-01-01T00:00:01.000Z");
  CHECK(valve::job_json(table.add("GET", "/c", "r", "d", 1), "")["started"].is_null());
}

TEST_CASE("jobs: the bound on how many are kept") {
  JobTable table(limits(2, 0, 10));
  double retry = -1;
  CHECK_FALSE(table.refusal(0, &retry));
  Job &a = table.add("GET", "/", "r", "d", 0);
  table.add("GET", "/", "r", "d", 0);
  auto why = table.refusal(0, &retry);
  REQUIRE(why);
  CHECK(why->find("jobs-max") != std::string::npos);
  CHECK(retry == 0);  // nothing finished: nothing will expire to make room
  table.finish(a, answer(200, "x"), 1000);
  CHECK(table.refusal(4000, &retry));
  CHECK(retry == 7);      // a's answer expires at 11 s
  std::string id = a.id;  // a goes with it
  CHECK(table.remove(id));
  CHECK_FALSE(table.remove(id));
  CHECK_FALSE(table.refusal(4000, &retry));
  JobTable off(limits(0, 0, 10));
  CHECK(off.refusal(0, &retry));
}

TEST_CASE("jobs: the bound on stored bytes") {
  JobTable table(limits(10, 1000, 10));
  CHECK(table.room() == 1000);
  Job &a = table.add("GET", "/", "r", "d", 0);
  JobAnswer big = answer(200, std::string(900, 'x'));
  uint64_t size = big.bytes();
  CHECK(size > 900);
  table.finish(a, std::move(big), 0);
  CHECK(table.stored_bytes() == size);
  CHECK(table.room() == 1000 - size);
  double retry = 0;
  CHECK_FALSE(table.refusal(0, &retry));  // room is left
  Job &b = table.add("GET", "/", "r", "d", 0);
  table.finish(b, answer(200, std::string(200, 'y')), 0);
  CHECK(table.room() == 0);
  auto why = table.refusal(0, &retry);
  REQUIRE(why);
  CHECK(why->find("jobs-max-bytes") != std::string::npos);
  std::string a_id = a.id, b_id = b.id;
  table.remove(a_id);
  table.remove(b_id);
  CHECK(table.stored_bytes() == 0);
  JobTable unbounded(limits(10, 0, 10));
  CHECK(unbounded.room() == UINT64_MAX);
}

TEST_CASE("jobs: finished answers expire after their lifetime, unfinished jobs never") {
  JobTable table(limits(10, 0, 2.5));
  Job &done = table.add("GET", "/", "r", "d", 0);
  std::string done_id = done.id;
  Job &running = table.add("GET", "/", "r", "d", 0);
  std::string running_id = running.id;
  table.start(running, 0);
  table.finish(done, answer(200, "x"), 1000);
  CHECK(table.expire(3499) == 0);
  CHECK(table.stored_bytes() > 0);
  CHECK(table.expire(3500) == 1);
  CHECK(table.find(done_id) == nullptr);
  CHECK(table.stored_bytes() == 0);
  CHECK(table.expire(1000000) == 0);
  CHECK(table.find(running_id) != nullptr);
  CHECK(table.size() == 1);
}
