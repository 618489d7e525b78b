"""Zero-downtime reloads and run-time scaling with real plumber workers: five reloads in a row
under wrk (SIGHUP and POST /reload) with zero non-2xx answers and zero socket errors; a reload whose
new plumber.R is broken keeps the old generation serving and says why; /scale sets n-min and n-max."""

import os
import shutil
import signal
import unittest

from harness import ValveTestCase, Wrk, app_path, is_alive, wait_until


class Reload(ValveTestCase):
    def start_copy(self, *args):
        """Serves a copy of ops.R that the test may rewrite."""
        self.api = os.path.join(self.tmpdir, "plumber.R")
        shutil.copy(app_path("ops.R"), self.api)
        return self.start_valve("-f", self.api, "--admin", "127.0.0.1:0", *args, ready="/hello",
                                ready_timeout=60, env={"VALVE_TEST_DIR": self.tmpdir})

    def set_version(self, version):
        with open(self.api) as f:
            text = f.read()
        with open(self.api, "w") as f:
            f.write(text.replace('VERSION <- "', f'VERSION <- "{version}" # was "', 1))

    def pids(self, valve):
        return {w["pid"] for w in valve.status()["workers"]}

    def wait_two_ready(self, valve):
        wait_until(lambda: [w["state"] for w in valve.status()["workers"]] == ["ready"] * 2, 60,
                   message="two ready workers")

    def test_five_reloads_under_load_answer_every_request(self):
        valve = self.start_copy("--n-min", "2", "--n-max", "2")
        self.wait_two_ready(valve)
        wrk = Wrk(valve.url + "/hello", seconds=120, connections=8)
        try:
            old = self.pids(valve)
            for generation in range(2, 7):
                self.set_version(f"v{generation}")
                if generation % 2:
                    response = valve.admin("POST", "/reload", timeout=120)
                    self.assertEqual(response.status, 200, response)
                    body = response.json()
                    self.assertEqual(body["result"], "reloaded")
                    self.assertEqual(body["generation"], generation)
                    self.assertEqual(body["workers"], 2)
                else:
                    valve.send_signal(signal.SIGHUP)
                    wait_until(lambda: valve.status()["reload"] == {
                        "state": "done", "generation": generation, "error": ""}, 120,
                        message=f"reload to generation {generation}")
                # Only the new generation is left; the old one drained and exited.
                wait_until(lambda: all(w["generation"] == generation
                                       for w in valve.status()["workers"]), 60,
                           message="the old generation gone")
                self.assertTrue(old.isdisjoint(self.pids(valve)))
                wait_until(lambda: not any(is_alive(p) for p in old), 30, message="old exited")
                old = self.pids(valve)
                self.assertEqual(valve.get("/hello").json()["version"], f"v{generation}")
        finally:
            wrk.stop()
        result = wrk.result()
        self.assertGreater(result["requests"], 100, result["text"])
        self.assertEqual(result["non2xx"], 0, result["text"])
        self.assertEqual(result["socket_errors"], 0, result["text"])
        status = valve.status()
        self.assertEqual(status["generation"], 6)
        self.assertEqual(status["totals"]["crashes"], 0)
        self.assertEqual(status["totals"]["5xx"], 0)
        metrics = valve.admin("GET", "/metrics").text()
        self.assertRegex(metrics, r'valve_reloads_total\{result="ok"\} 5\b')
        self.assertRegex(metrics, r'valve_worker_recycles_total\{reason="reload"\} 10\b')

    def test_a_broken_reload_keeps_the_old_generation_serving_and_says_why(self):
        valve = self.start_copy("--n-min", "2", "--n-max", "2")
        self.wait_two_ready(valve)
        before = self.pids(valve)
        with open(self.api, "a") as f:
            f.write("\nthis is not R }\n")
        response = valve.admin("POST", "/reload", timeout=120)
        self.assertEqual(response.status, 502, response)
        error = response.json()["error"]
        self.assertIn("reload to generation 2 failed; generation 1 keeps serving", error)
        self.assertIn("unexpected", error, "the R parse error is reported")
        status = valve.status()
        self.assertEqual(status["generation"], 1)
        self.assertEqual(status["reload"]["state"], "failed")
        self.assertEqual(status["reload"]["error"], error)
        wait_until(lambda: self.pids(valve) == before, 30, message="only the old workers")
        self.assertTrue(all(w["state"] == "ready" for w in valve.status()["workers"]))
        for _ in range(5):
            response = valve.get("/hello")
            self.assertEqual(response.status, 200)
            self.assertIn(response.json()["pid"], before)
        # Fixed, the next reload goes through.
        shutil.copy(app_path("ops.R"), self.api)
        self.set_version("fixed")
        response = valve.admin("POST", "/reload", timeout=120)
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json()["generation"], 3, "the failed reload's number is not reused")
        self.assertEqual(valve.get("/hello").json()["version"], "fixed")

    def test_scale_sets_n_min_and_n_max_at_run_time(self):
        valve = self.start_copy("--n-min", "1", "--n-max", "2")
        response = valve.admin("POST", "/scale?n-min=3&n-max=4")
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json(), {"app": "default", "n_min": 3, "n_max": 4})
        wait_until(lambda: [w["state"] for w in valve.status()["workers"]] == ["ready"] * 3, 60,
                   message="three ready workers")
        config = valve.status()["config"]
        self.assertEqual((config["n-min"], config["n-max"]), (3, 4))
        # Down, with a form body: the extra workers drain and exit.
        response = valve.admin("POST", "/scale", body="n-min=1&n-max=1",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(response.status, 200, response)
        wait_until(lambda: len(valve.status()["workers"]) == 1, 30, message="one worker left")
        self.assertEqual(valve.get("/hello").status, 200)
        for target, message in [
            ("/scale?n-min=5&n-max=2", "n-min 5: must be at most n-max (2)"),
            ("/scale?n-max=0", "n-max 0: must be at least 1"),
            ("/scale?n-min=two", 'n-min two: expected a whole number'),
            ("/scale?workers=3", "workers 3: unknown parameter (use n-min, n-max and app)"),
        ]:
            response = valve.admin("POST", target)
            self.assertEqual(response.status, 400, response)
            self.assertEqual(response.json(), {"error": message, "status": 400})
        self.assertEqual(valve.status()["config"]["n-max"], 1, "a refused scale changes nothing")


if __name__ == "__main__":
    unittest.main()
