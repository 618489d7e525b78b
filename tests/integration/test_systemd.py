"""systemd: valvectl speaks the sd_notify protocol on $NOTIFY_SOCKET (READY=1 once its first
worker is ready, STATUS= as workers change, RELOADING=1/READY=1 around a reload, STOPPING=1 on
shutdown), keeps the socket from its workers, and deploy/systemd/valve.service is a unit that
systemd-analyze accepts and whose ExecStart serves examples/hello."""

import os
import re
import shlex
import signal
import socket
import subprocess
import time
import unittest

from harness import SRC, VALVECTL, ValveTestCase, backend_cmd, example_path

UNIT = os.path.join(SRC, "deploy", "systemd", "valve.service")


class FakeNotifySocket:
    """A datagram socket standing in for systemd's: every message received, in order."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path if not path.startswith("@") else "\0" + path[1:])
        self.messages = []

    def receive(self, timeout):
        """The next message as a dict of its KEY=VALUE lines, or None after timeout seconds."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except socket.timeout:
            return None
        fields = dict(line.split("=", 1) for line in data.splitlines() if line)
        self.messages.append(fields)
        return fields

    def wait_for(self, key, timeout):
        """Messages until one carries key; all of them, that one last."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            message = self.receive(max(0.05, deadline - time.monotonic()))
            if message is None:
                continue
            seen.append(message)
            if key in message:
                return seen
        raise AssertionError(f"no {key} within {timeout} s; got {seen}")

    def close(self):
        self.sock.close()


def environ_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return [entry.decode(errors="replace") for entry in f.read().split(b"\0") if entry]


class NotifyTestCase(ValveTestCase):
    def notify_socket(self, name):
        fake = FakeNotifySocket(name)
        self.addCleanup(fake.close)
        return fake


class Notify(NotifyTestCase):
    def test_ready_status_reload_and_stopping(self):
        path = os.path.join(self.tmpdir, "notify.sock")
        fake = self.notify_socket(path)
        valve = self.start_valve("-f", example_path("hello", "plumber.R"), "--n-min", "1",
                                 "-n", "3", "--admin", "127.0.0.1:0", ready=None,
                                 env={"NOTIFY_SOCKET": path})
        # READY=1 comes first, and only once a worker serves.
        before_ready = fake.wait_for("READY", 60)
        self.assertEqual(before_ready[-1]["READY"], "1")
        self.assertEqual(len(before_ready), 1, f"messages before READY=1: {before_ready}")
        states = [w["state"] for w in valve.status()["workers"]]
        self.assertIn("ready", states)
        status = fake.wait_for("STATUS", 5)[-1]["STATUS"]
        self.assertRegex(status, r"^1 worker ready, 0 starting, 0 queued; generation 1; "
                                 r"serving http://127\.0\.0\.1:\d+$")
        self.assertEqual(valve.get("/echo?msg=up").status, 200)

        # No worker inherits the socket: only valvectl speaks for the service.
        for pid in valve.worker_pids():
            env = environ_of(pid)
            self.assertTrue(any(e.startswith("VALVE_WORKER_ID=") for e in env))
            self.assertFalse([e for e in env if e.startswith("NOTIFY_SOCKET=")], pid)

        # STATUS follows the pool.
        self.assertEqual(valve.admin("POST", "/scale?n-min=2").status, 200)
        deadline = time.monotonic() + 30
        while not re.match(r"2 workers ready", status) and time.monotonic() < deadline:
            status = fake.wait_for("STATUS", 30)[-1]["STATUS"]
        self.assertRegex(status, r"^2 workers ready")

        # A reload: RELOADING=1 with the monotonic time systemd asks for, then READY=1.
        valve.send_signal(signal.SIGHUP)
        reloading = fake.wait_for("RELOADING", 10)[-1]
        self.assertEqual(reloading["RELOADING"], "1")
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.assertLess(abs(int(reloading["MONOTONIC_USEC"]) - now_usec), 10_000_000)
        fake.wait_for("READY", 60)
        self.assertRegex(fake.wait_for("STATUS", 5)[-1]["STATUS"], r"generation 2")

        # SIGTERM: STOPPING=1, then a clean exit.
        valve.send_signal(signal.SIGTERM)
        self.assertEqual(fake.wait_for("STOPPING", 10)[-1]["STOPPING"], "1")
        self.assertEqual(valve.wait_exit(40), 0, valve.log_tail())
        while fake.receive(0.2) is not None:
            pass
        stopping = next(i for i, m in enumerate(fake.messages) if "STOPPING" in m)
        self.assertFalse([m for m in fake.messages[stopping:] if "READY" in m], fake.messages)

    def test_abstract_socket_and_no_socket(self):
        name = f"@valve-test-{os.getpid()}-{os.urandom(4).hex()}"
        fake = self.notify_socket(name)
        valve = self.start_backend_valve(ready=None, env={"NOTIFY_SOCKET": name})
        self.assertEqual(fake.wait_for("READY", 30)[-1]["READY"], "1")
        valve.wait_ready()
        # Without NOTIFY_SOCKET (empty is unset) valvectl says nothing about it and serves as ever.
        plain = self.start_backend_valve(env={"NOTIFY_SOCKET": ""})
        self.assertNotIn("NOTIFY_SOCKET", plain.log())

    def test_unusable_socket_is_a_warning_not_a_failure(self):
        valve = self.start_backend_valve(env={"NOTIFY_SOCKET": "relative/notify.sock"})
        self.assertRegex(valve.log(), r"warn .*NOTIFY_SOCKET relative/notify\.sock: not a socket "
                                      r"path or an abstract name")


def unit_lines():
    """The unit file's KEY=VALUE lines, continuation lines joined, as a list of (key, value)."""
    with open(UNIT) as f:
        text = re.sub(r"\\\n\s*", " ", f.read())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


class Unit(NotifyTestCase):
    def test_systemd_analyze_accepts_the_unit(self):
        unit = os.path.join(self.tmpdir, "valve.service")
        with open(UNIT) as f:
            text = f.read()
        self.assertIn("/usr/local/bin/valvectl ", text)
        with open(unit, "w") as f:  # the installed path does not exist here: point at the build
            f.write(text.replace("/usr/local/bin/valvectl ", VALVECTL + " "))
        run = subprocess.run(["systemd-analyze", "verify", "--man=no", unit], capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr)
        # systemd-analyze exits 0 on an unknown setting or value too: it must say nothing at all.
        self.assertEqual(run.stdout + run.stderr, "")

    def test_unit_settings_match_valvectl(self):
        settings = dict(unit_lines())
        self.assertEqual(settings["Type"], "notify")
        self.assertEqual(settings["NotifyAccess"], "main")
        self.assertEqual(settings["ExecReload"], "/bin/kill -HUP $MAINPID")
        self.assertEqual(settings["KillMode"], "mixed", "SIGTERM must reach valvectl alone")
        argv = shlex.split(settings["ExecStart"])
        flags = dict(zip(argv[1::2], argv[2::2]))
        graceful = float(flags["--graceful-timeout"])
        kill = float(flags["--kill-timeout"])
        self.assertGreater(float(settings["TimeoutStopSec"]), graceful + kill)
        self.assertEqual(flags["--admin"], "unix:/run/valve/admin.sock")
        self.assertEqual(settings["RuntimeDirectory"], "valve")

    def test_exec_start_serves_under_a_notify_socket(self):
        """The unit's own command line, with its paths moved here, run as systemd would run it."""
        argv = shlex.split(dict(unit_lines())["ExecStart"])
        self.assertEqual(argv[0], "/usr/local/bin/valvectl")
        args = [a.replace("/srv/valve/plumber.R", example_path("model", "plumber.R"))
                 .replace("/run/valve/", self.tmpdir + "/") for a in argv[1:]]
        path = os.path.join(self.tmpdir, "notify.sock")
        fake = self.notify_socket(path)
        # --port/--host come last and win: loopback, a free port.
        valve = self.start_valve(*args, ready=None, env={"NOTIFY_SOCKET": path},
                                 cwd=example_path("model"))
        self.assertEqual(fake.wait_for("READY", 90)[-1]["READY"], "1")
        answer = valve.post("/predict", '{"wt": 2.62, "hp": 110, "am": 1}',
                            headers={"Content-Type": "application/json"})
        self.assertEqual(answer.status, 200, answer)
        self.assertEqual(len(valve.workers()), 2, "--n-min 2 from the unit")
        self.assertTrue(os.path.exists(os.path.join(self.tmpdir, "admin.sock")))


if __name__ == "__main__":
    unittest.main(verbosity=2)
