"""No zombies: valvectl reaps the orphans its workers leave behind, as a child subreaper and as PID 1
of a container (a new PID namespace, made with unshare). Nothing left in /tmp either: each worker
has a temporary directory of its own (its TMPDIR), removed once it has exited, however it ended
(killed, recycled, reloaded, scaled down, valvectl stopped), and valvectl's runtime directory goes
when it stops."""

import concurrent.futures
import os
import re
import signal
import stat
import subprocess
import time
import unittest

import harness
from harness import ValveTestCase, children, descendants, proc_info, tmp_entries, wait_until

# Each worker leaves an orphan: a background `sleep` whose parent shell exits at once.
ORPHAN_SLEEP = "5"  # long enough that both workers' orphans overlap, however slow the start


def orphaning_cmd():
    return f"sh -c '(sleep {ORPHAN_SLEEP} &); exec {harness.backend_cmd()}'"


def orphans_of(pid):
    """valvectl's children that are not workers: the reparented `sleep`s, zombies included."""
    return [p for p in children(pid) if p.comm == "sleep"]


class Subreaper(ValveTestCase):
    def test_orphans_are_adopted_and_reaped(self):
        valve = self.start_valve("--cmd", orphaning_cmd(), "--n-min", "2", "-n", "2")
        # The orphans are reparented to valvectl, not to the machine's init...
        wait_until(lambda: len(orphans_of(valve.pid)) == 2, 5, message="two adopted orphans")
        # ...and reaped when they exit: no zombie stays behind.
        wait_until(lambda: not orphans_of(valve.pid), 10, message="orphans reaped")
        self.assertEqual(valve.zombies(), [])
        self.assertEqual(valve.get("/hello").status, 200)


class Pid1(ValveTestCase):
    def test_valvectl_as_pid_1_reaps_every_orphan_and_stops_cleanly(self):
        wrapper = os.path.join(self.tmpdir, "container-init")
        with open(wrapper, "w") as f:
            f.write("#!/bin/sh\nexec unshare --pid --fork --mount-proc --kill-child "
                    f"'{harness.VALVECTL}' \"$@\"\n")
        os.chmod(wrapper, 0o755)
        real = harness.VALVECTL
        harness.VALVECTL = wrapper
        try:
            valve = self.start_valve("--cmd", orphaning_cmd(), "--n-min", "2", "-n", "2")
        finally:
            harness.VALVECTL = real
        # valve.pid is unshare; its only child is valvectl, PID 1 of the new namespace.
        inner = [p.pid for p in children(valve.pid)]
        self.assertEqual(len(inner), 1, children(valve.pid))
        init = inner[0]
        with open(f"/proc/{init}/status") as f:
            nspid = [line.split()[1:] for line in f if line.startswith("NSpid:")][0]
        self.assertEqual(nspid[-1], "1", "valvectl is not PID 1 in its namespace")

        wait_until(lambda: len(orphans_of(init)) == 2, 5, message="two orphans adopted by PID 1")
        wait_until(lambda: not orphans_of(init), 10, message="orphans reaped by PID 1")
        zombies = [p for p in descendants(init) if p.state == "Z"]
        self.assertEqual(zombies, [])
        self.assertEqual(valve.get("/hello").status, 200)

        # unshare ignores SIGTERM while it waits: the container's runtime signals PID 1 itself.
        os.kill(init, signal.SIGTERM)
        self.assertEqual(valve.wait_exit(20), 0, valve.log_tail())
        self.assertIn("stopped", valve.log())


def environ_tmpdir(pid):
    """The TMPDIR a process was started with, or None (it is gone)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                if entry.startswith(b"TMPDIR="):
                    return entry[len(b"TMPDIR="):].decode()
    except OSError:
        return None
    return None


class TempDirs(ValveTestCase):
    """The native backend as --cmd workers: what each worker sees as TMPDIR, and what stays in
    valvectl's TMPDIR (a directory private to the test) as workers end every way."""

    def worker_dirs(self, valve):
        return {os.path.join(valve.tmp, name) for name in tmp_entries(valve.tmp)
                if name.startswith("valve-worker-")}

    def live_dirs(self, valve):
        return {environ_tmpdir(pid) for pid in valve.worker_pids()} - {None}

    def assert_only_live_workers_dirs(self, valve, what):
        """Eventually (removal runs off valve's loop), the directories there are exactly those of
        the workers alive."""
        try:
            wait_until(lambda: self.worker_dirs(valve) == self.live_dirs(valve), 10,
                       message=f"only live workers' directories after {what}")
        except TimeoutError:
            self.fail(f"after {what}: directories {sorted(self.worker_dirs(valve))}, live "
                      f"workers' {sorted(self.live_dirs(valve))}")

    def litter(self, directory):
        """What a worker leaves in its temporary directory: files, a subdirectory, and a link to
        a directory outside, which the removal must not follow."""
        os.makedirs(os.path.join(directory, "RtmpAbCdEf", "deeper"), exist_ok=True)
        with open(os.path.join(directory, "RtmpAbCdEf", "deeper", "scratch.bin"), "wb") as f:
            f.write(b"x" * 4096)
        os.symlink(self.outside, os.path.join(directory, "outside-link"))

    def test_each_worker_has_its_own_tmpdir_removed_however_it_ends(self):
        self.outside = os.path.join(self.tmpdir, "outside")
        os.mkdir(self.outside)
        keep = os.path.join(self.outside, "keep")
        with open(keep, "w") as f:
            f.write("not a worker's")
        valve = self.start_backend_valve("-n", "3", "--n-min", "3", "--max-requests", "4",
                                         "--admin", "127.0.0.1:0", "--kill-timeout", "2")
        wait_until(lambda: len(self.live_dirs(valve)) == 3, 10, message="three workers")
        pattern = re.compile(rf"valve-worker-{valve.pid}-(\d+)-\w{{6}}$")
        for directory in self.live_dirs(valve):
            # Under valvectl's TMPDIR, named for valvectl and the worker, private to it.
            self.assertEqual(os.path.dirname(directory), valve.tmp)
            self.assertRegex(os.path.basename(directory), pattern)
            info = os.lstat(directory)
            self.assertTrue(stat.S_ISDIR(info.st_mode))
            self.assertEqual(stat.S_IMODE(info.st_mode), 0o700)
            self.litter(directory)
        self.assert_only_live_workers_dirs(valve, "the start")

        victim = valve.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in valve.worker_pids(), 5, message="the killed worker gone")
        self.assert_only_live_workers_dirs(valve, "kill -9 of a worker")

        before = self.live_dirs(valve)
        for d in before:
            if not os.path.exists(os.path.join(d, "outside-link")):
                self.litter(d)
        def recycled():
            # Three requests at once each look, so that every worker takes one (one after another,
            # the pool would give them all to the worker it used last, and its replacements).
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                for answer in pool.map(lambda _: valve.get("/sleep?ms=150"), range(3)):
                    self.assertEqual(answer.status, 200)
            return not (self.live_dirs(valve) & before)

        wait_until(recycled, 45, message="every worker recycled by --max-requests")
        self.assert_only_live_workers_dirs(valve, "--max-requests recycling")

        before = self.live_dirs(valve)
        self.assertEqual(valve.admin("POST", "/reload", timeout=30).status, 200)
        wait_until(lambda: not (self.live_dirs(valve) & before), 30, message="reloaded workers")
        self.assert_only_live_workers_dirs(valve, "a reload")

        self.assertEqual(valve.admin("POST", "/scale?n-min=1&n-max=1").status, 200)
        wait_until(lambda: len(valve.worker_pids()) == 1, 30, message="scaled down to one")
        self.assert_only_live_workers_dirs(valve, "a scale-down")
        self.assertTrue(tmp_entries(valve.tmp))  # the runtime directory and one worker's

        code, left = valve.stop()
        self.assertEqual((code, left), (0, []))
        self.assertEqual(tmp_entries(valve.tmp), [], "valvectl's TMPDIR after it stopped")
        with open(keep) as f:
            self.assertEqual(f.read(), "not a worker's")

    def test_sigint_leaves_tmpdir_empty(self):
        valve = self.start_backend_valve("-n", "2", "--n-min", "2")
        wait_until(lambda: len(self.live_dirs(valve)) == 2, 10, message="two workers")
        code, left = valve.stop(sig=signal.SIGINT)
        self.assertEqual((code, left), (0, []))
        self.assertEqual(tmp_entries(valve.tmp), [], "valvectl's TMPDIR after SIGINT")

    def test_a_worker_whose_tmpdir_cannot_be_made_starts_with_the_one_it_had(self):
        blocked = os.path.join(self.tmpdir, "not-a-directory")
        with open(blocked, "w") as f:
            f.write("TMPDIR points here, a file")
        valve = self.start_backend_valve("-n", "1", "--n-min", "1", "--env",
                                         f"TMPDIR={blocked}")
        valve.wait_log(r"worker 1: cannot make its temporary directory in .*not-a-directory: "
                       r".*its temporary files go to")
        self.assertEqual([environ_tmpdir(p) for p in valve.worker_pids()], [blocked])


if __name__ == "__main__":
    unittest.main(verbosity=2)
