"""Overload with real plumber workers: an open-loop load at three times the pool's capacity for 30 s.
No worker dies, the served rate holds at capacity, the excess gets 503 at once, and service is
normal within a second after."""

import concurrent.futures
import http.client
import statistics
import threading
import time
import unittest

from harness import ValveTestCase, app_path, wait_until

SECONDS = 30
PATH = "/sleep?s=0.05"


class Overload(ValveTestCase):
    def one(self, valve):
        started = time.monotonic()
        try:
            status = valve.get(PATH, timeout=30).status
        except (OSError, http.client.HTTPException) as exc:
            status = repr(exc)
        return status, time.monotonic() - started

    def capacity(self, valve, seconds=4):
        """Requests a second the pool serves with every worker busy (closed loop)."""
        stop = time.monotonic() + seconds
        done = []

        def client():
            while time.monotonic() < stop:
                status, _ = self.one(valve)
                if status == 200:
                    done.append(1)

        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 30)
        return len(done) / seconds

    def test_three_times_capacity_open_loop(self):
        valve = self.start_valve("-f", app_path("ops.R"), "--admin", "127.0.0.1:0",
                                 "--n-min", "2", "-n", "2", "--queue-max", "2",
                                 ready="/hello", ready_timeout=60,
                                 env={"VALVE_TEST_DIR": self.tmpdir})
        wait_until(lambda: len([w for w in valve.status()["workers"] if w["state"] == "ready"]) == 2,
                   60, message="two ready workers")
        pids = sorted(w["pid"] for w in valve.status()["workers"])
        capacity = self.capacity(valve)
        self.assertGreater(capacity, 5, "the pool serves")
        rate = 3 * capacity
        results = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=96) as pool:
            start = time.monotonic()
            futures = []
            for i in range(int(rate * SECONDS)):
                delay = start + i / rate - time.monotonic()  # open loop: on schedule, whatever
                if delay > 0:                                  # the answers do
                    time.sleep(delay)
                futures.append(pool.submit(self.one, valve))
            for f in futures:
                results.append(f.result(timeout=60))
            elapsed = time.monotonic() - start
        # Service is normal within a second after.
        after = self.one(valve)
        self.assertEqual(after[0], 200)
        self.assertLess(after[1], 1.0)

        served = [t for s, t in results if s == 200]
        rejected = [t for s, t in results if s == 503]
        other = [s for s, _ in results if s not in (200, 503)]
        self.assertEqual(other, [], "only answers: served or refused")
        served_rate = len(served) / elapsed
        self.assertGreater(served_rate, 0.8 * capacity,
                           f"served {served_rate:.1f}/s of a capacity of {capacity:.1f}/s")
        self.assertGreater(len(rejected), len(results) / 3, "the excess is refused")
        self.assertLess(statistics.median(rejected), 0.05, "a 503 comes at once")
        status = valve.status()
        self.assertEqual(status["totals"]["crashes"], 0)
        self.assertEqual(sorted(w["pid"] for w in status["workers"]), pids, "no worker died")


if __name__ == "__main__":
    unittest.main()
