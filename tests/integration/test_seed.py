"""The seed's demo: ten concurrent GET /sleep?zzz=2 with -n 10 finish in about 2 s once the
workers are warm (valve-rs: 3.65 s cold, 2.01 s warm; one R process: 20 s)."""

import sys
import time
import unittest

from harness import ValveTestCase, example_path, parallel


class Seed(ValveTestCase):
    def round_of_sleeps(self, valve):
        started = time.monotonic()
        results = parallel([lambda: valve.get("/sleep?zzz=2", timeout=60) for _ in range(10)],
                           timeout=90)
        elapsed = time.monotonic() - started
        self.assertEqual([getattr(r, "status", r) for r in results], [200] * 10)
        return elapsed, {r.json()["pid"] for r in results}

    def test_ten_concurrent_sleeps_warm_under_2_6_s(self):
        valve = self.start_valve("-f", example_path("hello", "plumber.R"), "-n", "10", "-w", "10",
                                 ready="/echo?msg=ready", ready_timeout=60)
        cold, _ = self.round_of_sleeps(valve)
        # Warm rounds: the best of up to three, so that a neighbour's burst of CPU on a shared
        # machine does not decide the result; a slow valve is slow every time.
        warm_times = []
        for _ in range(3):
            warm, pids = self.round_of_sleeps(valve)
            warm_times.append(warm)
            self.assertEqual(len(pids), 10, "the ten requests did not run on ten workers")
            if warm < 2.6:
                break
        sys.stderr.write(f"\n10 x sleep(2) with -n 10: cold {cold:.2f} s, warm "
                         f"{', '.join(f'{t:.2f}' for t in warm_times)} s\n")
        self.assertLess(min(warm_times), 2.6)
        self.assertLessEqual(len(valve.workers()), 10)


if __name__ == "__main__":
    unittest.main(verbosity=2)
