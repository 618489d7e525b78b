"""The admin interface with real plumber workers: /status, /metrics (checked by promtool),
/healthz and /readyz through a graceful stop, errors, a Unix socket made 0600, never served on the
public port; access logs (text and JSON, reopened on SIGUSR1) and JSON log lines."""

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import threading
import time
import unittest
import unittest.mock

import yaml

from harness import BACKEND, SRC, ValveTestCase, app_path, run_valvectl, wait_until

PROMTOOL = "/usr/bin/promtool"


class Admin(ValveTestCase):
    def start_ops(self, *args, admin="127.0.0.1:0"):
        return self.start_valve("-f", app_path("ops.R"), "--admin", admin, *args, ready="/hello",
                                ready_timeout=60, env={"VALVE_TEST_DIR": self.tmpdir})

    def test_post_reload_answers_a_reload_longer_than_ten_seconds(self):
        # The new generation's worker takes 11 s to listen: the answer comes when the reload ends,
        # as for a slow R API or a loaded machine, not cut at the admin request's 10 s limit.
        marker = os.path.join(self.tmpdir, "slow")
        cmd = (f"if [ -e {shlex.quote(marker)} ]; then sleep 11; fi; "
               f"exec {shlex.quote(BACKEND)} --port {{port}}")
        valve = self.start_valve("--cmd", cmd, "-n", "1", "--admin", "127.0.0.1:0")
        with open(marker, "w"):
            pass
        started = time.monotonic()
        response = valve.admin("POST", "/reload", timeout=60)
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json()["generation"], 2)
        self.assertGreater(time.monotonic() - started, 10)

    def test_status_describes_every_worker_and_the_configuration(self):
        valve = self.start_ops("--n-min", "2", "--n-max", "3")
        wait_until(lambda: [w["state"] for w in valve.status()["workers"]] == ["ready"] * 2, 60,
                   message="two ready workers")
        for _ in range(5):
            self.assertEqual(valve.get("/hello").status, 200)
        status = valve.status()
        self.assertEqual(status["state"], "running")
        self.assertEqual(status["address"], f"{valve.host}:{valve.port}")
        self.assertEqual(status["admin"], valve.admin_address())
        self.assertEqual(status["pid"], valve.pid)
        self.assertEqual(status["generation"], 1)
        self.assertEqual(status["queue"], 0)
        self.assertIsNone(status["preload"])
        self.assertEqual(status["config"]["n-max"], 3)
        self.assertEqual(status["config"]["admin"], "127.0.0.1:0")
        self.assertEqual(sorted(w["pid"] for w in status["workers"]), valve.worker_pids())
        served = 0
        for w in status["workers"]:
            self.assertEqual(w["app"], "default")
            self.assertEqual(set(w), {"id", "app", "pid", "generation", "state", "address",
                                      "requests", "in_flight", "websockets", "rss_bytes", "forked",
                                      "pss_bytes", "age_s", "idle_s", "last_used"})
            self.assertEqual(w["generation"], 1)
            self.assertFalse(w["forked"])  # no --preload: launched, and PSS is not sampled
            self.assertEqual(w["pss_bytes"], 0)
            self.assertEqual(w["in_flight"], 0)
            self.assertEqual(w["websockets"], 0)
            self.assertGreater(w["age_s"], 0)
            served += w["requests"]
            if w["requests"]:
                self.assertRegex(w["last_used"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertGreaterEqual(served, 5)
        wait_until(lambda: all(w["rss_bytes"] > 10 << 20 for w in valve.status()["workers"]), 5,
                   message="resident memory sampled")
        self.assertGreaterEqual(status["totals"]["requests"], 5)
        self.assertGreaterEqual(status["totals"]["2xx"], 5)

    def test_metrics_pass_promtool_and_count_requests(self):
        valve = self.start_ops()
        for _ in range(4):
            self.assertEqual(valve.get("/hello").status, 200)
        self.assertEqual(valve.get("/error").status, 500)
        response = valve.admin("GET", "/metrics")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.header("Content-Type").startswith("text/plain; version=0.0.4"))
        text = response.text()
        self.assertTrue(os.access(PROMTOOL, os.X_OK), "promtool missing: run scripts/install-deps")
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=response.body,
                               capture_output=True, timeout=30)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        self.assertEqual(check.stdout + check.stderr, b"", "promtool has no warnings")
        self.assertRegex(text, r'valve_requests_total\{app="default",code="2xx"\} [4-9]\b')
        self.assertRegex(text, r'valve_requests_total\{app="default",code="5xx"\} 1\b')
        self.assertRegex(text, r'valve_workers\{app="default",state="ready"\} 1\b')
        self.assertRegex(text, r'valve_request_duration_seconds_count [5-9]\b')
        busy = 'valve_worker_busy_seconds_total{app="default"}'
        busy0 = valve.metric(busy)
        self.assertGreater(busy0, 0)
        self.assertEqual(valve.get("/sleep?s=0.3").status, 200)
        busy1 = valve.metric(busy)
        self.assertGreaterEqual(busy1 - busy0, 0.3, "the worker's time on /sleep?s=0.3")
        self.assertLess(busy1 - busy0, 5)
        for name in ["valve_queue_wait_seconds_bucket", "valve_queue_depth", "valve_worker_launches_total",
                     "valve_worker_exits_total", "valve_worker_crashes_total",
                     "valve_request_timeouts_total", "valve_rejections_total", "valve_retries_total",
                     "valve_health_check_failures_total", "valve_worker_recycles_total"]:
            self.assertIn(name, text)

    def test_the_public_port_never_serves_the_admin_interface(self):
        valve = self.start_ops()
        response = valve.get("/metrics")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.text(), "app metrics\n", "the app's own /metrics")
        response = valve.get("/status")
        self.assertEqual(response.status, 404, "plumber's 404, not valve's status")
        self.assertNotIn(b"workers", response.body)
        response = valve.post("/reload", b"")
        self.assertEqual(response.status, 404)
        self.assertEqual(valve.status()["generation"], 1, "nothing reloaded")

    def test_probes_follow_a_graceful_stop(self):
        valve = self.start_ops("--graceful-timeout", "20")
        self.assertEqual(valve.admin("GET", "/healthz").json(), {"status": "ok"})
        self.assertEqual(valve.admin("GET", "/readyz").json(), {"ready": True})
        slow = threading.Thread(target=lambda: valve.get("/sleep?s=3", timeout=30), daemon=True)
        slow.start()
        wait_until(lambda: valve.status()["requests_in_progress"] == 1, 10, message="in flight")
        valve.send_signal(signal.SIGTERM)
        wait_until(lambda: valve.admin("GET", "/readyz").status == 503, 5, message="not ready")
        body = valve.admin("GET", "/readyz").json()
        self.assertEqual(body, {"ready": False, "error": "the server is shutting down",
                                "status": 503})
        self.assertEqual(valve.admin("GET", "/healthz").status, 200, "alive while draining")
        slow.join(30)
        self.assertEqual(valve.wait_exit(30), 0)

    def test_admin_errors_are_json(self):
        valve = self.start_ops()
        response = valve.admin("GET", "/nope")
        self.assertEqual(response.status, 404)
        self.assertIn("no such admin endpoint: /nope", response.json()["error"])
        response = valve.admin("GET", "/reload")
        self.assertEqual(response.status, 405)
        self.assertEqual(response.header("Allow"), "POST")
        self.assertEqual(response.json()["status"], 405)
        response = valve.admin("POST", "/status")
        self.assertEqual(response.status, 405)
        self.assertEqual(response.header("Allow"), "GET")
        response = valve.admin("GET", "/")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.header("Content-Type").startswith("text/html"))

    def test_a_unix_socket_admin_is_private_to_its_user(self):
        path = os.path.join(self.tmpdir, "admin.sock")
        valve = self.start_ops(admin=f"unix:{path}")
        self.assertEqual(valve.admin_address(), f"unix:{path}")
        mode = os.stat(path).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o600)
        self.assertEqual(valve.status()["admin"], f"unix:{path}")
        self.assertEqual(valve.stop()[0], 0)
        self.assertFalse(os.path.exists(path), "the socket is removed at exit")

    def test_access_log_json_to_a_file_reopened_on_sigusr1(self):
        log_path = os.path.join(self.tmpdir, "access.log")
        valve = self.start_ops("--access-log", log_path, "--access-log-format", "json")
        self.assertEqual(valve.get("/hello", headers={"X-Request-Id": "abc-123"}).status, 200)
        self.assertEqual(valve.get("/error").status, 500)

        def lines(path):
            with open(path) as f:
                return [json.loads(line) for line in f if line.strip()]

        wait_until(lambda: any(e["request_id"] == "abc-123" for e in lines(log_path)), 5,
                   message="the access log line")
        entry = next(e for e in lines(log_path) if e["request_id"] == "abc-123")
        self.assertEqual(set(entry), {"time", "request_id", "client", "method", "path", "status",
                                      "bytes", "worker", "queue_ms", "upstream_ms", "duration_ms",
                                      "app"})
        self.assertEqual(entry["app"], "default")
        self.assertEqual((entry["method"], entry["path"], entry["status"]), ("GET", "/hello", 200))
        self.assertEqual(entry["client"], "127.0.0.1")
        self.assertGreater(entry["bytes"], 0)
        self.assertGreaterEqual(entry["worker"], 1)
        self.assertGreaterEqual(entry["duration_ms"], entry["upstream_ms"])
        self.assertGreaterEqual(entry["queue_ms"], 0)
        # Rotation: move the file away, SIGUSR1, and new lines go to a new file.
        os.rename(log_path, log_path + ".1")
        valve.send_signal(signal.SIGUSR1)
        valve.wait_log(r"SIGUSR1: log files reopened", 5)
        self.assertEqual(valve.get("/hello", headers={"X-Request-Id": "after"}).status, 200)
        wait_until(lambda: os.path.exists(log_path) and
                   [e["request_id"] for e in lines(log_path)] == ["after"], 5,
                   message="the new file")
        self.assertNotIn("after", [e["request_id"] for e in lines(log_path + ".1")])

    def test_text_access_log_to_stdout_and_json_log_lines(self):
        valve = self.start_ops("--access-log", "-", "--log-format", "json")
        self.assertEqual(valve.get("/hello?x=1", headers={"X-Request-Id": "id 1"}).status, 200)
        wait_until(lambda: "/hello?x=1" in valve.stdout(), 5, message="the access log line")
        line = next(l for l in valve.stdout().splitlines() if "/hello?x=1" in l)
        self.assertRegex(line, r'^\d{4}-\d\d-\d\dT[\d:.]+Z 127\.0\.0\.1 "GET /hello\?x=1 HTTP/1\.1" '
                               r'200 \d+ id=id\\x201 worker=\d+ queue_ms=[\d.]+ upstream_ms=[\d.]+ '
                               r'duration_ms=[\d.]+$')
        for text in valve.log().splitlines():
            entry = json.loads(text)
            self.assertEqual(set(entry), {"time", "level", "message"})
        self.assertIn("listening on http://", valve.log())

    def test_bad_operations_flags_exit_2_naming_the_flag(self):
        for args, message in [
            (["--admin", "9000"], "--admin 9000: expected HOST:PORT"),
            (["--access-log-format", "xml"], "--access-log-format xml: expected text or json"),
            (["--health-path", "health"], "--health-path health: must start with /"),
            (["--health-fall", "0"], "--health-fall 0: must be at least 1"),
            (["--max-rss", "lots"], "--max-rss lots: expected a whole number"),
        ]:
            code, out, err, elapsed, left = run_valvectl(["--port", "0", "-f", app_path("ops.R")]
                                                         + args)
            self.assertEqual(code, 2, err)
            self.assertIn(message, err)
            self.assertEqual(left, [])

    def test_an_admin_address_in_use_exits_2(self):
        valve = self.start_ops()
        taken = valve.admin_address()
        code, out, err, elapsed, left = run_valvectl(["--port", "0", "-f", app_path("ops.R"),
                                                      "--admin", taken], timeout=30)
        self.assertEqual(code, 2, err)
        self.assertIn(f"--admin {taken}: cannot listen there: address already in use", err)
        self.assertEqual(left, [])


TOKEN = "t0ken-" + "0123456789abcdef" * 2


class AdminToken(ValveTestCase):
    """--admin-token-file, on the native backend: every admin request but the probes and the page
    needs the token; beyond loopback valve needs one to start."""

    def token_file(self, text=TOKEN + "\n", name="admin-token", mode=0o600):
        path = os.path.join(self.tmpdir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def start_guarded(self, *args, admin="127.0.0.1:0", token_file=None):
        return self.start_backend_valve("--admin", admin, "--admin-token-file",
                                        token_file or self.token_file(), *args)

    def assertRefused(self, response, invalid):
        self.assertEqual(response.status, 401, response)
        self.assertEqual(response.header("Content-Type"), "application/json")
        body = response.json()
        self.assertEqual(body["status"], 401)
        self.assertIn("needs a bearer token", body["error"])
        challenge = response.header("WWW-Authenticate")
        self.assertTrue(challenge.startswith("Bearer "), challenge)
        self.assertEqual('error="invalid_token"' in challenge, invalid, challenge)

    def test_the_token_from_the_environment(self):
        # VALVE_ADMIN_TOKEN, as valvectl status/reload/scale read it, when no file is named; the
        # workers (which get an explicit environment) never see it.
        with unittest.mock.patch.dict(os.environ, {"VALVE_ADMIN_TOKEN": TOKEN}):
            valve = self.start_backend_valve("--admin", "127.0.0.1:0")
        self.assertRefused(valve.admin("GET", "/status"), invalid=False)
        status = valve.admin("GET", "/status", headers={"Authorization": "Bearer " + TOKEN})
        self.assertEqual(status.status, 200, status)
        self.assertNotIn(TOKEN, status.text())
        self.assertEqual(valve.admin("GET", "/healthz").status, 200)
        for worker in status.json()["workers"]:
            with open(f"/proc/{worker['pid']}/environ", "rb") as f:
                self.assertNotIn(TOKEN.encode(), f.read())
        self.assertNotIn(TOKEN, valve.log())

    def test_every_endpoint_but_the_probes_needs_the_token(self):
        valve = self.start_guarded()
        wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "x"}
        right = {"Authorization": "Bearer " + TOKEN}
        for method, path in [("GET", "/status"), ("GET", "/metrics"), ("POST", "/reload"),
                             ("POST", "/scale?n-max=5"), ("GET", "/nope"),
                             ("GET", "/reload")]:
            with self.subTest(method=method, path=path):
                self.assertRefused(valve.admin(method, path), invalid=False)
                self.assertRefused(valve.admin(method, path, headers=wrong), invalid=True)
                for header in ("Basic " + TOKEN, "Bearer", TOKEN, "Bearer " + TOKEN + "x",
                               "Bearer " + TOKEN[:8]):
                    self.assertRefused(valve.admin(method, path,
                                                   headers={"Authorization": header}),
                                       invalid=header.startswith("Bearer "))
        # Nothing was reloaded or scaled without the token.
        status = valve.admin("GET", "/status", headers=right).json()
        self.assertEqual(status["generation"], 1)
        self.assertEqual(status["config"]["n-max"], 3)
        # The probes and the page answer anyone.
        self.assertEqual(valve.admin("GET", "/healthz").json(), {"status": "ok"})
        self.assertEqual(valve.admin("GET", "/readyz").status, 200)
        self.assertEqual(valve.admin("GET", "/readyz", headers=wrong).status, 200)
        self.assertTrue(valve.admin("GET", "/").header("Content-Type").startswith("text/html"))
        # The right token, in any case of the scheme.
        self.assertEqual(valve.admin("GET", "/metrics", headers={
            "Authorization": "bearer  " + TOKEN}).status, 200)
        self.assertEqual(valve.admin("POST", "/scale?n-max=5", headers=right).json()["n_max"], 5)
        response = valve.admin("POST", "/reload", headers=right, timeout=60)
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json()["generation"], 2)
        self.assertEqual(valve.admin("GET", "/nope", headers=right).status, 404)
        # The refusals are logged, without the token, and at most one line per 10 s.
        log = valve.log()
        self.assertNotIn(TOKEN, log)
        self.assertNotIn(TOKEN[:12], log)
        self.assertIn("admin: refused GET /status: no Authorization header", log)
        self.assertLessEqual(log.count("admin: refused"), 2, log)  # 42 refused

    def test_a_token_file_is_read_again_on_reload(self):
        path = self.token_file()
        valve = self.start_guarded(token_file=path)
        valve.admin_token = TOKEN
        self.assertEqual(valve.status()["generation"], 1)
        # An empty file on reload: the token in force stays, with a warning.
        with open(path, "w") as f:
            f.write("\n")
        self.assertEqual(valve.admin("POST", "/reload", timeout=60).status, 200)
        valve.wait_log(r"admin-token-file .*: is empty.*the admin token stays as it was")
        self.assertEqual(valve.status()["generation"], 2)
        # A rotated token: the reload that reads it is the old token's last request.
        new = "n3w-" + TOKEN
        with open(path, "w") as f:
            f.write(new + "\n")
        valve.send_signal(signal.SIGHUP)
        wait_until(lambda: valve.admin("GET", "/status").status == 401, 30,
                   message="the old token refused after SIGHUP")
        valve.admin_token = new
        wait_until(lambda: valve.status()["generation"] == 3, 30, message="generation 3")
        self.assertNotIn(new, valve.log())

    def test_a_unix_socket_admin_needs_the_token_too_when_one_is_set(self):
        path = os.path.join(self.tmpdir, "admin.sock")
        valve = self.start_guarded(admin=f"unix:{path}")
        self.assertRefused(valve.admin("GET", "/status"), invalid=False)
        self.assertEqual(valve.admin("GET", "/healthz").status, 200)
        valve.admin_token = TOKEN
        self.assertEqual(valve.status()["admin"], f"unix:{path}")

    def test_bad_token_files_exit_2_naming_the_flag(self):
        missing = os.path.join(self.tmpdir, "missing")
        for text, message in [("", "is empty"), ("\n", "is empty"),
                              ("two\nlines\n", "holds a space, a control character or a second "
                                                 "line: a token is one line of visible ASCII"),
                              ("with space", "holds a space, a control character"),
                              (None, "cannot read: No such file or directory")]:
            path = self.token_file(text) if text is not None else missing
            with self.subTest(text=text):
                code, out, err, elapsed, left = run_valvectl(
                    ["--port", "0", "--cmd", "true {port}", "--admin", "0.0.0.0:0",
                     "--admin-token-file", path], timeout=15)
                self.assertEqual(code, 2, err)
                self.assertIn(f"--admin-token-file {path}: {message}", err)
                self.assertEqual(left, [])

    def test_a_world_readable_token_file_is_used_with_a_warning(self):
        path = self.token_file(mode=0o644)
        valve = self.start_guarded(token_file=path)
        valve.wait_log(rf"admin-token-file {path}: is readable by every user \(mode 0644\)")
        valve.admin_token = TOKEN
        self.assertEqual(valve.status()["generation"], 1)
        self.assertNotIn(TOKEN, valve.log())

    def test_the_documented_scrape_config_passes_promtool_and_scrapes(self):
        """docs/operations.md's Prometheus job: promtool checks it, and a scrape with its
        credentials file (as Prometheus sends it) gets /metrics."""
        with open(os.path.join(SRC, "docs", "operations.md")) as f:
            blocks = re.findall(r"```yaml\n(scrape_configs:.*?)```", f.read(), re.S)
        self.assertEqual(len(blocks), 1)
        credentials = self.token_file(name="prometheus-token", mode=0o640)
        config = os.path.join(self.tmpdir, "prometheus.yml")
        documented = "/etc/prometheus/valve-admin-token"
        self.assertIn(f"credentials_file: {documented}", blocks[0])
        with open(config, "w") as f:
            f.write(blocks[0].replace(documented, credentials))
        self.assertTrue(os.access(PROMTOOL, os.X_OK), "promtool missing: run scripts/install-deps")
        check = subprocess.run([PROMTOOL, "check", "config", config], capture_output=True,
                               text=True, timeout=30)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        self.assertIn("SUCCESS", check.stdout + check.stderr)
        job = yaml.safe_load(blocks[0])["scrape_configs"][0]
        self.assertEqual(job["authorization"]["type"], "Bearer")
        valve = self.start_guarded(token_file=credentials)
        with open(credentials) as f:
            sent = f.read().strip()  # Prometheus trims the file's whitespace too
        response = valve.admin("GET", "/metrics", headers={"Authorization": f"Bearer {sent}"})
        self.assertEqual(response.status, 200, response)
        self.assertIn("valve_queue_depth", response.text())

    def test_the_status_shows_the_token_file_never_the_token(self):
        path = self.token_file()
        valve = self.start_guarded(token_file=path)
        valve.admin_token = TOKEN
        status = valve.admin("GET", "/status").text()
        self.assertIn(json.dumps(path), status)
        self.assertNotIn(TOKEN, status)


if __name__ == "__main__":
    unittest.main()
