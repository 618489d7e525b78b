"""Isolation of the workers: they listen where only valve reaches them, get an explicit environment
(--env, --env-file) instead of everything valve was given, and run as the user named by --user;
valve refuses to run them as root unless told to."""

import os
import shutil
import signal
import stat
import tempfile
import unittest

from harness import ValveTestCase, app_path, run_valvectl, tmp_entries, wait_until

IS_ROOT = os.geteuid() == 0


def proc_uids(pid):
    """(real, effective) uid and gid of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    uid = [int(v) for v in fields["Uid"].split()]
    gid = [int(v) for v in fields["Gid"].split()]
    return uid[0], uid[1], gid[0], gid[1]


def thread_nices(pid):
    """The niceness of each of a process's threads, from /proc (field 19 of stat)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            out.append(int(f.read().rsplit(")", 1)[1].split()[16]))
    return out


class Isolation(ValveTestCase):
    def test_plumber_workers_listen_in_a_private_directory(self):
        valve = self.start_valve("-f", app_path("ops.R"), "--admin", "127.0.0.1:0", ready="/hello",
                                 ready_timeout=60, env={"VALVE_TEST_DIR": self.tmpdir})
        (worker,) = valve.status()["workers"]
        self.assertTrue(worker["address"].startswith("unix:"), worker)
        path = worker["address"][5:]
        directory = os.path.dirname(path)
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        self.assertEqual(os.stat(directory).st_uid, os.getuid())
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))

    def test_a_simple_cmd_runs_without_a_shell(self):
        valve = self.start_backend_valve("-n", "1")
        (worker,) = valve.workers()
        self.assertTrue(worker.comm.startswith("valve-test-back"), worker)  # not sh

    def test_worker_nice_lowers_the_workers_priority_not_valves(self):
        valve = self.start_valve("-f", app_path("ops.R"), "--admin", "127.0.0.1:0",
                                 "--worker-nice", "7", ready="/hello", ready_timeout=60,
                                 env={"VALVE_TEST_DIR": self.tmpdir})
        (worker,) = valve.status()["workers"]
        own = thread_nices(valve.proc.pid)
        self.assertEqual(len(set(own)), 1, own)
        # Every thread of the worker: R's and httpuv's, started after the priority was set.
        nices = thread_nices(worker["pid"])
        self.assertGreater(len(nices), 1, "httpuv's thread is there")
        self.assertEqual(set(nices), {min(19, own[0] + 7)}, nices)  # 19: the most there is
        self.assertEqual(valve.get("/hello").status, 200)

    def test_worker_nice_out_of_range_is_a_usage_error(self):
        code, out, err, elapsed, left = run_valvectl(
            ["-f", app_path("ops.R"), "--port", "0", "--worker-nice", "20"], cwd=self.tmpdir)
        self.assertEqual(code, 2, err)
        self.assertIn("--worker-nice 20: must be at most 19", err)
        self.assertEqual(left, [])


class Environment(ValveTestCase):
    def write_env_file(self, text):
        path = os.path.join(self.tmpdir, "worker.env")
        with open(path, "w") as f:
            f.write(text)
        return path

    def env_of_worker(self, valve, *names):
        response = valve.get("/env?names=" + ",".join(names))
        self.assertEqual(response.status, 200, response)
        return response.json()

    def test_workers_get_only_what_they_are_given(self):
        env_file = self.write_env_file("# settings\nFROM_FILE=file value\nMODE=from the file\n"
                                       "export QUOTED=\"a # b\"\n")
        secrets = {"AWS_SECRET_ACCESS_KEY": "hunter2", "PASSED_ON": "valve's own value",
                   "VALVE_ADMIN": "127.0.0.1:1"}
        # The harness adds "--env NAME" for each variable it sets; these must not leak, so they
        # are put in valvectl's environment behind its back.
        os.environ.update(secrets)
        try:
            valve = self.start_valve("-f", app_path("whoami.R"), "--env", "MODE=production",
                                     "--env", "PASSED_ON", "--env", "NOT_IN_VALVE",
                                     "--env-file", env_file, ready="/hello", ready_timeout=60)
        finally:
            for name in secrets:
                del os.environ[name]
        got = self.env_of_worker(valve, "MODE", "FROM_FILE", "QUOTED", "PASSED_ON", "PATH",
                                 "HOME")
        values = got["values"]
        self.assertEqual(values["MODE"], "production")  # --env over the file
        self.assertEqual(values["FROM_FILE"], "file value")
        self.assertEqual(values["QUOTED"], "a # b")
        self.assertEqual(values["PASSED_ON"], "valve's own value")  # NAME alone passes it on
        self.assertEqual(values["PATH"], os.environ["PATH"])
        self.assertEqual(values["HOME"], os.environ["HOME"])
        for leaked in ("AWS_SECRET_ACCESS_KEY", "VALVE_ADMIN", "NOT_IN_VALVE", "PYTHONUNBUFFERED",
                       "VALVECTL", "MESON_TEST_ITERATION"):
            self.assertNotIn(leaked, got["names"])
        # And what valve itself tells each worker.
        for own in ("VALVE_WORKER_ID", "VALVE_SOCKET", "VALVE_FILE"):
            self.assertIn(own, got["names"])

    def test_a_reload_reads_the_env_file_again_and_a_broken_one_fails_it(self):
        env_file = self.write_env_file("RELEASE=1\n")
        valve = self.start_valve("-f", app_path("whoami.R"), "--env-file", env_file,
                                 "--admin", "127.0.0.1:0", ready="/hello", ready_timeout=60)
        self.assertEqual(self.env_of_worker(valve, "RELEASE")["values"]["RELEASE"], "1")

        self.write_env_file("RELEASE=2\n")
        response = valve.admin("POST", "/reload", timeout=90)
        self.assertEqual(response.status, 200, response)
        self.assertEqual(self.env_of_worker(valve, "RELEASE")["values"]["RELEASE"], "2")

        self.write_env_file("RELEASE=3\nthis line is broken\n")
        response = valve.admin("POST", "/reload", timeout=90)
        self.assertEqual(response.status, 502, response)
        self.assertIn(f"env-file {env_file}:2: expected NAME=VALUE", response.json()["error"])
        self.assertEqual(valve.status()["reload"]["state"], "failed")
        # The serving generation keeps its environment, and so does a worker launched after the
        # failure: kill the worker, and read its replacement's.
        before = self.env_of_worker(valve, "RELEASE")
        self.assertEqual(before["values"]["RELEASE"], "2")
        os.kill(before["pid"], signal.SIGKILL)
        after = wait_until(lambda: self.replacement(valve, before["pid"]), 60,
                           message="a replacement worker")
        self.assertEqual(after["values"]["RELEASE"], "2")

    def replacement(self, valve, old_pid):
        try:
            got = self.env_of_worker(valve, "RELEASE")
        except (AssertionError, OSError):
            return None
        return got if got["pid"] != old_pid else None

    def test_mistakes_are_usage_errors_naming_the_flag(self):
        env_file = self.write_env_file("GOOD=1\nBAD NAME=2\n")
        cases = [
            (["--env", "1ABC=x"], "--env 1ABC=x: expected NAME=VALUE or NAME"),
            (["--env-file", env_file], f"--env-file {env_file}:2: BAD NAME: not a variable name"),
            (["--env-file", os.path.join(self.tmpdir, "missing.env")], "cannot read"),
        ]
        for args, message in cases:
            with self.subTest(args=args):
                code, out, err, elapsed, left = run_valvectl(
                    ["-f", app_path("whoami.R"), "--port", "0"] + args, cwd=self.tmpdir)
                self.assertEqual(code, 2, err)
                self.assertIn(message, err)
                self.assertEqual(left, [])


class Identity(ValveTestCase):
    def usage_error(self, args, allow_root=True):
        code, out, err, elapsed, left = run_valvectl(
            ["-f", app_path("whoami.R"), "--port", "0"] + args, cwd=self.tmpdir,
            allow_root=allow_root)
        self.assertEqual(code, 2, err)
        self.assertEqual(left, [])
        return err

    def test_unknown_users_and_groups_are_usage_errors(self):
        self.assertIn("valvectl: --user no-such-user-xyz: no such user",
                      self.usage_error(["--user", "no-such-user-xyz"]))
        self.assertIn("valvectl: --group no-such-group-xyz: no such group",
                      self.usage_error(["--user", "nobody", "--group", "no-such-group-xyz"]))
        self.assertIn("valvectl: --group nogroup: give --user as well",
                      self.usage_error(["--group", "nogroup"]))

    def test_root_workers_only_when_allowed(self):
        if IS_ROOT:
            err = self.usage_error([], allow_root=False)
            self.assertIn("valvectl: --user \"\": valve runs as root, so its workers would too", err)
            err = self.usage_error(["--user", "root"], allow_root=False)
            self.assertIn("valvectl: --user root: workers would run as root; add --allow-root", err)
        else:
            # Not root: nothing to refuse; workers run as valve's own user.
            valve = self.start_valve("-f", app_path("whoami.R"), ready="/hello",
                                     ready_timeout=60, allow_root=False)
            pid = valve.get("/env").json()["pid"]
            self.assertEqual(proc_uids(pid)[:2], (os.getuid(), os.geteuid()))

    def test_workers_run_as_the_given_user(self):
        if not IS_ROOT:
            err = self.usage_error(["--user", "nobody"])
            self.assertIn("--user nobody: valve must run as root to start workers as another user",
                          err)
            return
        # The worker must be able to read its API file: put it where nobody can.
        public = tempfile.mkdtemp(prefix="valve-public-")
        self.addCleanup(shutil.rmtree, public, True)
        os.chmod(public, 0o755)
        api = os.path.join(public, "whoami.R")
        shutil.copy(app_path("whoami.R"), api)
        os.chmod(api, 0o644)
        for extra in ([], ["--preload"]):  # launched, and forked from a template
            with self.subTest(extra=extra):
                valve = self.start_valve("-f", api, "--user", "nobody", "--admin", "127.0.0.1:0",
                                         *extra, ready="/hello", ready_timeout=60,
                                         allow_root=False)
                got = valve.get("/env?names=HOME,USER,LOGNAME").json()
                self.assertEqual(got["user"], "nobody")
                self.assertEqual(got["values"]["HOME"], "/nonexistent")
                self.assertEqual(got["values"]["USER"], "nobody")
                self.assertEqual(got["values"]["LOGNAME"], "nobody")
                self.assertEqual(proc_uids(got["pid"]), (65534, 65534, 65534, 65534))
                (worker,) = valve.status()["workers"]
                self.assertEqual(worker.get("forked", False), bool(extra), worker)
                # The socket directory is now the worker's, and still private.
                directory = os.path.dirname(worker["address"][5:])
                info = os.stat(directory)
                self.assertEqual((info.st_uid, stat.S_IMODE(info.st_mode)), (65534, 0o700))
                # valve itself stays root (it must, to signal and replace its workers).
                self.assertEqual(proc_uids(valve.pid)[:2], (0, 0))
                # The worker's temporary directory is its own, private, and goes when it ends.
                tmp = valve.get("/env?names=TMPDIR").json()["values"]["TMPDIR"]
                self.assertEqual(os.path.dirname(tmp), valve.tmp)
                info = os.stat(tmp)
                self.assertEqual((info.st_uid, stat.S_IMODE(info.st_mode)), (65534, 0o700))
                self.assertEqual(valve.stop(), (0, []))
                self.assertEqual(tmp_entries(valve.tmp), [])


if __name__ == "__main__":
    unittest.main()
