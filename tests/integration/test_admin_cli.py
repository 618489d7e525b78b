"""valvectl status, reload and scale against a running valvectl's admin interface (TCP and Unix
socket), with the native test backend: the table matches GET /status, scale and reload take
effect, and bad or missing addresses fail with the documented exit statuses."""

import http.client
import json
import os
import re
import shlex
import unittest

from harness import (ADMIN_RE, LOOPBACK, UnixHTTPConnection, ValveTestCase, backend_cmd, free_port,
                     run_valvectl, wait_until)

ADMIN_LOG_RE = ADMIN_RE.pattern


def get_status(address, timeout=10.0, token=None):
    """GET /status straight from the admin interface (not through valvectl), as a dict."""
    if address.startswith("unix:"):
        conn = UnixHTTPConnection(address[len("unix:"):], timeout)
    else:
        host, _, port = address.rpartition(":")
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.request("GET", "/status",
                     headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise AssertionError(f"GET /status answered {response.status}: {body!r}")
        return json.loads(body)
    finally:
        conn.close()


def table_rows(out):
    """The worker rows of `valvectl status`: the lines under the ID PID GEN ... header, split."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["ID", "PID", "GEN"])
    return [line.split() for line in lines[header + 1:] if line.strip()]


def ready_workers(status):
    return [w for w in status["workers"] if w["state"] == "ready"]


class AdminCli(ValveTestCase):
    def start_admin_valve(self, *args, admin=f"{LOOPBACK}:0"):
        """A valvectl on the native backend with an admin interface; returns it and the admin
        address valvectl logged ("127.0.0.1:PORT" or "unix:/path")."""
        valve = self.start_backend_valve("--admin", admin, *args)
        address = valve.wait_log(ADMIN_LOG_RE, timeout=10).group(1)
        return valve, address

    def valvectl(self, *args, timeout=20, env=None):
        code, out, err, elapsed, left = run_valvectl(list(args), timeout=timeout, env=env)
        self.assertEqual(left, [], f"valvectl {args} left processes behind")
        return code, out, err, elapsed

    def wait_workers(self, address, count, timeout=30):
        """Waits until /status lists exactly `count` workers, all ready; returns the status."""
        def settled():
            status = get_status(address)
            workers = status["workers"]
            return status if len(workers) == count == len(ready_workers(status)) else None
        return wait_until(settled, timeout, interval=0.1, message=f"{count} ready workers")

    def assertTableMatches(self, out, status):
        rows = table_rows(out)
        self.assertEqual(sorted(int(row[1]) for row in rows),
                         sorted(w["pid"] for w in status["workers"]), out)
        for row in rows:
            self.assertEqual(len(row), 10, f"a row has 10 columns: {row}")
            self.assertIn(row[3], ("starting", "ready", "retiring", "unhealthy", "draining",
                                   "stopping"), row)

    def test_status_table_and_json(self):
        valve, address = self.start_admin_valve("--n-min", "2", "--n-max", "3")
        self.wait_workers(address, 2)
        self.assertEqual(valve.get("/hello").status, 200)
        code, out, err, elapsed = self.valvectl("status", "--admin", address)
        self.assertEqual(code, 0, err)
        status = self.wait_workers(address, 2)
        self.assertTableMatches(out, status)
        self.assertEqual(sorted(int(row[1]) for row in table_rows(out)), valve.worker_pids())
        self.assertRegex(out, rf"(?m)^PID\s*: {valve.pid}$")
        self.assertRegex(out, r"(?m)^State\s*: running$")
        self.assertRegex(out, rf"(?m)^Address\s*: {re.escape(status['address'])}$")
        self.assertRegex(out, r"(?m)^Requests\s*: [1-9]")
        for row in table_rows(out):
            self.assertRegex(row[7], r"^\d+(s|m\d\ds|h\d\dm)$", f"AGE is human: {row}")

        # --json: the admin interface's JSON as it is.
        code, out, err, elapsed = self.valvectl("status", "--json", "--admin", address)
        self.assertEqual(code, 0, err)
        parsed = json.loads(out)
        self.assertEqual(parsed["pid"], valve.pid)
        self.assertEqual(sorted(w["pid"] for w in parsed["workers"]), valve.worker_pids())

        # VALVE_ADMIN stands in for --admin.
        code, out, err, elapsed = self.valvectl("status", env={"VALVE_ADMIN": address})
        self.assertEqual(code, 0, err)
        self.assertEqual(len(table_rows(out)), 2, out)

    def test_scale(self):
        valve, address = self.start_admin_valve("--n-min", "1", "--n-max", "3")
        self.wait_workers(address, 1)
        code, out, err, elapsed = self.valvectl("scale", "--admin", address, "--n-min", "2",
                                                "--n-max", "4")
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), "scaled: n-min 2, n-max 4")
        status = self.wait_workers(address, 2)
        self.assertEqual(str(status["config"]["n-min"]), "2")
        self.assertEqual(str(status["config"]["n-max"]), "4")
        code, out, err, elapsed = self.valvectl("status", "--admin", address)
        self.assertEqual(code, 0, err)
        self.assertEqual(len(table_rows(out)), 2, out)

        # n-min above n-max: the server's 400, with valvectl's flag name; nothing changes.
        code, out, err, elapsed = self.valvectl("scale", "--admin", address, "--n-min", "5",
                                                "--n-max", "3")
        self.assertEqual(code, 2, err)
        self.assertRegex(err, r"^valvectl: --n-min 5: .*n-max", err)
        self.assertEqual(str(get_status(address)["config"]["n-min"]), "2")

        # Neither bound: a usage error naming both flags, before any request.
        code, out, err, elapsed = self.valvectl("scale", "--admin", address)
        self.assertEqual(code, 2, err)
        self.assertIn("--n-min", err)
        self.assertIn("--n-max", err)

    def test_reload_replaces_every_worker(self):
        valve, address = self.start_admin_valve("--n-min", "2", "--n-max", "2")
        before = self.wait_workers(address, 2)
        old_pids = {w["pid"] for w in before["workers"]}
        code, out, err, elapsed = self.valvectl("reload", "--admin", address, timeout=90)
        self.assertEqual(code, 0, err)
        match = re.fullmatch(r"reloaded: generation (\d+), (\d+) workers? in (\d+) ms\n", out)
        self.assertTrue(match, out)
        self.assertEqual(int(match.group(1)), before["generation"] + 1)

        def only_new_workers():
            status = get_status(address)
            pids = {w["pid"] for w in status["workers"]}
            return status if len(ready_workers(status)) == 2 and not pids & old_pids else None

        after = wait_until(only_new_workers, 30, interval=0.1, message="only new workers")
        self.assertEqual(after["generation"], before["generation"] + 1)
        wait_until(lambda: not set(valve.worker_pids()) & old_pids, 30,
                   message="the old workers gone from the process tree")
        self.assertEqual(valve.get("/hello").status, 200)

    def test_failed_reload_keeps_the_old_generation(self):
        # New workers fail to start once the flag file exists; the old ones keep serving.
        flag = os.path.join(self.tmpdir, "broken")
        cmd = (f"if test -e {shlex.quote(flag)}; then echo cannot start: broken >&2; exit 1; fi; "
               f"exec {backend_cmd()}")
        valve = self.start_valve("--cmd", cmd, "--admin", f"{LOOPBACK}:0")
        address = valve.wait_log(ADMIN_LOG_RE, timeout=10).group(1)
        before = self.wait_workers(address, 1)
        with open(flag, "w"):
            pass
        code, out, err, elapsed = self.valvectl("reload", "--admin", address, timeout=90)
        self.assertEqual(code, 1, err)
        self.assertEqual(out, "")
        self.assertRegex(err, r"^valvectl: reload failed: ", err)
        self.assertIn("cannot start: broken", err)
        self.assertIn("keeps serving", err)
        status = get_status(address)
        self.assertEqual(status["generation"], before["generation"])
        self.assertEqual([w["pid"] for w in ready_workers(status)],
                         [w["pid"] for w in before["workers"]])
        self.assertEqual(valve.get("/hello").status, 200)
        code, out, err, elapsed = self.valvectl("status", "--admin", address)
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"(?m)^Reload\s*: failed: ")

    def test_unix_socket(self):
        path = os.path.join(self.tmpdir, "admin.sock")
        valve, address = self.start_admin_valve(admin=f"unix:{path}")
        self.assertEqual(address, f"unix:{path}")
        status = self.wait_workers(address, 1)
        code, out, err, elapsed = self.valvectl("status", "--admin", address)
        self.assertEqual(code, 0, err)
        self.assertTableMatches(out, status)
        code, out, err, elapsed = self.valvectl("scale", "--admin", address, "--n-max", "2")
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), "scaled: n-min 1, n-max 2")

    def test_address_errors(self):
        # Neither --admin nor VALVE_ADMIN.
        code, out, err, elapsed = self.valvectl("status", env={"VALVE_ADMIN": ""})
        self.assertEqual(code, 2, err)
        self.assertIn("valvectl: --admin: required (or set VALVE_ADMIN)", err)
        # Malformed: the flag and the value named.
        for bad in ("nonsense", "127.0.0.1:", "127.0.0.1:70000", "::1:80", "unix:"):
            with self.subTest(admin=bad):
                code, out, err, elapsed = self.valvectl("reload", "--admin", bad)
                self.assertEqual(code, 2, err)
                self.assertIn(f"--admin {bad}:", err)
        # Nothing listening: exit 1 at once.
        address = f"{LOOPBACK}:{free_port()}"
        code, out, err, elapsed = self.valvectl("status", "--admin", address)
        self.assertEqual(code, 1, err)
        self.assertIn(f"valvectl: --admin {address}: cannot connect: Connection refused", err)
        self.assertLess(elapsed, 5)
        missing = os.path.join(self.tmpdir, "no-such.sock")
        code, out, err, elapsed = self.valvectl("scale", "--admin", f"unix:{missing}", "--n-min",
                                                "1")
        self.assertEqual(code, 1, err)
        self.assertIn("cannot connect", err)

    def test_status_reload_and_scale_send_the_token(self):
        token, token_file = self.admin_token_file("cli")
        valve, address = self.start_admin_valve("--n-min", "1", "--n-max", "3",
                                                "--admin-token-file", token_file)
        self.assertEqual(get_status(address, token=token)["generation"], 1)
        given = ["--admin", address, "--admin-token-file", token_file]

        code, out, err, elapsed = self.valvectl("status", *given)
        self.assertEqual(code, 0, err)
        self.assertTableMatches(out, get_status(address, token=token))
        code, out, err, elapsed = self.valvectl("scale", *given, "--n-max", "4")
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), "scaled: n-min 1, n-max 4")
        code, out, err, elapsed = self.valvectl("reload", *given, timeout=90)
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"^reloaded: generation 2, ")
        # From the environment: the token itself, a file, or the server's own variable.
        for env in ({"VALVE_ADMIN_TOKEN": token}, {"VALVE_ADMIN_TOKEN_FILE": token_file},
                    {"VALVECTL_ADMIN_TOKEN_FILE": token_file}):
            with self.subTest(env=list(env)):
                code, out, err, elapsed = self.valvectl("status", "--json", "--admin", address,
                                                        env=env)
                self.assertEqual(code, 0, err)
                self.assertEqual(json.loads(out)["generation"], 2)

        # Without a token, or a wrong one: exit 2, naming the flag or variable (never the
        # token), and nothing changes.
        code, out, err, elapsed = self.valvectl("scale", "--admin", address, "--n-max", "2")
        self.assertEqual(code, 2, err)
        self.assertIn(f"valvectl: --admin-token-file: required: --admin {address} asks for a "
                      f"bearer token (or set VALVE_ADMIN_TOKEN)", err)
        wrong_file = os.path.join(self.tmpdir, "wrong-token")
        with open(wrong_file, "w") as f:
            f.write("not-" + token)
        code, out, err, elapsed = self.valvectl("reload", "--admin", address,
                                                "--admin-token-file", wrong_file)
        self.assertEqual(code, 2, err)
        self.assertIn(f"valvectl: --admin-token-file {wrong_file}: --admin {address} refused "
                      f"the token (401)", err)
        code, out, err, elapsed = self.valvectl("status", "--admin", address,
                                                env={"VALVE_ADMIN_TOKEN": "wrong"})
        self.assertEqual(code, 2, err)
        self.assertIn(f"valvectl: VALVE_ADMIN_TOKEN: --admin {address} refused the token", err)
        self.assertNotIn("wrong", err.replace("refused", ""))
        status = get_status(address, token=token)
        self.assertEqual((status["generation"], status["config"]["n-max"]), (2, 4))
        # A bad token file: exit 2 before any request.
        empty = os.path.join(self.tmpdir, "empty")
        open(empty, "w").close()
        for path, message in [(empty, "is empty"),
                              (os.path.join(self.tmpdir, "none"), "cannot read: No such file")]:
            code, out, err, elapsed = self.valvectl("status", "--admin", address,
                                                    "--admin-token-file", path)
            self.assertEqual(code, 2, err)
            self.assertIn(f"valvectl: --admin-token-file {path}: {message}", err)
        self.assertNotIn(token, valve.log())

    def test_help_and_misplaced_flags(self):
        code, out, err, elapsed = self.valvectl("--help")
        self.assertEqual(code, 0, err)
        for name in ("status", "reload", "scale"):
            self.assertRegex(out, rf"(?m)^\s+{name}\s", f"--help lists {name}")
        code, out, err, elapsed = self.valvectl("status", "--help")
        self.assertEqual(code, 0, err)
        self.assertIn("--admin", out)
        self.assertIn("--admin-token-file", out)
        self.assertIn("VALVE_ADMIN_TOKEN", out)
        self.assertIn("--json", out)
        # A serve flag before the subcommand would be ignored: refused instead.
        code, out, err, elapsed = self.valvectl("--port", "3000", "status", "--admin",
                                                f"{LOOPBACK}:1")
        self.assertEqual(code, 2, err)
        self.assertIn("--port", err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
