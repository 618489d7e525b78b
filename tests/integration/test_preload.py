"""--preload with real plumber workers: workers forked from a template have seeds, temporary
directories and post-fork hooks of their own and their output in valve's log; spares forked ahead
become the next workers and are replaced, and one that dies is not; a killed worker is
seen and replaced; a killed template is relaunched while its workers keep serving; a template that
cannot load falls back to plain launches and says so; a failing post-fork hook fails the start; a
reload replaces the template first (and a broken one keeps the old generation); and nothing outlives
valvectl, not even when it is SIGKILLed. Each forked worker's (and each template's) temporary
directory is its own, and goes once it has exited: killed, recycled, reloaded, valvectl stopped."""

import json
import os
import re
import shutil
import signal
import unittest

from harness import UnixHTTPConnection, ValveTestCase, app_path, is_alive, owned_tmpdirs, \
    proc_info, run_valvectl, tmp_entries, wait_until


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
        valve = self.start_preload("--n-min", "3", "-n", "3", "--preload-spares", "0")
        workers = self.ready_workers(valve, 3)
        template = self.template(valve)
        self.assertEqual(self.spare_pids(valve), [])  # all three forked on demand
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

    def spare_pids(self, valve, generation=1):
        return [s["pid"] for s in self.template(valve, generation)["spares"]]

    def spares(self, valve, n, generation=1):
        """The pids of the template's spares once there are n, all parked (warm, waiting)."""
        def check():
            spares = self.template(valve, generation)["spares"]
            ok = len(spares) == n and all(s["parked"] for s in spares)
            return [s["pid"] for s in spares] if ok else None
        return wait_until(check, 60, message=f"{n} parked spares")

    def test_spares_forked_ahead_become_the_next_workers_and_are_replaced(self):
        valve = self.start_preload("--n-min", "1", "-n", "3", "--preload-spares", "2",
                                   "--worker-nice", "3")
        first, = self.ready_workers(valve, 1)
        template = self.template(valve)
        spare, other = self.spares(valve, 2)
        # --worker-nice reaches the template, and so each worker and spare it forks.
        base = os.getpriority(os.PRIO_PROCESS, valve.proc.pid)
        for pid in (template["pid"], first["pid"], spare, other):
            self.assertEqual(os.getpriority(os.PRIO_PROCESS, pid), min(19, base + 3), pid)
        # A child of the template in a process group of its own, serving no traffic, unknown to
        # the worker list, listening on a socket of its own until it is handed a worker.
        self.assertEqual(proc_info(spare).ppid, template["pid"])
        self.assertEqual(os.getpgid(spare), spare)
        self.assertNotIn(spare, {w["pid"] for w in valve.status()["workers"]})
        runtime = os.path.dirname(first["address"][len("unix:"):])
        wait_until(lambda: os.path.exists(os.path.join(runtime, f"spare-{spare}.sock")), 30,
                   message="the spare's socket")
        self.assertEqual(valve.admin("POST", "/scale?n-min=2").status, 200)
        second = [w for w in self.ready_workers(valve, 2) if w["pid"] != first["pid"]][0]
        self.assertEqual(second["pid"], spare)
        self.assertTrue(second["forked"], second)
        valve.wait_log(rf"worker {second['id']} \(pid {spare}\) ready after \d+ ms")
        # Its socket was renamed to the worker's address: nothing is left under the spare's name.
        self.assertFalse(os.path.exists(os.path.join(runtime, f"spare-{spare}.sock")))
        hello = worker_get(second, "/hello")
        self.assertEqual(hello["pid"], spare)
        self.assertEqual(hello["worker_id"], str(second["id"]))
        self.assertEqual(hello["hook_pid"], spare)
        self.assertEqual(hello["hook_calls"], 1)
        self.assertEqual(hello["template"], "")
        # Its output goes to valve's log under the worker's name from then on.
        worker_get(second, "/say?msg=from-a-spare")
        valve.wait_log(rf"worker {second['id']} \(pid {spare}\): err: from-a-spare")
        # The template forks a new spare; the other one is next in line.
        self.assertEqual(self.spares(valve, 2)[0], other)
        successor = self.spares(valve, 2)[1]
        self.assertNotIn(successor, (spare, other))
        self.assertEqual(proc_info(successor).ppid, template["pid"])
        # A spare that dies unassigned is not replaced; workers are then forked on demand.
        os.kill(successor, signal.SIGKILL)
        valve.wait_log(rf"its spare \(pid {successor}\) died before it was needed; workers are "
                       r"forked on demand from now on")
        wait_until(lambda: not is_alive(successor), 5, message="the dead spare reaped")
        self.assertEqual(self.spare_pids(valve), [other])
        self.assertFalse(os.path.exists(os.path.join(runtime, f"spare-{successor}.sock")))
        # The one left is still used, and none is forked after it.
        self.assertEqual(valve.admin("POST", "/scale?n-min=3").status, 200)
        third = [w for w in self.ready_workers(valve, 3)
                 if w["pid"] not in (first["pid"], spare)][0]
        self.assertEqual(third["pid"], other)
        self.assertEqual(worker_get(third, "/hello")["hook_calls"], 1)
        # Each spare drew its own seed when it was forked.
        draws = [tuple(worker_get(w, "/random")["u"]) for w in (first, second, third)]
        self.assertEqual(len(set(draws)), 3, draws)
        self.assertEqual(self.spare_pids(valve), [])
        # Another worker is forked on demand.
        self.assertEqual(valve.admin("POST", "/scale?n-min=4&n-max=4").status, 200)
        fourth = [w for w in self.ready_workers(valve, 4)
                  if w["pid"] not in (first["pid"], spare, other)][0]
        self.assertEqual(proc_info(fourth["pid"]).ppid, template["pid"])
        self.assertEqual(self.spare_pids(valve), [])

    def test_auto_spares_cover_what_n_max_allows_and_follow_it(self):
        # Until five minutes of demand have been seen, auto keeps a spare for each worker n-max
        # still allows (valve-rs's cold spike: -n 10, one worker up, ten requests at once).
        valve = self.start_preload("--n-min", "1", "-n", "4")
        self.ready_workers(valve, 1)
        template = self.template(valve)
        first = self.spares(valve, 3)
        # Fewer workers allowed: the spares past them are killed, the newest first.
        self.assertEqual(valve.admin("POST", "/scale?n-max=2").status, 200)
        kept = self.spares(valve, 1)
        self.assertEqual(kept, first[:1])
        for pid in first[1:]:
            wait_until(lambda: not is_alive(pid), 10, message=f"dropped spare {pid} gone")
        self.assertEqual(valve.get("/hello").status, 200)
        # More allowed again: spares are forked up to the new room, by the same template.
        self.assertEqual(valve.admin("POST", "/scale?n-max=5").status, 200)
        grown = self.spares(valve, 4)
        self.assertEqual(grown[0], kept[0])
        self.assertTrue(all(proc_info(p).ppid == template["pid"] for p in grown))
        # A spike takes them as workers; none is forked past n-max.
        self.assertEqual(valve.admin("POST", "/scale?n-min=5").status, 200)
        workers = self.ready_workers(valve, 5)
        self.assertLessEqual(set(grown), {w["pid"] for w in workers})
        self.assertEqual(self.spare_pids(valve), [])

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
        old_spare, = self.spares(valve, 1)
        os.kill(old["pid"], signal.SIGKILL)
        valve.wait_log(rf"template for generation 1 \(pid {old['pid']}\) was killed by signal 9 "
                       r"\(SIGKILL\) unexpectedly", timeout=5)
        for _ in range(5):
            self.assertEqual(valve.get("/hello").status, 200)
        new = wait_until(lambda: (lambda t: t if t["pid"] != old["pid"] else None)(
            self.template(valve)), 60, message="a relaunched template")
        self.assertTrue(all(is_alive(w["pid"]) for w in workers))
        # Its spare, never handed a worker, ends with it.
        wait_until(lambda: not is_alive(old_spare), 10, message="the old template's spare gone")
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
        valve = self.start_preload("--n-min", "2", "-n", "2", "--preload-spares", "1")
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
        # Fixed, the next reload (generation 4: the failed one was 3) is preloaded once more.
        set_line('stop("broken on purpose")\n', "")
        set_line('VERSION <- "v2"', 'VERSION <- "v3"')
        response = valve.admin("POST", "/reload", timeout=90)
        self.assertEqual(response.status, 200, response)
        workers = self.ready_workers(valve, 2, generation=4)
        self.assertTrue(all(w["forked"] for w in workers), workers)
        self.assertEqual(valve.get("/hello").json()["version"], "v3")

    def test_forked_workers_tmpdirs_are_removed_however_they_end(self):
        valve = self.start_preload("--n-min", "2", "-n", "2", "--max-requests", "3",
                                   "--preload-spares", "1")
        workers = self.ready_workers(valve, 2)
        template = self.template(valve)
        dirs = owned_tmpdirs(valve)
        with open(f"/proc/{template['pid']}/environ", "rb") as f:
            self.assertIn(b"TMPDIR=" + dirs[("template", 1)].encode() + b"\0", f.read())
        for w in workers:
            # R's tempdir() is made by the helper in the directory valve made for this worker.
            written = worker_get(w, "/tempfile")
            own = dirs[("worker", w["id"])]
            self.assertEqual(written["tmpdir"], own)
            self.assertTrue(written["path"].startswith(own + "/Rtmp"), written)
        self.assertOnlyLiveTmpdirs(valve, "the start")

        victim = workers[0]
        os.kill(victim["pid"], signal.SIGKILL)
        wait_until(lambda: not os.path.exists(dirs[("worker", victim["id"])]), 10,
                   message="the killed forked worker's directory")
        self.assertOnlyLiveTmpdirs(valve, "kill -9 of a forked worker")

        before = [key for key in owned_tmpdirs(valve) if key[0] == "worker"]
        for _ in range(6):  # --max-requests 3: at least one of the two is recycled
            self.assertEqual(valve.get("/hello").status, 200)
        wait_until(lambda: any(key not in owned_tmpdirs(valve) for key in before), 30,
                   message="a recycled forked worker's directory removed")
        self.assertOnlyLiveTmpdirs(valve, "--max-requests recycling")

        # A reload: the old template and its workers go, and their directories with them.
        self.ready_workers(valve, 2)
        self.assertEqual(valve.admin("POST", "/reload", timeout=90).status, 200)
        self.ready_workers(valve, 2, generation=2)
        wait_until(lambda: [t["generation"] for t in valve.status()["preload"]["templates"]]
                   == [2], 15, message="only generation 2's template")
        self.assertOnlyLiveTmpdirs(valve, "a reload")
        self.assertNotIn(("template", 1), owned_tmpdirs(valve))

        code, left = valve.stop()
        self.assertEqual((code, left), (0, []))
        self.assertEqual(tmp_entries(valve.tmp), [], "valvectl's TMPDIR after it stopped")

    def test_nothing_outlives_a_sigkilled_valvectl(self):
        valve = self.start_preload("--n-min", "2", "-n", "2", "--preload-spares", "1")
        workers = self.ready_workers(valve, 2)
        template = self.template(valve)
        pids = [w["pid"] for w in workers] + [template["pid"]] + self.spares(valve, 1)
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
