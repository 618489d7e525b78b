// inbox.hpp: the Inbox through which other threads hand work to the loop thread.
#include "inbox.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "util.hpp"

namespace {

struct TestLoop {
  uv_loop_t loop{};
  TestLoop() { REQUIRE(uv_loop_init(&loop) == 0); }
  ~TestLoop() {
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
  }
  uv_loop_t *get() { return &loop; }
};

}  // namespace

TEST_CASE("loop: 4 threads x 1000 posts all run on the loop thread, in each thread's order") {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 1000;
  TestLoop l;
  valve::Inbox inbox(l.get());
  const auto loop_thread = std::this_thread::get_id();
  std::vector<std::vector<int>> seen(kThreads);  // touched on the loop thread only
  int total = 0;
  int off_thread = 0;
  std::atomic<int> refused{0};

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        bool ok = inbox.post([&, t, i] {
          if (std::this_thread::get_id() != loop_thread) ++off_thread;
          seen[t].push_back(i);
          if (++total == kThreads * kPerThread) inbox.close();  // lets uv_run return
        });
        if (!ok) ++refused;
      }
    });
  }
  // The async handle keeps the loop running until the last item closes the inbox.
  uv_run(l.get(), UV_RUN_DEFAULT);
  for (auto &th : threads) th.join();

  CHECK(refused == 0);
  CHECK(off_thread == 0);
  CHECK(total == kThreads * kPerThread);
  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t);
    REQUIRE(seen[t].size() == kPerThread);
    bool in_order = true;
    for (int i = 0; i < kPerThread; ++i) in_order = in_order && seen[t][i] == i;
    CHECK(in_order);
  }
  // Closed, the inbox refuses work.
  CHECK_FALSE(inbox.post([] {}));
}

TEST_CASE("loop: work posted from the loop thread itself runs on a later turn") {
  TestLoop l;
  valve::Inbox inbox(l.get());
  std::vector<int> order;
  REQUIRE(inbox.post([&] {
    order.push_back(1);
    // Posted while draining: runs after this batch, not inside it.
    inbox.post([&] {
      order.push_back(3);
      inbox.close();
    });
    order.push_back(2);
  }));
  uv_run(l.get(), UV_RUN_DEFAULT);
  CHECK(order == std::vector<int>{1, 2, 3});
}

TEST_CASE("loop: a closed or destroyed Inbox drops queued work and the loop still closes") {
  TestLoop l;
  int ran = 0;
  {
    valve::Inbox inbox(l.get());
    REQUIRE(inbox.post([&] { ++ran; }));
    REQUIRE(inbox.post([&] { ++ran; }));
    inbox.close();
    inbox.close();  // twice is harmless
    CHECK_FALSE(inbox.post([&] { ++ran; }));
  }
  {
    auto inbox = std::make_unique<valve::Inbox>(l.get());
    REQUIRE(inbox->post([&] { ++ran; }));
    inbox.reset();  // the async handle closes later; its wake-up must find no owner
  }
  uv_run(l.get(), UV_RUN_DEFAULT);
  CHECK(ran == 0);
}

TEST_CASE("loop: a queued item's captures are released when the inbox drops it") {
  TestLoop l;
  auto token = std::make_shared<int>(7);
  {
    valve::Inbox inbox(l.get());
    REQUIRE(inbox.post([token] {}));
    CHECK(token.use_count() == 2);
  }
  CHECK(token.use_count() == 1);
}
