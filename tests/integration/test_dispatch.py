"""Dispatch and the pool, with the native backend as the worker: queue limits (503), timeouts
(504), spawning on demand up to n-max, idle reaping down to n-min, retries and 502s, port races
and crash loops."""

import os
import shlex
import threading
import time
import unittest

from harness import (BACKEND, ValveTestCase, app_path, is_alive, parallel, proc_info,
                     wait_until)


def sleep_request(valve, ms, timeout=30):
    return lambda: valve.get(f"/sleep?ms={ms}", timeout=timeout)


class Queue(ValveTestCase):
    def test_full_queue_answers_503_at_once(self):
        valve = self.start_backend_valve("-n", "1", "--n-min", "1", "--queue-max", "1")
        results = {}
        busy = threading.Thread(target=lambda: results.setdefault("busy", valve.get("/sleep?ms=1500")))
        busy.start()
        time.sleep(0.3)  # the first request is on the only worker
        queued = threading.Thread(target=lambda: results.setdefault("queued",
                                                                    valve.get("/sleep?ms=10")))
        queued.start()
        time.sleep(0.3)  # the second waits in the queue, which is now full
        refused = valve.get("/hello", timeout=10)
        self.assertValveError(refused, 503)
        self.assertRetryAfter(refused)
        self.assertLess(refused.elapsed, 1.0, "503 must come at once, not after waiting")
        busy.join(15)
        queued.join(15)
        self.assertEqual(results["busy"].status, 200)
        self.assertEqual(results["queued"].status, 200, "the queued request is served afterwards")

    def test_request_waiting_past_queue_timeout_gets_503(self):
        valve = self.start_backend_valve("-n", "1", "--n-min", "1", "--queue-timeout", "0.5")
        results = {}
        busy = threading.Thread(target=lambda: results.setdefault("busy", valve.get("/sleep?ms=2500")))
        busy.start()
        time.sleep(0.3)
        late = valve.get("/hello", timeout=10)
        self.assertValveError(late, 503)
        self.assertRetryAfter(late)
        self.assertGreater(late.elapsed, 0.3)
        self.assertLess(late.elapsed, 2.0)
        busy.join(15)
        self.assertEqual(results["busy"].status, 200)


class Timeouts(ValveTestCase):
    def test_worker_past_timeout_gets_504_and_is_replaced(self):
        valve = self.start_backend_valve("-n", "1", "--n-min", "1", "--timeout", "0.5",
                                         "--kill-timeout", "1")
        old_pid = int(valve.get("/pid").body)
        hung = valve.get("/hang", timeout=15)
        self.assertValveError(hung, 504)
        self.assertGreater(hung.elapsed, 0.4)
        self.assertLess(hung.elapsed, 3.0)
        wait_until(lambda: not is_alive(old_pid), 5, message=f"timed-out worker {old_pid} gone")
        # A replacement serves. (On a loaded machine a fresh worker's first answer may itself take
        # past the 0.5 s timeout, and be replaced in turn: ask until one answers.)
        new = wait_until(lambda: (r := valve.get("/pid", timeout=15)).status == 200 and r, 30,
                         interval=0.2, message="a replacement worker answers")
        self.assertNotEqual(int(new.body), old_pid)


    def test_a_hung_r_worker_gets_504_while_the_others_keep_serving(self):
        # Two plumber workers; one is stuck in an endpoint that does not return. Requests keep
        # going to the other meanwhile; at --timeout the stuck one is answered 504 and replaced.
        valve = self.start_valve("-f", app_path("ops.R"), "-n", "2", "--n-min", "2",
                                 "--timeout", "3", "--kill-timeout", "1", "--admin", "127.0.0.1:0",
                                 ready="/hello",
                                 ready_timeout=60, env={"VALVE_TEST_DIR": self.tmpdir})
        wait_until(lambda: len(valve.status()["workers"]) == 2 and all(
            w["state"] == "ready" for w in valve.status()["workers"]), 60, message="two ready")
        hung = {}
        stuck = threading.Thread(target=lambda: hung.setdefault(
            "response", valve.get("/sleep?s=3600", timeout=30)))
        stuck.start()
        wait_until(lambda: any(w["in_flight"] for w in valve.status()["workers"]), 10,
                   message="the endless request on a worker")
        (busy,) = [w for w in valve.status()["workers"] if w["in_flight"]]
        served = 0
        while stuck.is_alive() and served < 200:
            response = valve.get("/hello", timeout=10)
            self.assertEqual(response.status, 200, response)
            self.assertLess(response.elapsed, 2.0, "a request waited behind the stuck worker")
            served += 1
        stuck.join(30)
        self.assertGreater(served, 5)
        self.assertValveError(hung["response"], 504)
        self.assertGreater(hung["response"].elapsed, 2.5)
        wait_until(lambda: not is_alive(busy["pid"]), 10, message="the stuck worker gone")
        wait_until(lambda: len([w for w in valve.status()["workers"]
                                if w["state"] == "ready"]) == 2, 60, message="a replacement")
        self.assertEqual(valve.get("/hello", timeout=10).status, 200)


class Spawning(ValveTestCase):
    def test_spawns_enough_workers_for_waiting_requests_at_once(self):
        # Workers take 0.3 s to start. Four requests of 1 s with one idle worker: three more
        # workers start together (not one after the other, not one per retry).
        valve = self.start_backend_valve("-n", "10", "--n-min", "1",
                                         backend_args=("--delay-start", "300"))
        wait_until(lambda: len(valve.workers()) == 1, 5, message="one worker at start")
        valve.reset_max_children()
        started = time.monotonic()
        results = parallel([sleep_request(valve, 1000) for _ in range(4)])
        elapsed = time.monotonic() - started
        self.assertEqual([getattr(r, "status", r) for r in results], [200] * 4)
        self.assertLess(elapsed, 2.5, "the extra workers were not started in parallel")
        self.assertEqual(valve.max_children, 4)

    def test_never_more_than_n_max(self):
        valve = self.start_backend_valve("-n", "2", "--n-min", "1")
        valve.reset_max_children()
        started = time.monotonic()
        results = parallel([sleep_request(valve, 400) for _ in range(6)])
        elapsed = time.monotonic() - started
        self.assertEqual([getattr(r, "status", r) for r in results], [200] * 6)
        self.assertLessEqual(valve.max_children, 2)
        self.assertGreater(elapsed, 1.1, "six 0.4 s requests on two workers take three rounds")

    def test_most_recently_used_idle_worker_first(self):
        valve = self.start_backend_valve("-n", "3", "--n-min", "3")
        wait_until(lambda: len(valve.workers()) == 3, 10, message="three workers")
        time.sleep(0.5)
        pids = {valve.get("/pid").text() for _ in range(10)}
        self.assertEqual(len(pids), 1, f"sequential requests spread over workers {pids}")

    def test_worker_concurrency(self):
        valve = self.start_backend_valve("-n", "1", "--worker-concurrency", "2")
        started = time.monotonic()
        results = parallel([sleep_request(valve, 600) for _ in range(2)])
        self.assertEqual([getattr(r, "status", r) for r in results], [200] * 2)
        self.assertLess(time.monotonic() - started, 1.1, "two requests did not share the worker")
        started = time.monotonic()
        results = parallel([sleep_request(valve, 600) for _ in range(3)])
        self.assertEqual([getattr(r, "status", r) for r in results], [200] * 3)
        self.assertGreater(time.monotonic() - started, 1.1, "a third request ran at once")
        self.assertEqual(valve.get("/stats").json()["max_in_flight"], 2)


class IdleReaping(ValveTestCase):
    def test_idle_workers_stopped_down_to_n_min(self):
        valve = self.start_backend_valve("-n", "4", "--n-min", "1", "--max-age", "1",
                                         "--check-unused", "0.2")
        results = parallel([sleep_request(valve, 1000) for _ in range(4)])
        self.assertEqual([getattr(r, "status", r) for r in results], [200] * 4)
        self.assertEqual(valve.max_children, 4)
        wait_until(lambda: len(valve.workers()) == 1, 8, message="back to one worker")
        counts = []
        for _ in range(30):
            time.sleep(0.05)
            counts.append(len(valve.workers()))
        self.assertEqual(min(counts), 1, f"fell below --n-min: {counts}")
        wait_until(lambda: not valve.zombies(), 3, message="stopped workers reaped")
        self.assertEqual(valve.get("/hello", timeout=5).status, 200)

    def test_n_min_workers_are_never_reaped(self):
        valve = self.start_backend_valve("-n", "3", "--n-min", "2", "--max-age", "0.5",
                                         "--check-unused", "0.1")
        wait_until(lambda: len(valve.workers()) == 2, 10, message="two workers")
        counts = []
        for _ in range(30):
            time.sleep(0.05)
            counts.append(len(valve.workers()))
        self.assertEqual(min(counts), 2, counts)


class CrashesAndRetries(ValveTestCase):
    def crash_counting_cmd(self):
        """The backend under a shell that logs how each backend process ended."""
        self.exits = os.path.join(self.tmpdir, "exits.log")
        return (f"{shlex.quote(BACKEND)} --port {{port}}; "
                f"echo \"exit $?\" >> {shlex.quote(self.exits)}")

    def crashes(self):
        try:
            with open(self.exits) as f:
                return sum(1 for line in f if line.strip() == "exit 1")
        except FileNotFoundError:
            return 0

    def test_post_to_dying_worker_gets_502_without_retry(self):
        valve = self.start_valve("--cmd", self.crash_counting_cmd(), "-n", "3", "--n-min", "2")
        response = valve.post("/crash", b"payload", timeout=15)
        self.assertValveError(response, 502)
        wait_until(lambda: self.crashes() >= 1, 5, message="the crash logged")
        self.assertEqual(valve.get("/hello", timeout=15).status, 200)
        self.assertEqual(self.crashes(), 1, "a POST must not be retried")

    def test_get_is_retried_once_then_502(self):
        valve = self.start_valve("--cmd", self.crash_counting_cmd(), "-n", "3", "--n-min", "2")
        response = valve.get("/crash", timeout=15)
        self.assertValveError(response, 502)
        wait_until(lambda: self.crashes() >= 2, 5, message="two crashes logged")
        self.assertEqual(valve.get("/hello", timeout=15).status, 200)
        time.sleep(0.3)
        self.assertEqual(self.crashes(), 2, "a GET is retried exactly once")

    def test_port_race_loser_is_relaunched(self):
        # The first launch exits 98 "address already in use"; valve must relaunch it, not give up.
        marker = os.path.join(self.tmpdir, "lost-the-race")
        valve = self.start_backend_valve("-n", "2", "--n-min", "1",
                                         backend_args=("--fail-once-marker", marker))
        self.assertTrue(os.path.exists(marker), "the first launch never ran")
        self.assertEqual(valve.get("/hello").body, b"hello\n")
        self.assertTrue(valve.running())

    def test_port_answered_by_another_process_is_not_taken_for_the_worker(self):
        # The first launch never listens itself: a process in another session answers on its port.
        # valve must not send requests to that stranger, and relaunch the worker elsewhere.
        marker = os.path.join(self.tmpdir, "squatted")
        pidfile = os.path.join(self.tmpdir, "squatter.pid")
        cmd = (f"if [ -e {shlex.quote(marker)} ]; then set --; "
               f"else touch {shlex.quote(marker)}; set -- --squatter-pidfile {shlex.quote(pidfile)}; fi; "
               f"exec {shlex.quote(BACKEND)} --port {{port}} \"$@\"")
        valve = self.start_valve("--cmd", cmd, "-n", "2", "--n-min", "1", "--startup-timeout", "10",
                                 ready=None)
        squatter = None
        try:
            wait_until(lambda: os.path.exists(pidfile), 10, message="squatter started")
            with open(pidfile) as f:
                squatter = int(f.read().strip())
            valve.wait_ready("/hello", timeout=20)
            answered = {int(valve.get("/pid").body) for _ in range(5)}
            self.assertNotIn(squatter, answered, "valve proxied to a process it did not start")
        finally:
            if squatter is not None:
                info = proc_info(squatter)
                if info is not None and info.comm.startswith("valve-test-back"):
                    os.kill(squatter, 9)

    def test_crash_loop_backs_off(self):
        # The first launch serves; every later one exits at once.
        launches = os.path.join(self.tmpdir, "launches.log")
        marker = os.path.join(self.tmpdir, "first-done")
        cmd = (f"date +%s.%N >> {shlex.quote(launches)}; "
               f"if [ -e {shlex.quote(marker)} ]; then set -- --exit-at-start 3; "
               f"else touch {shlex.quote(marker)}; set --; fi; "
               f"exec {shlex.quote(BACKEND)} --port {{port}} \"$@\"")
        valve = self.start_valve("--cmd", cmd, "-n", "1", "--n-min", "1")
        self.assertValveError(valve.post("/crash", b"", timeout=15), 502)
        time.sleep(8)

        with open(launches) as f:
            times = [float(line) for line in f if line.strip()]
        later = times[1:]  # the relaunches after the crash
        self.assertGreaterEqual(len(later), 2, f"not relaunched after the crash: {times}")
        self.assertLessEqual(len(later), 20, f"{len(later)} launches in 8 s: no back-off")
        gaps = [b - a for a, b in zip(later, later[1:])]
        if len(gaps) >= 3:
            self.assertGreater(gaps[-1], 1.5 * gaps[0], f"gaps between launches do not grow: {gaps}")
        self.assertRegex(valve.log(), r"(?i)crash.?loop")
        self.assertTrue(valve.running(), "a crash loop after a good start must not end valvectl")


if __name__ == "__main__":
    unittest.main(verbosity=2)
