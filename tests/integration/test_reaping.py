"""No zombies: valvectl reaps the orphans its workers leave behind, as a child subreaper and as PID 1
of a container (a new PID namespace, made with unshare)."""

import os
import signal
import subprocess
import time
import unittest

import harness
from harness import ValveTestCase, children, descendants, proc_info, wait_until

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


if __name__ == "__main__":
    unittest.main(verbosity=2)
