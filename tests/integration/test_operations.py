"""Health and recycling with real plumber workers: active checks (HTTP and connect), rise and fall,
passive ejection on the worker's own failures (never on the app's 500s), max-requests and max-rss.
A worker is replaced gracefully: its replacement starts first, and no request fails."""

import os
import re
import time
import unittest

from harness import SteadyLoad, ValveTestCase, app_path, is_alive, wait_until


class Operations(ValveTestCase):
    def start_ops(self, *args):
        return self.start_valve("-f", app_path("ops.R"), "--admin", "127.0.0.1:0", *args,
                                ready="/hello", ready_timeout=60,
                                env={"VALVE_TEST_DIR": self.tmpdir})

    def ready_pids(self, valve):
        return sorted(w["pid"] for w in valve.status()["workers"] if w["state"] == "ready")

    def wait_ready_count(self, valve, n, timeout=60):
        return wait_until(lambda: len(self.ready_pids(valve)) == n and self.ready_pids(valve), timeout,
                          message=f"{n} ready workers")

    def state_of(self, valve, pid):
        for w in valve.status()["workers"]:
            if w["pid"] == pid:
                return w["state"]
        return None

    def mark(self, name):
        with open(os.path.join(self.tmpdir, name), "w"):
            pass

    def unmark(self, name):
        os.unlink(os.path.join(self.tmpdir, name))

    def assertReplacedWithoutFailures(self, valve, victim, load):
        """victim leaves the pool and exits while the load keeps getting 200s."""
        wait_until(lambda: victim not in [w["pid"] for w in valve.status()["workers"]], 60,
                   message=f"worker {victim} gone from the pool")
        wait_until(lambda: not is_alive(victim), 20, message=f"process {victim} exited")
        load.stop()
        statuses = load.join(60)
        self.assertGreater(len(statuses), 5)
        self.assertEqual([s for s in statuses if s != 200], [], "every request answered 200")

    def test_failing_health_checks_replace_the_worker(self):
        valve = self.start_ops("--n-min", "2", "--n-max", "2", "--health-path", "/health",
                               "--health-interval", "0.2", "--health-timeout", "2",
                               "--health-fall", "2")
        victim, other = self.wait_ready_count(valve, 2)
        load = SteadyLoad(valve, "/hello", seconds=60, clients=2)
        self.mark(f"sick-{victim}")
        valve.wait_log(rf"worker \d+ \(pid {victim}\) is unhealthy: 2 health checks in a row "
                       r"failed \(last: GET /health answered 503\)", 20)
        self.assertReplacedWithoutFailures(valve, victim, load)
        pids = self.wait_ready_count(valve, 2)
        self.assertIn(other, pids, "the healthy worker stays")
        totals = valve.status()["totals"]
        self.assertGreaterEqual(totals["health_check_failures"], 2)
        self.assertEqual(totals["crashes"], 0)
        metrics = valve.admin("GET", "/metrics").text()
        self.assertRegex(metrics, r'valve_worker_recycles_total\{reason="unhealthy"\} 1\b')

    def test_connect_check_without_a_path_replaces_a_worker_that_stopped_listening(self):
        valve = self.start_ops("--n-min", "2", "--n-max", "2", "--health-interval", "0.2",
                               "--health-fall", "2")
        self.wait_ready_count(valve, 2)
        worker = valve.status()["workers"][0]
        self.assertTrue(worker["address"].startswith("unix:"), worker)
        load = SteadyLoad(valve, "/hello", seconds=60, clients=2)
        os.unlink(worker["address"][5:])  # the process lives on, but nothing can reach it
        self.assertReplacedWithoutFailures(valve, worker["pid"], load)
        self.wait_ready_count(valve, 2)

    def test_an_unhealthy_worker_serves_again_after_rise_passing_checks(self):
        # Its replacement cannot start (no-start), so the unhealthy worker is still there when
        # its checks pass again.
        valve = self.start_ops("--n-min", "1", "--n-max", "1", "--health-path", "/health",
                               "--health-interval", "0.2", "--health-fall", "2",
                               "--health-rise", "3")
        (pid,) = self.wait_ready_count(valve, 1)
        self.mark("no-start")
        self.mark(f"sick-{pid}")
        wait_until(lambda: self.state_of(valve, pid) == "unhealthy", 20, message="unhealthy")
        self.unmark(f"sick-{pid}")
        valve.wait_log(rf"worker \d+ \(pid {pid}\) is healthy again: 3 health checks in a row "
                       r"passed", 20)
        self.unmark("no-start")
        self.assertEqual(self.state_of(valve, pid), "ready")
        response = valve.get("/hello", timeout=30)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json()["pid"], pid)

    def test_unparseable_answers_eject_a_worker_but_the_apps_own_errors_do_not(self):
        valve = self.start_ops("--n-min", "1", "--n-max", "1", "--max-fails", "3")
        (pid,) = self.wait_ready_count(valve, 1)
        for _ in range(4):
            self.assertEqual(valve.get("/error").status, 500)
            self.assertEqual(valve.get("/unavailable").status, 503)
        self.assertEqual(self.ready_pids(valve), [pid], "an app's 500 and 503 are answers")
        for _ in range(2):  # each is tried twice, on the only worker there is
            response = valve.get("/malformed", timeout=30)
            self.assertValveError(response, 502)
            self.assertIn("malformed", response.json()["error"])
        valve.wait_log(rf"worker \d+ \(pid {pid}\) is unhealthy: 3 requests in a row failed", 10)
        wait_until(lambda: not is_alive(pid), 30, message="the ejected worker exits")
        response = valve.get("/hello", timeout=60)
        self.assertEqual(response.status, 200)
        self.assertNotEqual(response.json()["pid"], pid)

    def test_max_requests_recycles_each_worker_after_its_replacement_starts(self):
        valve = self.start_ops("--n-min", "2", "--n-max", "2", "--max-requests", "5",
                               "--max-requests-jitter", "2")
        self.wait_ready_count(valve, 2)
        pids = set()
        deadline = time.monotonic() + 60
        while len(pids) < 4 and time.monotonic() < deadline:  # replacements take a while to start
            response = valve.get("/hello", timeout=60)
            self.assertEqual(response.status, 200, response)
            pids.add(response.json()["pid"])
            time.sleep(0.03)
        self.assertGreaterEqual(len(pids), 4, "workers were replaced")
        log = valve.log()
        retired = list(re.finditer(r"worker (\d+) \(pid \d+\) retires: served (\d+) requests", log))
        self.assertGreaterEqual(len(retired), 2, log[-3000:])
        for match in retired:
            worker_id, served = match.groups()
            self.assertIn(int(served), range(5, 8), "N + rand(0..J) requests")
            after = log[match.end():]
            stop = re.search(rf"stopping worker {worker_id} \(pid \d+\)", after)
            if stop:  # its replacement was launched in between
                self.assertRegex(after[:stop.start()], r"worker \d+ \(pid \d+\) launched",
                                 f"worker {worker_id} stopped before its replacement started")
        self.assertEqual(valve.status()["totals"]["crashes"], 0)

    def test_max_rss_recycles_a_worker_gracefully(self):
        valve = self.start_ops("--n-min", "1", "--n-max", "1", "--max-rss", "250")
        (pid,) = self.wait_ready_count(valve, 1)
        rss = wait_until(lambda: valve.status()["workers"][0]["rss_bytes"], 5,
                         message="resident memory sampled")
        self.assertGreater(rss, 20 << 20)
        self.assertLess(rss, 250 << 20)
        self.assertEqual(valve.get("/grow?mb=200", timeout=60).status, 200)
        load = SteadyLoad(valve, "/hello", seconds=60, clients=2)
        valve.wait_log(rf"worker \d+ \(pid {pid}\) retires: resident memory \d+ MB passed "
                       r"max-rss 250 MB", 20)
        self.assertReplacedWithoutFailures(valve, pid, load)
        metrics = valve.admin("GET", "/metrics").text()
        self.assertRegex(metrics, r'valve_worker_recycles_total\{reason="max-rss"\} 1\b')


if __name__ == "__main__":
    unittest.main()
