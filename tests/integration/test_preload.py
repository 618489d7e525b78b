"""--preload with real plumber workers: workers forked from a template have seeds, temporary
directories and post-fork hooks of their own and their output in valve's log; a killed worker is
seen and replaced; a killed template is relaunched while its workers keep serving; a template that
cannot load falls back to plain launches and says so; a failing post-fork hook fails the start; a
reload replaces the template first (and a broken one keeps the old generation); and nothing outlives
valvectl, not even when it is SIGKILLed."""

import json
import os
import re
import shutil
import signal
import unittest

from harness import UnixHTTPConnection, ValveTestCase, app_path, is_alive, proc_info, \
    run_valvectl, wait_until


def worker_get(worker, path):
    """GET straight from one worker's Unix socket (valve would pick the most recently used)."""
    conn = UnixHTTPConnection(worker["address"][len("unix:"):], timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body)
        return json.loads(body)
    finally:
        conn.close()


class Preload(ValveTestCase):
    def start_preload(self, *args, api=None):
        api = api or app_path("preload.R")
        return self.start_valve("-f", api, "--preload", "--admin", "127.0.0.1:0", *args,
                                ready="/hello", ready_timeout=60,
                                env={"VALVE_TEST_DIR": self.tmpdir})

    def ready_workers(self, valve, n, generation=None):
        def check():
            ws = [w for w in valve.status()["workers"] if w["state"] == "ready" and
                  (generation is None or w["generation"] == generation)]
            return ws if len(ws) == n else None
        return wait_until(check, 60, message=f"{n} ready workers")

    def template(self, valve, generation=1):
        def check():
            ts = [t for t in valve.status()["preload"]["templates"]
                  if t["generation"] == generation and t["state"] == "ready"]
            return ts[0] if ts else None
        return wait_until(check, 60, message=f"a ready template for generation {generation}")

    def test_forked_workers_have_their_own_seed_tempdir_hook_and_logs(self):
        valve = self.start_preload("--n-min", "3", "-n", "3")
        workers = self.ready_workers(valve, 3)
        template = self.template(valve)
        answers = []
        for w in workers:
            self.assertTrue(w["forked"], w)
            self.assertEqual(proc_info(w["pid"]).ppid, template["pid"], w)
            hello = worker_get(w, "/hello")
            # The file ran once, in the template; the hook ran once, in this worker.
            self.assertEqual(hello["loaded_in"], template["pid"])
            self.assertEqual(hello["hook_pid"], w["pid"])
            self.assertEqual(hello["hook_calls"], 1)
            self.assertEqual(hello["worker_id"], str(w["id"]))
            self.assertEqual(hello["template"], "")
            answers.append((hello, worker_get(w, "/random")))
        # The template drew from set.seed(42) while loading; each worker is reseeded after the fork.
        draws = [tuple(r["u"]) + tuple(r["s"]) for _, r in answers]
        self.assertEqual(len(set(draws)), 3, draws)
        self.assertEqual(len({h["tempdir"] for h, _ in answers}), 3, answers)
        # Each worker's stdout and stderr reach valve's log under its own name.
        w = workers[0]
        worker_get(w, "/say?msg=forked-output")
        valve.wait_log(rf"worker {w['id']} \(pid {w['pid']}\) \[stdout\]: out: forked-output")
        valve.wait_log(rf"worker {w['id']} \(pid {w['pid']}\): err: forked-output")
        metrics = valve.admin("GET", "/metrics").text()
        self.assertRegex(metrics, r"valve_worker_forks_total 3\b")
        self.assertRegex(metrics, r"valve_template_launches_total 1\b")

    def test_a_killed_forked_worker_is_seen_at_once_and_replaced(self):
        valve = self.start_preload("--n-min", "2", "-n", "2")
        victim, other = self.ready_workers(valve, 2)
        os.kill(victim["pid"], signal.SIGKILL)
        # Its status comes from the template, which reaps it: no guess, no zombie.
        valve.wait_log(rf"worker {victim['id']} \(pid {victim['pid']}\) was killed by signal 9 "
                       r"\(SIGKILL\) unexpectedly", timeout=5)
        wait_until(lambda: not is_alive(victim["pid"]), 5, message="the killed worker reaped")
        fresh = self.ready_workers(valve, 2)
        self.assertNotIn(victim["pid"], {w["pid"] for w in fresh})
        self.assertTrue(all(w["forked"] for w in fresh), fresh)
        self.assertEqual(valve.get("/hello").status, 200)
        # valve stops a forked worker as any other: scaling down ends one, and it is reaped.
        self.assertEqual(valve.admin("POST", "/scale?n-min=1&n-max=1").status, 200)
        wait_until(lambda: len(valve.status()["workers"]) == 1, 15, message="one worker left")
        gone = {w["pid"] for w in fresh} - {w["pid"] for w in valve.status()["workers"]}
        wait_until(lambda: not any(is_alive(p) for p in gone), 5, message="the stopped one gone")

    def test_a_killed_template_is_relaunched_and_its_workers_keep_serving(self):
        valve = self.start_preload("--n-min", "2", "-n", "3")
        workers = self.ready_workers(valve, 2)
        old = self.template(valve)
        os.kill(old["pid"], signal.SIGKILL)
        valve.wait_log(rf"template for generation 1 \(pid {old['pid']}\) was killed by signal 9 "
                       r"\(SIGKILL\) unexpectedly", timeout=5)
        for _ in range(5):
            self.assertEqual(valve.get("/hello").status, 200)
        new = wait_until(lambda: (lambda t: t if t["pid"] != old["pid"] else None)(
            self.template(valve)), 60, message="a relaunched template")
        self.assertTrue(all(is_alive(w["pid"]) for w in workers))
        # Orphaned, the old workers now belong to valvectl, a child subreaper.
        wait_until(lambda: all(proc_info(w["pid"]).ppid == valve.pid for w in workers), 5,
                   message="the orphaned workers reparented to valvectl")
        # A new worker comes from the new template.
        self.assertEqual(valve.admin("POST", "/scale?n-min=3").status, 200)
        third = [w for w in self.ready_workers(valve, 3) if w["pid"] not in
                 {x["pid"] for x in workers}][0]
        self.assertEqual(proc_info(third["pid"]).ppid, new["pid"])
        # An orphaned worker's death is still seen, with its status (valvectl reaps it now).
        os.kill(workers[0]["pid"], signal.SIGKILL)
        valve.wait_log(rf"worker {workers[0]['id']} \(pid {workers[0]['pid']}\) was killed by "
                       r"signal 9", timeout=5)

    def test_a_template_that_cannot_load_falls_back_to_plain_launches(self):
        open(os.path.join(self.tmpdir, "no-template"), "w").close()
        valve = self.start_preload("--n-min", "2", "-n", "2")
        workers = self.ready_workers(valve, 2)
        valve.wait_log(r"preload: generation 1 launches workers plainly: the template for "
                       r"generation 1 \(pid \d+\) exited with status 1 before it loaded the API")
        self.assertIn("refusing to load in a template", valve.log())
        for w in workers:
            self.assertFalse(w["forked"], w)
            self.assertEqual(proc_info(w["pid"]).ppid, valve.pid)
        self.assertEqual(valve.status()["preload"]["plain_generations"], [1])
        self.assertEqual(worker_get(workers[0], "/hello")["hook_calls"], 0)

    def test_a_failing_post_fork_hook_fails_the_start_with_its_message(self):
        open(os.path.join(self.tmpdir, "hook-fails"), "w").close()
        code, _, err, _, left = run_valvectl(
            ["-f", app_path("preload.R"), "--preload", "--port", "0", "--startup-timeout", "20"],
            timeout=45, env={"VALVE_TEST_DIR": self.tmpdir})
        self.assertEqual(code, 1, err)
        self.assertIn("valve_post_fork() failed: hook-fails is set", err)
        self.assertEqual(left, [])

    def test_reload_replaces_the_template_first(self):
        api = os.path.join(self.tmpdir, "plumber.R")
        shutil.copy(app_path("preload.R"), api)
        valve = self.start_preload("--n-min", "2", "-n", "2", api=api)
        self.ready_workers(valve, 2)
        first = self.template(valve)

        def set_line(old, new):
            with open(api) as f:
                text = f.read()
            with open(api, "w") as f:
                f.write(text.replace(old, new, 1))

        set_line('VERSION <- "v1"', 'VERSION <- "v2"')
        response = valve.admin("POST", "/reload", timeout=90)
        self.assertEqual(response.status, 200, response)
        second = self.template(valve, 2)
        workers = self.ready_workers(valve, 2, generation=2)
        for w in workers:
            self.assertTrue(w["forked"], w)
            self.assertEqual(proc_info(w["pid"]).ppid, second["pid"])
            self.assertEqual(worker_get(w, "/hello")["version"], "v2")
        wait_until(lambda: not is_alive(first["pid"]), 15, message="the old template gone")
        wait_until(lambda: [t["generation"] for t in valve.status()["preload"]["templates"]] == [2],
                   15, message="only generation 2's template")

        # A broken file: the new template cannot load it, the plain launch cannot either; the
        # reload is abandoned and generation 2 keeps serving.
        set_line("test_dir <-", 'stop("broken on purpose")\ntest_dir <-')
        response = valve.admin("POST", "/reload", timeout=90)
        self.assertEqual(response.status, 502, response)
        self.assertIn("broken on purpose", response.text())
        self.assertEqual(valve.get("/hello").json()["version"], "v2")
        # Fixed, the next reload (generation 3 again) is preloaded once more.
        set_line('stop("broken on purpose")\n', "")
        set_line('VERSION <- "v2"', 'VERSION <- "v3"')
        response = valve.admin("POST", "/reload", timeout=90)
        self.assertEqual(response.status, 200, response)
        workers = self.ready_workers(valve, 2, generation=3)
        self.assertTrue(all(w["forked"] for w in workers), workers)
        self.assertEqual(valve.get("/hello").json()["version"], "v3")

    def test_nothing_outlives_a_sigkilled_valvectl(self):
        valve = self.start_preload("--n-min", "2", "-n", "2")
        workers = self.ready_workers(valve, 2)
        template = self.template(valve)
        pids = [w["pid"] for w in workers] + [template["pid"]]
        code, left = valve.stop(sig=signal.SIGKILL, leftover_timeout=5)
        self.assertEqual(code, -signal.SIGKILL)
        self.assertEqual(left, [], "processes outlived valvectl")
        self.assertFalse(any(is_alive(p) for p in pids))

    def test_preload_and_cmd_are_refused_together(self):
        code, _, err, _, _ = run_valvectl(["--preload", "--cmd", "sleep 1 {port}"], timeout=10)
        self.assertEqual(code, 2, err)
        self.assertRegex(err, r"--preload true: cannot be used with --cmd")


if __name__ == "__main__":
    unittest.main(verbosity=2)
