"""Overload with real plumber workers: an open-loop load at three times the pool's capacity for 30 s
(bench/valve-loadgen: a new connection per request, on schedule whatever the answers), issue 22's
targets as far as a loaded CI machine allows. The workers serve at capacity (goodput at least 95%
of what they could serve meanwhile), no worker dies, every request gets an answer (served or 503),
99% of the 503s take under 5 ms by valve's clock and their median under 5 ms from the client's,
and service is normal within a second after. bench/run's overload scenario holds the 503s' p99 to
5 ms from the client's side, beside a static nginx that shows what the machine allows; here,
beside the sanitized build and a fuzzer on 2 cores, the client's tail is the machine's."""

import concurrent.futures
import os
import subprocess
import time
import unittest

from harness import VALVECTL, ValveTestCase, app_path, wait_until

SECONDS = 30
SERVICE_S = 0.05
PATH = f"/sleep?s={SERVICE_S}"
WORKERS = 2
LOADGEN = os.environ.get("VALVE_LOADGEN") or os.path.join(
    os.path.dirname(os.path.dirname(VALVECTL)), "bench", "valve-loadgen")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Overload(ValveTestCase):
    def busy_seconds(self, valve):
        return valve.metric('valve_worker_busy_seconds_total{app="default"}')

    def fast_answers(self, valve):
        """Answers within 5 ms by valve's clock, from the head read to the answer sent."""
        return valve.metric('valve_request_duration_seconds_bucket{le="0.005"}')

    def capacity(self, valve, seconds=4):
        """What the workers can serve: WORKERS / the mean time a request keeps a worker busy
        (valve_worker_busy_seconds_total), over a closed loop with twice as many clients as
        workers."""
        stop = time.monotonic() + seconds
        busy0 = self.busy_seconds(valve)

        def client():
            served = 0
            while time.monotonic() < stop:
                if valve.get(PATH, timeout=30).status == 200:
                    served += 1
            return served

        with concurrent.futures.ThreadPoolExecutor(2 * WORKERS) as pool:
            served = sum(pool.map(lambda _: client(), range(2 * WORKERS)))
        return WORKERS * served / (self.busy_seconds(valve) - busy0)

    def test_three_times_capacity_open_loop(self):
        self.assertTrue(os.access(LOADGEN, os.X_OK), f"{LOADGEN}: build it (meson builds bench/)")
        valve = self.start_valve("-f", app_path("ops.R"), "--admin", "127.0.0.1:0",
                                 "--n-min", str(WORKERS), "-n", str(WORKERS), "--queue-max", "4",
                                 ready="/hello", ready_timeout=60,
                                 env={"VALVE_TEST_DIR": self.tmpdir})
        wait_until(lambda: len([w for w in valve.status()["workers"]
                                if w["state"] == "ready"]) == WORKERS,
                   60, message="two ready workers")
        pids = sorted(w["pid"] for w in valve.status()["workers"])
        self.capacity(valve, seconds=1)  # warm-up: plumber's code compiled in both workers
        capacity = self.capacity(valve)
        self.assertGreater(capacity, 5, "the pool serves")
        rate = 3 * capacity
        crashes = valve.status()["totals"]["crashes"]
        busy0, fast0 = self.busy_seconds(valve), self.fast_answers(valve)
        gen = subprocess.run([LOADGEN, str(valve.port), PATH, f"{rate:.3f}", str(SECONDS), "20"],
                             capture_output=True, text=True, timeout=SECONDS + 60)
        self.assertEqual(gen.returncode, 0, gen.stderr)
        busy = self.busy_seconds(valve) - busy0
        fast = self.fast_answers(valve) - fast0
        # Service is normal within a second after.
        after = valve.get(PATH, timeout=5)
        self.assertEqual(after.status, 200)
        self.assertLess(after.elapsed, 1.0)

        records = [(int(a) / 1e6, int(s), int(lat) / 1e6, int(srv) / 1e6)
                   for a, s, lat, srv in (line.split() for line in gen.stdout.splitlines())]
        self.assertEqual(len(records), int(rate * SECONDS))
        other = [s for _, s, _, _ in records if s not in (200, 503)]
        self.assertEqual(other, [], "every request answered: served or refused (0: no answer)")
        served_all = sum(1 for _, s, _, _ in records if s == 200)
        served = sum(1 for at, s, lat, _ in records if s == 200 and at + lat <= SECONDS)
        rejected_ms = [srv * 1e3 for _, s, _, srv in records if s == 503]
        goodput = served / SECONDS
        # What the workers could serve meanwhile, at the speed this machine gave them then.
        capacity_during = WORKERS * served_all / busy
        figures = (f"goodput {goodput:.1f}/s: {goodput / capacity_during:.1%} of what the workers "
                   f"could serve meanwhile ({capacity_during:.1f}/s), {goodput / capacity:.1%} "
                   f"of the capacity measured before ({capacity:.1f}/s); workers busy "
                   f"{busy / (WORKERS * SECONDS):.1%}; {len(rejected_ms)} 503s, from connect: p50 "
                   f"{pct(rejected_ms, 50):.2f} ms, p90 {pct(rejected_ms, 90):.2f} ms, p99 "
                   f"{pct(rejected_ms, 99):.2f} ms, slowest {max(rejected_ms):.2f} ms; by valve's "
                   f"clock {fast / len(rejected_ms):.2%} within 5 ms; {gen.stderr.strip()}")
        print(figures)
        self.assertGreaterEqual(goodput, 0.95 * capacity_during, figures)
        self.assertGreater(len(rejected_ms), len(records) / 2, "the excess is refused: " + figures)
        # The 503s' p99 under 5 ms by valve's clock (a served request takes 50 ms or more, so the
        # answers within 5 ms are the 503s), and their median from the client's: the tail the
        # client sees is the machine's (bench/run measures it beside a static nginx).
        self.assertGreaterEqual(fast, 0.99 * len(rejected_ms), figures)
        self.assertLess(pct(rejected_ms, 50), 5, figures)
        status = valve.status()
        self.assertEqual(status["totals"]["crashes"], crashes, "no worker died")
        self.assertEqual(sorted(w["pid"] for w in status["workers"]), pids, "no worker replaced")


if __name__ == "__main__":
    unittest.main()
