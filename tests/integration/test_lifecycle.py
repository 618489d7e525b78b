"""Supervision with the native backend: start-up, failed start-ups (exit 1), workers dying and
being replaced, graceful stop on SIGTERM/SIGINT, and no process left behind, SIGKILL included."""

import http.client
import os
import shlex
import signal
import threading
import time
import unittest

from harness import (SteadyLoad, ValveTestCase, backend_cmd, is_alive, parallel, proc_info,
                     run_valvectl, wait_until)


def backend_pids(valve):
    """PIDs of the backend processes (the servers themselves) under valvectl."""
    return sorted(info.pid for info in valve.tree()
                  if info.comm.startswith("valve-test-back") and info.state != "Z")


class StartUp(ValveTestCase):
    def test_n_min_workers_start(self):
        valve = self.start_backend_valve("-n", "5", "--n-min", "3")
        wait_until(lambda: len(valve.workers()) == 3, 10, message="three workers")
        wait_until(lambda: len(backend_pids(valve)) == 3, 10, message="three backends")
        time.sleep(0.5)
        self.assertEqual(len(valve.workers()), 3, "an idle pool grew past --n-min")
        self.assertEqual(valve.max_children, 3)

    def test_n_min_workers_launch_in_parallel(self):
        # Each worker takes 0.5 s to start: launched together, the three processes start within
        # a moment of each other; one after the other (each once the last is ready), 0.5 s apart.
        valve = self.start_backend_valve("-n", "3", "--n-min", "3", ready=None,
                                         backend_args=("--delay-start", "500"))
        results = parallel([lambda: valve.get("/sleep?ms=1000", timeout=15) for _ in range(3)])
        self.assertEqual([getattr(r, "status", r) for r in results], [200] * 3)
        pids = backend_pids(valve)
        self.assertEqual(len(pids), 3, "three workers, none replaced")
        ticks = os.sysconf("SC_CLK_TCK")
        starts = [proc_info(pid).start / ticks for pid in pids]
        self.assertLess(max(starts) - min(starts), 0.4,
                        f"--n-min workers started one by one: {starts}")

    def test_worker_output_is_logged(self):
        valve = self.start_backend_valve("-n", "1")
        valve.wait_log(r"backend listening on 127\.0\.0\.1:\d+", timeout=5)

    def test_worker_output_is_drained(self):
        # 20000 lines on stderr before listening: far more than a pipe holds. A worker whose
        # output is not read blocks and never becomes ready.
        cmd = (f"yes 'noise line from the worker' | head -n 20000 >&2; "
               f"exec {backend_cmd()}")
        valve = self.start_valve("--cmd", cmd, "-n", "1", "--startup-timeout", "20",
                                 ready="/hello", ready_timeout=20)
        pid = valve.worker_pids()[0]
        match = valve.wait_log(r"[^\n]*noise line from the worker[^\n]*", timeout=5)
        self.assertRegex(match.group(0), rf"\b{pid}\b", "worker output not prefixed with its pid")
        self.assertGreaterEqual(valve.log().count("noise line from the worker"), 20000)

    def test_no_worker_ever_ready_exits_1_with_its_stderr(self):
        code, out, err, elapsed, left = run_valvectl(
            ["--port", "0", "--cmd", backend_cmd("--exit-at-start", "7")], timeout=20)
        self.assertEqual(code, 1, err)
        self.assertLess(elapsed, 15, "must give up in bounded time, not retry forever")
        self.assertIn("exiting at start as asked", err)
        self.assertEqual(left, [])

    def test_startup_timeout_exits_1(self):
        code, out, err, elapsed, left = run_valvectl(
            ["--port", "0", "--startup-timeout", "1", "--kill-timeout", "1",
             "--cmd", backend_cmd("--delay-start", "30000")], timeout=20)
        self.assertEqual(code, 1, err)
        self.assertLess(elapsed, 12)
        self.assertEqual(left, [])


class WorkerDeath(ValveTestCase):
    def test_killed_idle_worker_is_reaped_and_replaced(self):
        valve = self.start_backend_valve("-n", "3", "--n-min", "2")
        wait_until(lambda: len(backend_pids(valve)) == 2, 10, message="two backends")
        victim = int(valve.get("/pid").body)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not is_alive(victim), 3, message="victim gone")
        wait_until(lambda: len(backend_pids(valve)) == 2 and victim not in backend_pids(valve), 5,
                   message="replacement started")
        wait_until(lambda: not valve.zombies(), 3, message="no zombie children")
        self.assertEqual(valve.get("/hello", timeout=10).status, 200)

    def test_worker_killed_under_load(self):
        valve = self.start_backend_valve("-n", "3", "--n-min", "3")
        wait_until(lambda: len(backend_pids(valve)) == 3, 10, message="three backends")
        load = SteadyLoad(valve, "/sleep?ms=100", seconds=3.0, clients=3, timeout=15)
        time.sleep(1.0)
        victim = backend_pids(valve)[0]
        os.kill(victim, signal.SIGKILL)
        statuses = load.join(30)
        failures = [s for s in statuses if s != 200]
        self.assertGreater(len(statuses), 20)
        self.assertEqual(failures, [], "GETs on a killed worker are retried on another")
        wait_until(lambda: len(backend_pids(valve)) == 3 and victim not in backend_pids(valve), 5,
                   message="pool back to three")
        results = parallel([lambda: valve.get("/sleep?ms=50") for _ in range(6)])
        self.assertEqual([getattr(r, "status", r) for r in results], [200] * 6)


class Shutdown(ValveTestCase):
    def test_sigterm_lets_in_flight_requests_finish(self):
        valve = self.start_backend_valve("-n", "1")
        result = {}
        client = threading.Thread(
            target=lambda: result.setdefault("r", valve.get("/sleep?ms=1500", timeout=15)))
        client.start()
        time.sleep(0.4)
        valve.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        try:  # no longer accepting: refused, closed, or a 503
            late = valve.get("/hello", timeout=3)
            self.assertEqual(late.status, 503, late)
        except (OSError, http.client.HTTPException):
            pass
        client.join(15)
        self.assertEqual(result["r"].status, 200)
        self.assertEqual(result["r"].body, b"slept 1500\n")
        self.assertEqual(valve.wait_exit(10), 0, valve.log_tail())
        self.assertEqual(valve.wait_no_leftovers(5), [])

    def test_sigint_exits_0(self):
        valve = self.start_backend_valve("-n", "2", "--n-min", "2")
        wait_until(lambda: len(backend_pids(valve)) == 2, 10, message="two backends")
        valve.send_signal(signal.SIGINT)
        self.assertEqual(valve.wait_exit(10), 0)
        self.assertEqual(valve.wait_no_leftovers(5), [])

    def test_graceful_timeout_bounds_the_stop(self):
        valve = self.start_backend_valve("-n", "1", "--graceful-timeout", "0.5",
                                         "--kill-timeout", "1")
        finished = threading.Event()

        def hang():
            try:
                valve.get("/hang", timeout=20)
            except Exception:  # noqa: BLE001 - a cut connection is fine here
                pass
            finished.set()

        threading.Thread(target=hang, daemon=True).start()
        time.sleep(0.3)
        started = time.monotonic()
        valve.send_signal(signal.SIGTERM)
        self.assertEqual(valve.wait_exit(10), 0)
        self.assertLess(time.monotonic() - started, 5)
        self.assertTrue(finished.wait(5), "the hung client was never answered nor closed")
        self.assertEqual(valve.wait_no_leftovers(5), [])

    def test_worker_ignoring_sigterm_is_killed_after_kill_timeout(self):
        server = ("import http.server, signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), "
                  "http.server.SimpleHTTPRequestHandler).serve_forever()")
        cmd = f"exec /usr/bin/python3 -c {shlex.quote(server)} {{port}}"
        valve = self.start_valve("--cmd", cmd, "-n", "1", "--kill-timeout", "1", ready="/")
        stubborn = [w.pid for w in valve.workers()]
        self.assertEqual(len(stubborn), 1)
        started = time.monotonic()
        valve.send_signal(signal.SIGTERM)
        self.assertEqual(valve.wait_exit(15), 0)
        elapsed = time.monotonic() - started
        self.assertGreater(elapsed, 0.8, "valvectl did not give the worker its kill-timeout")
        self.assertLess(elapsed, 8)
        self.assertFalse(is_alive(stubborn[0]))
        self.assertEqual(valve.wait_no_leftovers(5), [])

    def test_sigkill_of_valvectl_leaves_no_process(self):
        valve = self.start_backend_valve("-n", "4", "--n-min", "3")
        wait_until(lambda: len(backend_pids(valve)) == 3, 10, message="three backends")
        before = valve.tree()
        self.assertGreaterEqual(len(before), 3)
        valve.send_signal(signal.SIGKILL)
        valve.wait_exit(5)
        self.assertEqual(valve.wait_no_leftovers(3.0), [],
                         "workers outlived a SIGKILLed valvectl")


if __name__ == "__main__":
    unittest.main(verbosity=2)
