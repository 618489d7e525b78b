"""Chaos with real plumber workers: under wrk (16 connections, GET) a random worker is SIGKILLed every
second for 30 s. Every GET succeeds (one whose worker died first is retried), every killed worker
is replaced, no request waits past --timeout; a POST in flight on a killed worker gets 502."""

import os
import random
import re
import signal
import threading
import time
import unittest

from harness import ValveTestCase, Wrk, app_path, wait_until

SECONDS = 30
TIMEOUT = 10


def wrk_max_latency(text):
    """wrk's "Latency  avg  stdev  max" line: the max, in seconds."""
    match = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b", text)
    if not match:
        raise AssertionError(f"no latency line in wrk's output:\n{text}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


class Chaos(ValveTestCase):
    def test_a_worker_killed_every_second_fails_no_get(self):
        valve = self.start_valve("-f", app_path("ops.R"), "--admin", "127.0.0.1:0",
                                 "--n-min", "4", "-n", "4", "--timeout", str(TIMEOUT),
                                 ready="/hello", ready_timeout=60,
                                 env={"VALVE_TEST_DIR": self.tmpdir})
        wait_until(lambda: len([w for w in valve.status()["workers"] if w["state"] == "ready"]) == 4,
                   60, message="four ready workers")
        wrk = Wrk(valve.url + "/hello", seconds=SECONDS + 5, connections=16,
                  timeout_s=TIMEOUT + 5)
        killed = []
        rng = random.Random(7)
        try:
            time.sleep(1)
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                alive = valve.worker_pids()  # ready or still starting
                if alive:
                    victim = rng.choice(alive)
                    try:
                        os.kill(victim, signal.SIGKILL)
                        killed.append(victim)
                    except ProcessLookupError:
                        pass
                time.sleep(1)
        finally:
            result = wrk.result()
        self.assertGreaterEqual(len(killed), SECONDS - 5, result["text"])
        self.assertGreater(result["requests"], 100, result["text"])
        self.assertEqual(result["non2xx"], 0, result["text"])
        self.assertEqual(result["socket_errors"], 0, result["text"])
        self.assertLess(wrk_max_latency(result["text"]), TIMEOUT, result["text"])
        # Every killed worker was replaced: the pool is whole again, with none of them in it.
        wait_until(lambda: len([w for w in valve.status()["workers"]
                                if w["state"] == "ready"]) == 4, 60,
                   message="four ready workers again")
        self.assertTrue(set(killed).isdisjoint(w["pid"] for w in valve.status()["workers"]))
        self.assertTrue(valve.running(), "valvectl survived")

    def test_a_post_on_a_killed_worker_gets_502_not_a_hang(self):
        valve = self.start_valve("-f", app_path("ops.R"), "--admin", "127.0.0.1:0",
                                 "--n-min", "2", "-n", "2", ready="/hello", ready_timeout=60,
                                 env={"VALVE_TEST_DIR": self.tmpdir})
        results = []

        def post():
            results.append(valve.request("POST", "/sleep?s=5", body=b"x", timeout=30))

        thread = threading.Thread(target=post, daemon=True)
        thread.start()
        busy = wait_until(lambda: [w["pid"] for w in valve.status()["workers"]
                                   if w["in_flight"] == 1], 10, message="the POST in flight")
        started = time.monotonic()
        os.kill(busy[0], signal.SIGKILL)
        thread.join(20)
        self.assertFalse(thread.is_alive(), "the POST hangs")
        self.assertLess(time.monotonic() - started, 5)
        self.assertValveError(results[0], 502)
        self.assertEqual(valve.get("/hello").status, 200)


if __name__ == "__main__":
    unittest.main()
