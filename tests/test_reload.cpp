// reload.hpp: one reload at a time, the callers waiting for it, and a reload asked for meanwhile,
// which begins once the one in progress is over.
#include "reload.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

using valve::Reload;
using valve::ReloadResult;

namespace {

// Records each call of the callbacks it makes: who was called, with what.
struct Calls {
  std::vector<std::string> who;
  std::vector<ReloadResult> results;
  valve::ReloadDone done(std::string name) {
    return [this, name](const ReloadResult &r) {
      who.push_back(name);
      results.push_back(r);
    };
  }
};

ReloadResult ok(uint64_t generation, size_t workers = 1) {
  ReloadResult r;
  r.ok = true;
  r.generation = generation;
  r.workers = workers;
  return r;
}

ReloadResult failed(uint64_t generation, std::string error) {
  ReloadResult r;
  r.generation = generation;
  r.error = std::move(error);
  return r;
}

}  // namespace

TEST_CASE("reload: phases, from none through in_progress to done or failed") {
  Reload reload;
  CHECK(reload.phase() == Reload::Phase::none);
  CHECK(std::string(reload.phase_name()) == "none");
  CHECK_FALSE(reload.in_progress());
  CHECK(reload.error().empty());

  CHECK(reload.ask({}));  // an empty callback is allowed
  reload.begin();
  CHECK(reload.in_progress());
  CHECK(std::string(reload.phase_name()) == "in_progress");
  CHECK_FALSE(reload.finish(failed(1, "it broke")));
  CHECK(reload.phase() == Reload::Phase::failed);
  CHECK(std::string(reload.phase_name()) == "failed");
  CHECK(reload.error() == "it broke");
  CHECK_FALSE(reload.in_progress());

  // The next reload clears the error as it begins, not only once it succeeds.
  CHECK(reload.ask({}));
  reload.begin();
  CHECK(reload.error().empty());
  CHECK_FALSE(reload.finish(ok(2)));
  CHECK(reload.phase() == Reload::Phase::done);
  CHECK(std::string(reload.phase_name()) == "done");
  CHECK(reload.error().empty());
}

TEST_CASE("reload: a success clears the error a failure left") {
  Reload reload;
  reload.ask({});
  reload.begin();
  reload.finish(failed(1, "first"));
  REQUIRE(reload.error() == "first");
  // A result marked ok carries no error, whatever its text says.
  reload.ask({});
  reload.begin();
  ReloadResult r = ok(2);
  r.error = "ignored";
  reload.finish(r);
  CHECK(reload.error().empty());
}

TEST_CASE("reload: each waiter hears the result once, as it was given") {
  Reload reload;
  Calls calls;
  CHECK(reload.ask(calls.done("a")));
  reload.begin();
  CHECK(calls.who.empty());  // nothing is heard before the end
  CHECK_FALSE(reload.finish(ok(2, 3)));
  REQUIRE(calls.who == std::vector<std::string>{"a"});
  CHECK(calls.results[0].ok);
  CHECK(calls.results[0].generation == 2);
  CHECK(calls.results[0].workers == 3);
  // A later reload does not call it again.
  CHECK(reload.ask({}));
  reload.begin();
  reload.finish(failed(2, "nope"));
  CHECK(calls.who.size() == 1);
}

TEST_CASE("reload: those who ask before it begins all wait for it") {
  Reload reload;
  Calls calls;
  // Asked while none is in progress: each is told to begin one (the caller begins it once).
  CHECK(reload.ask(calls.done("a")));
  CHECK(reload.ask(calls.done("b")));
  reload.begin();
  CHECK_FALSE(reload.finish(ok(2)));
  CHECK(calls.who == std::vector<std::string>{"a", "b"});
}

TEST_CASE("reload: one asked for during a reload waits for the next, which the caller begins") {
  Reload reload;
  Calls calls;
  REQUIRE(reload.ask(calls.done("first")));
  reload.begin();
  // Asked meanwhile: not to begin now.
  CHECK_FALSE(reload.ask(calls.done("second")));
  CHECK_FALSE(reload.ask(calls.done("third")));
  CHECK(reload.in_progress());
  // The first ends: only its waiter hears, and another is due.
  CHECK(reload.finish(failed(1, "broken")));
  CHECK(calls.who == std::vector<std::string>{"first"});
  CHECK_FALSE(calls.results[0].ok);
  CHECK(calls.results[0].error == "broken");
  // The caller begins the next: those who asked meanwhile wait for it, and hear its result.
  reload.begin();
  CHECK(reload.error().empty());
  CHECK_FALSE(reload.finish(ok(3)));
  REQUIRE(calls.who == std::vector<std::string>{"first", "second", "third"});
  CHECK(calls.results[1].generation == 3);
  CHECK(calls.results[2].generation == 3);
  CHECK(calls.results[2].ok);
}

TEST_CASE("reload: an ask with no callback during a reload still asks for another") {
  Reload reload;
  reload.ask({});
  reload.begin();
  CHECK_FALSE(reload.ask({}));
  CHECK(reload.finish(ok(2)));
  // Once: the next reload owes none.
  reload.begin();
  CHECK_FALSE(reload.finish(ok(3)));
}

TEST_CASE("reload: a waiter may ask for another reload from its callback") {
  Reload reload;
  Calls calls;
  bool asked_again = false;
  bool told_to_begin = true;
  reload.ask([&](const ReloadResult &) {
    asked_again = true;
    // The reload is over (its phase set): this one is to begin now.
    told_to_begin = reload.ask(calls.done("from the callback"));
  });
  reload.begin();
  CHECK_FALSE(reload.finish(ok(2)));
  CHECK(asked_again);
  CHECK(told_to_begin);
  CHECK(calls.who.empty());
  reload.begin();
  reload.finish(ok(3));
  CHECK(calls.who == std::vector<std::string>{"from the callback"});
}

TEST_CASE("reload: drop_next tells those waiting for a next reload that there is none") {
  Reload reload;
  Calls calls;
  reload.ask(calls.done("current"));
  reload.begin();
  reload.ask(calls.done("next"));
  reload.drop_next(failed(1, "the server is shutting down"));
  // Only the one waiting for the next reload hears, at once; the current one's waiter still waits.
  REQUIRE(calls.who == std::vector<std::string>{"next"});
  CHECK(calls.results[0].error == "the server is shutting down");
  CHECK(reload.in_progress());
  // No further reload is due once this one ends, and "next" is not called again.
  CHECK_FALSE(reload.finish(failed(1, "the server is shutting down")));
  CHECK(calls.who == std::vector<std::string>{"next", "current"});
  // With nothing pending, drop_next calls no one.
  reload.drop_next(failed(1, "again"));
  CHECK(calls.who.size() == 2);
}

TEST_CASE("reload: elapsed_ms counts from the last begin") {
  Reload reload;
  reload.ask({});
  reload.begin();
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  uint64_t first = reload.elapsed_ms();
  CHECK(first >= 30);
  CHECK(first < 10000);
  reload.finish(ok(2));
  reload.ask({});
  reload.begin();
  CHECK(reload.elapsed_ms() < first);
}
