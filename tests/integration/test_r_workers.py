"""Supervising real R workers: a broken plumber.R, workers dying (killed, crashing mid-request),
idle reaping, a graceful stop, and no R process left when valvectl is SIGKILLed; R's tempdir()
inside the worker's own temporary directory, removed once the worker has exited (killed, recycled,
stopped), where R alone would leave it."""

import os
import signal
import threading
import time
import unittest

from harness import (SteadyLoad, ValveTestCase, app_path, is_alive, owned_tmpdirs, parallel,
                     run_valvectl, tmp_entries, wait_until)


class BrokenApi(ValveTestCase):
    def test_syntax_error_exits_1_with_the_r_error(self):
        code, out, err, elapsed, left = run_valvectl(["--port", "0", "-f", app_path("broken.R")],
                                                     timeout=60)
        self.assertEqual(code, 1, err)
        self.assertLess(elapsed, 20, "must give up in bounded time, not retry forever")
        self.assertIn("unexpected '}'", err, "stderr lacks R's parse error")
        self.assertEqual(left, [])


class RWorkers(ValveTestCase):
    def start_api(self, *args):
        return self.start_valve("-f", app_path("api.R"), *args, ready="/pid", ready_timeout=60)

    def test_killed_worker_under_load_is_replaced(self):
        valve = self.start_api("-n", "3", "--n-min", "3")
        wait_until(lambda: len(valve.workers()) == 3, 30, message="three R workers")
        # Let all three finish starting before the load.
        parallel([lambda: valve.get("/sleep?zzz=0.5", timeout=60) for _ in range(3)])
        load = SteadyLoad(valve, "/sleep?zzz=0.2", seconds=4.0, clients=3, timeout=60)
        time.sleep(1.0)
        victim = valve.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        statuses = load.join(90)
        self.assertGreater(len(statuses), 10)
        self.assertEqual([s for s in statuses if s != 200], [],
                         "a GET on the killed worker is retried on another")
        wait_until(lambda: not is_alive(victim) and victim not in valve.worker_pids(), 5,
                   message="killed worker reaped")
        wait_until(lambda: len(valve.workers()) == 3, 30, message="pool back to three")
        results = parallel([lambda: valve.get("/pid", timeout=60) for _ in range(6)])
        self.assertEqual([getattr(r, "status", r) for r in results], [200] * 6)

    def test_get_retried_when_worker_dies_mid_request(self):
        valve = self.start_api("-n", "3", "--n-min", "2")
        marker = os.path.join(self.tmpdir, "crashed-once")
        response = valve.get(f"/crash_once?marker={marker}", timeout=60)
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json()["result"], "survived")
        self.assertTrue(os.path.exists(marker), "the first worker never crashed")

    def test_post_to_crashing_worker_gets_502(self):
        valve = self.start_api("-n", "2", "--n-min", "1")
        first = valve.get("/pid").json()["pid"]
        response = valve.post("/crash", b"{}", headers={"Content-Type": "application/json"},
                              timeout=60)
        self.assertValveError(response, 502)
        wait_until(lambda: not is_alive(first), 5, message="crashed worker gone")
        after = valve.get("/pid", timeout=60)
        self.assertEqual(after.status, 200, after)
        self.assertNotEqual(after.json()["pid"], first)

    def test_idle_r_workers_reaped_to_n_min(self):
        valve = self.start_api("-n", "3", "--n-min", "1", "--max-age", "1", "--check-unused", "0.5")
        results = parallel([lambda: valve.get("/sleep?zzz=1.5", timeout=60) for _ in range(3)])
        self.assertEqual([getattr(r, "status", r) for r in results], [200] * 3)
        self.assertEqual(valve.max_children, 3)
        wait_until(lambda: len(valve.workers()) == 1, 10, message="back to one R worker")
        counts = []
        for _ in range(20):
            time.sleep(0.1)
            counts.append(len(valve.workers()))
        self.assertEqual(min(counts), 1, counts)
        self.assertEqual(valve.get("/pid", timeout=10).status, 200)

    def test_sigterm_lets_r_request_finish(self):
        valve = self.start_api("-n", "1")
        result = {}
        client = threading.Thread(
            target=lambda: result.setdefault("r", valve.get("/sleep?zzz=1.5", timeout=30)))
        client.start()
        time.sleep(0.5)
        valve.send_signal(signal.SIGTERM)
        client.join(30)
        self.assertEqual(result["r"].status, 200)
        self.assertEqual(result["r"].json()["slept"], 1.5)
        self.assertEqual(valve.wait_exit(15), 0)
        self.assertEqual(valve.wait_no_leftovers(5), [])

    def test_r_tempdir_is_removed_however_the_worker_ends(self):
        valve = self.start_valve("-f", app_path("preload.R"), "-n", "2", "--n-min", "2",
                                 "--max-requests", "3", "--admin", "127.0.0.1:0",
                                 ready="/hello", ready_timeout=60,
                                 env={"VALVE_TEST_DIR": self.tmpdir})
        wait_until(lambda: len([w for w in valve.status()["workers"] if w["state"] == "ready"])
                   == 2, 60, message="two ready R workers")
        written = valve.get("/tempfile").json()
        dirs = owned_tmpdirs(valve)
        (worker,) = [w for w in valve.status()["workers"] if w["pid"] == written["pid"]]
        own = dirs[("worker", worker["id"])]
        # R's tempdir() and what it writes there are inside the worker's own TMPDIR.
        self.assertEqual(written["tmpdir"], own)
        self.assertTrue(written["path"].startswith(own + "/Rtmp"), written)
        self.assertTrue(os.path.exists(written["path"]))
        self.assertOnlyLiveTmpdirs(valve, "the start")

        os.kill(written["pid"], signal.SIGKILL)
        wait_until(lambda: not os.path.exists(own), 10, message="the killed R worker's directory")
        self.assertOnlyLiveTmpdirs(valve, "kill -9 of an R worker")

        first = valve.get("/tempfile").json()
        for _ in range(6):  # --max-requests 3: the worker that answered first is recycled
            valve.get("/hello")
        wait_until(lambda: not os.path.exists(first["path"]), 30,
                   message="the recycled R worker's temporary file")
        self.assertOnlyLiveTmpdirs(valve, "--max-requests recycling")
        self.assertEqual(valve.get("/hello").status, 200)

        code, left = valve.stop()
        self.assertEqual((code, left), (0, []))
        self.assertEqual(tmp_entries(valve.tmp), [], "valvectl's TMPDIR after it stopped")

    def test_sigkill_of_valvectl_leaves_no_r_process(self):
        valve = self.start_api("-n", "3", "--n-min", "2")
        wait_until(lambda: len(valve.workers()) == 2, 30, message="two R workers")
        parallel([lambda: valve.get("/sleep?zzz=0.3", timeout=60) for _ in range(2)])
        valve.send_signal(signal.SIGKILL)
        valve.wait_exit(5)
        self.assertEqual(valve.wait_no_leftovers(3.0), [], "R workers outlived valvectl")


if __name__ == "__main__":
    unittest.main(verbosity=2)
