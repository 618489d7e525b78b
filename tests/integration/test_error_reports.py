"""Error reports and per-route figures. A real plumber API whose routes fail in R: each 5xx is
reported on the admin interface's /errors (and its page) with the R error text the worker printed
and the X-Request-Id the client got, counted per route, and forwarded to --error-hook-command and
--error-hook-url (a loopback HTTP server here). A hook that hangs or fails never delays an answer,
and its commands are killed and reaped. Per-route figures with the native backend and --openapi:
one series per path template, however many concrete paths."""

import http.server
import json
import os
import re
import subprocess
import threading
import time
import unittest

from harness import ValveTestCase, app_path, wait_until

import test_admin_page

PROMTOOL = "/usr/bin/promtool"


class HookServer:
    """A loopback HTTP server that keeps the JSON bodies POSTed to it and answers `status`."""

    def __init__(self, status=204):
        self.bodies = []
        self.paths = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                outer.paths.append((self.path, self.headers.get("Content-Type")))
                outer.bodies.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class ErrorReports(ValveTestCase):
    def errors(self, valve):
        response = valve.admin("GET", "/errors")
        self.assertEqual(response.status, 200, response)
        return response.json()

    def route_entry(self, doc, route):
        for entry in doc["routes"]:
            if entry["route"] == route:
                return entry
        self.fail(f"no route {route} in {doc}")

    def test_r_errors_are_reported_with_their_text_and_request_id(self):
        hook = HookServer()
        self.close_before_stop(hook.close)
        hook_out = os.path.join(self.tmpdir, "hook.jsonl")
        script = os.path.join(self.tmpdir, "hook.sh")
        with open(script, "w") as f:
            f.write(f"#!/bin/sh\ncat >> '{hook_out}'\n")
        os.chmod(script, 0o755)
        valve = self.start_valve(
            "-f", app_path("errors.R"), "-n", "1", "--admin", "127.0.0.1:0",
            "--error-hook-command", script,
            "--error-hook-url", f"http://127.0.0.1:{hook.port}/alerts?source=valve",
            ready="/hello", ready_timeout=60)
        worker_pid = int(valve.get("/pid").text().strip("[]\n"))

        # An error in an endpoint, three times: each answer's X-Request-Id is in its report.
        ids = []
        for i in range(3):
            headers = {"X-Request-Id": "client-chosen-id-1"} if i == 0 else {}
            answer = valve.get("/boom", headers=headers)
            self.assertEqual(answer.status, 500, answer)
            ids.append(answer.header("X-Request-Id"))
        self.assertEqual(ids[0], "client-chosen-id-1")
        # Bad input that fails in R, an error in a filter, a warning that does not fail.
        bad = valve.get("/items?n=abc")
        self.assertEqual(bad.status, 500, bad)
        filtered = valve.get("/filtered")
        self.assertEqual(filtered.status, 500, filtered)
        self.assertEqual(valve.get("/warn").status, 200)
        self.assertEqual(valve.get("/items?n=2").status, 200)

        doc = self.errors(valve)
        self.assertEqual(doc["total"], 5, doc)
        # Per route template of the spec plumber wrote, the route with the latest error first.
        self.assertEqual([(e["route"], e["count"]) for e in doc["routes"]],
                         [("/filtered", 1), ("/items", 1), ("/boom", 3)])
        boom = self.route_entry(doc, "/boom")
        self.assertEqual([r["count"] for r in boom["latest"]], [3, 2, 1], "newest first")
        latest = [r for e in doc["routes"] for r in e["latest"]]
        by_id = {r["request_id"]: r for r in latest}
        for n, request_id in enumerate(ids):
            report = by_id[request_id]
            self.assertEqual(report["target"], "/boom")
            self.assertEqual(report["status"], 500)
            self.assertEqual(report["method"], "GET")
            self.assertEqual(report["pid"], worker_pid)
            self.assertEqual(report["app"], "default")
            self.assertEqual(report["route"], "/boom")
            self.assertIn("valve-test: the model exploded (code 7f3a)", report["error"])
            self.assertTrue(report["error"].startswith("simpleError in "), report["error"])
            # Everything the worker printed during the request, and nothing of the others.
            self.assertEqual(report["output"][0], "preparing the model", report["output"])
            self.assertEqual(len(report["output"]), 2, report["output"])
        bad_report = by_id[bad.header("X-Request-Id")]
        self.assertEqual(bad_report["target"], "/items?n=abc")
        self.assertIn("invalid 'times' argument", bad_report["error"])
        filter_report = by_id[filtered.header("X-Request-Id")]
        self.assertIn("the filter tripped on /filtered", filter_report["error"])
        # A warning printed during a failing request is part of its output; one on a 200 is not.
        self.assertEqual(bad_report["output"][0],
                         "Warning in (function (n)  : NAs introduced by coercion")
        self.assertNotIn("a harmless warning", json.dumps(doc), "a warning on a 200 is no error")

        totals = valve.status()["totals"]
        self.assertEqual(totals["error_reports"], 5)
        self.assertEqual(valve.metric("valve_error_reports_total"), 5)

        # Both hooks got every report, as JSON.
        wait_until(lambda: len(hook.bodies) == 5, 10, message="5 POSTs to the URL hook")
        self.assertEqual({b["request_id"] for b in hook.bodies}, set(by_id))
        self.assertEqual(hook.paths[0], ("/alerts?source=valve", "application/json"))
        self.assertEqual({b["route"] for b in hook.bodies}, {"/boom", "/items", "/filtered"})

        def command_reports():
            if not os.path.exists(hook_out):
                return []
            with open(hook_out) as f:
                return [json.loads(line) for line in f if line.strip()]
        wait_until(lambda: len(command_reports()) == 5, 10, message="5 runs of the hook command")
        self.assertEqual({r["request_id"]: r for r in command_reports()}[ids[1]], by_id[ids[1]])
        wait_until(lambda: valve.metric('valve_error_hooks_total{result="ok"}') == 10, 10,
                   message="10 deliveries counted ok")
        self.assertEqual(valve.metric('valve_error_hooks_total{result="failed"}'), 0)
        wait_until(lambda: valve.worker_pids() == [worker_pid], 10,
                   message="the hook commands ended, only the worker left")
        self.assertEqual(valve.zombies(), [], "hook commands were reaped")

        # The admin page shows the latest error of the route.
        address = valve.admin_address()
        page = test_admin_page.PageDom()
        page.feed(test_admin_page.AdminPage.chromium(self, "--dump-dom", f"http://{address}/"))
        page.close()
        rows = page.text_by_id.get("errors", "")
        self.assertIn("the filter tripped on /filtered", rows, rows[:500])
        self.assertIn(filtered.header("X-Request-Id"), rows)

    def test_slow_and_failing_hooks_never_delay_answers(self):
        hook_out = os.path.join(self.tmpdir, "started")
        script = os.path.join(self.tmpdir, "slow-hook.sh")
        with open(script, "w") as f:
            f.write(f"#!/bin/sh\necho started >> '{hook_out}'\nexec sleep 30\n")
        os.chmod(script, 0o755)
        # A URL nothing listens on: each POST fails at once.
        closed = HookServer()
        dead_port = closed.port
        closed.close()
        token_file = os.path.join(self.tmpdir, "admin-token")
        with open(token_file, "w") as f:
            f.write("errors-token-0123456789\n")
        valve = self.start_backend_valve(
            "-n", "1", "--admin", "127.0.0.1:0", "--admin-token-file", token_file,
            "--error-hook-command", script,
            "--error-hook-url", f"http://127.0.0.1:{dead_port}/", "--error-hook-timeout", "1")
        # /errors needs the admin token, as /status does.
        self.assertEqual(valve.admin("GET", "/errors").status, 401)
        valve.admin_token = "errors-token-0123456789"
        worker_pid = int(valve.get("/pid").text())
        slowest = 0.0
        for _ in range(30):
            started = time.monotonic()
            answer = valve.get("/status?code=500", timeout=5)
            slowest = max(slowest, time.monotonic() - started)
            self.assertEqual(answer.status, 500)
        self.assertLess(slowest, 0.5, "an answer waited for a hook")
        self.assertEqual(self.errors(valve)["total"], 30)
        # 4 run at once; each command is killed after 1 s and reaped.
        def hooks_running():
            return [p for p in valve.worker_pids() if p != worker_pid]
        self.assertLessEqual(len(hooks_running()), 4, "at most 4 deliveries at once")
        wait_until(lambda: valve.metric('valve_error_hooks_total{result="timeout"}') >= 8, 15,
                   message="hung hook commands killed after 1 s")
        self.assertGreaterEqual(valve.metric('valve_error_hooks_total{result="failed"}'), 4,
                                "POSTs to a closed port failed")
        self.assertLessEqual(len(hooks_running()), 4)
        self.assertEqual(valve.zombies(), [], "killed hook commands were reaped")
        with open(hook_out) as f:
            self.assertGreaterEqual(len(f.read().split()), 4)
        self.assertEqual(valve.get("/hello").status, 200)

    def test_per_route_figures_one_series_per_template(self):
        def operation(*params):
            return {"get": {"responses": {"200": {"description": "OK"}},
                            "parameters": [{"name": p, "in": "path", "required": True,
                                            "schema": {"type": "string"}} for p in params]}}
        spec = {"openapi": "3.0.3", "info": {"title": "backend", "version": "1"},
                "paths": {"/hello": operation(), "/items/{id}": operation("id"),
                          "/status": operation()}}
        spec_path = os.path.join(self.tmpdir, "openapi.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        valve = self.start_backend_valve("-n", "1", "--admin", "127.0.0.1:0", "--openapi", spec_path)
        metric = 'valve_route_requests_total{{app="default",route="{}",code="{}"}}'
        hello_before = valve.metric(metric.format("/hello", "2xx"))  # the harness's readiness checks
        for i in range(50):
            self.assertEqual(valve.get(f"/items/{i}").status, 404)  # the backend has no /items
        for _ in range(3):
            self.assertEqual(valve.get("/hello").status, 200)
        self.assertEqual(valve.get("/status?code=500").status, 500)
        self.assertEqual(valve.get("/nowhere/7").status, 404)
        self.assertEqual(valve.get("/nowhere/8").status, 404)

        text = valve.admin("GET", "/metrics").text()
        routes = set(re.findall(r'^valve_route_requests_total\{app="default",route="([^"]*)"',
                                text, re.M))
        self.assertEqual(routes, {"/hello", "/items/{id}", "/status", "unmatched"}, routes)
        self.assertNotIn("/items/7", text)
        self.assertEqual(len(re.findall(r'^valve_route_request_duration_seconds_count\{', text,
                                        re.M)), 4, "one latency series per template")
        self.assertEqual(len(re.findall(r'^valve_route_queue_wait_seconds_count\{', text, re.M)),
                         4)
        self.assertEqual(valve.metric(metric.format("/items/{id}", "4xx")), 50)
        self.assertEqual(valve.metric(metric.format("/hello", "2xx")), hello_before + 3)
        self.assertEqual(valve.metric(metric.format("/status", "5xx")), 1)
        self.assertEqual(valve.metric(metric.format("unmatched", "4xx")), 2)
        self.assertEqual(valve.metric(
            'valve_route_request_duration_seconds_count{app="default",route="/items/{id}"}'), 50)
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                               capture_output=True, timeout=30)
        self.assertEqual((check.returncode, check.stdout + check.stderr), (0, b""))

        by_route = {r["route"]: r for r in valve.status()["apps"][0]["by_route"]}
        self.assertEqual(by_route["/items/{id}"]["requests"], 50)
        self.assertEqual(by_route["/items/{id}"]["4xx"], 50)
        self.assertGreater(by_route["/hello"]["latency_p99_s"], 0)
        errors = self.errors(valve)
        self.assertEqual([(e["route"], e["count"]) for e in errors["routes"]], [("/status", 1)])
        self.assertEqual(errors["routes"][0]["latest"][0]["output"], [],
                         "the backend printed nothing")


if __name__ == "__main__":
    unittest.main()
