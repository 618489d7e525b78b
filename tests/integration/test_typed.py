"""Typed requests (--check-requests): valve checks each request's parameters against the types the
API's OpenAPI spec declares before a worker takes it.

- A differential test against plumber itself: tests/apps/typed.R (int, dbl, bool, chr and [int]
  query parameters, a required one, a path <id:int>, a POST with a JSON or form body) served by
  plumber directly (Rscript, on a loopback port of its own) and through valve. Well-typed requests
  get the same status and body from both; wrongly typed ones get 422 from valve naming exactly the
  bad parameters (FastAPI's {"detail": [{"loc", "msg", "type", "input"}]}), and never reach R: the
  API counts the calls that reached it, and the count through valve is that of the well-typed ones.
- --openapi with the native backend, and the switches: a config file's route with
  check-requests = false is not checked, --check-status sets the status, --check-requests false
  turns it all off.
- A reload re-reads the spec, with --preload (the template writes it): a parameter retyped from
  int to chr in the file takes what it refused before.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import unittest
import urllib.parse

from harness import LOOPBACK, ValveTestCase, app_path, free_port, wait_until

TYPED = app_path("typed.R")

# Well-typed requests: (method, target, content type, body). Each must be answered as plumber does.
WELL_TYPED = [
    ("GET", "/search?n=5", None, None),
    ("GET", "/search?n=-3&x=2.5", None, None),
    ("GET", "/search?n=%2B7&x=-.5&flag=true", None, None),
    ("GET", "/search?n=05&x=1e3&flag=TRUE&label=anything+at+all", None, None),
    ("GET", "/search?n=2147483647&x=0x1A&flag=T&label=%C3%A9t%C3%A9", None, None),
    ("GET", "/search?n=1&x=Inf&flag=1", None, None),
    ("GET", "/search?n=1&flag=False&ids=1&ids=2&ids=-3", None, None),
    ("GET", "/search?n=1&flag=F&ids=4,5", None, None),
    ("GET", "/search?n=%35&flag=0", None, None),             # %35 is 5
    ("GET", "/search?n=5&n=6", None, None),                  # a repeated key: both
    ("GET", "/search?n=5&x=&flag=", None, None),             # empty values: plumber drops them
    ("GET", "/search?n=5&x=a=b", None, None),                # a=b: not a pair, dropped
    ("GET", "/search?n=5&unknown=zzz", None, None),          # undeclared: plumber ignores it
    ("GET", "/search?n=%207%20", None, None),                # " 7 ": R trims blanks
    ("GET", "/items/0", None, None),
    ("GET", "/items/-12", None, None),
    ("GET", "/items/latest", None, None),                    # the static route beside <id:int>
    ("GET", "/plain", None, None),
    ("GET", "/plain?anything=5.5", None, None),
    ("POST", "/fit", "application/json", b'{"wt": 2.5, "hp": 110}'),
    ("POST", "/fit", "application/json", b'{"wt": 3, "hp": 100, "am": true, "tags": ["a", "b"]}'),
    ("POST", "/fit", "application/json; charset=utf-8", b'{"wt": 1e2, "hp": 5.0, "am": 0}'),
    ("POST", "/fit", "application/json", b'{"wt": "2.5", "hp": "110"}'),  # strings R can read
    ("POST", "/fit", "application/json", b'{"wt": [1, 2], "hp": [3, 4]}'),
    ("POST", "/fit", None, b'{"wt": 2, "hp": 1}'),           # no type: plumber sniffs JSON
    ("POST", "/fit", "application/x-www-form-urlencoded", b"wt=2&hp=3&am=TRUE&tags=x"),
    ("POST", "/fit?wt=2&hp=3", None, None),                  # from the query
    ("POST", "/fit?hp=3", "application/json", b'{"wt": 4}'),  # query and body together
    ("POST", "/fit", "application/json", b'{"wt": 2, "hp": 1, "ignored": "x"}'),
]

# Wrongly typed requests, and the loc of each violation valve must name (in order).
WRONG = [
    ("GET", "/search?n=foobar", None, None, [["query", "n"]]),
    ("GET", "/search", None, None, [["query", "n"]]),
    ("GET", "/search?x=1", None, None, [["query", "n"]]),
    ("GET", "/search?n=1.5", None, None, [["query", "n"]]),
    ("GET", "/search?n=1e3", None, None, [["query", "n"]]),
    ("GET", "/search?n=99999999999", None, None, [["query", "n"]]),
    ("GET", "/search?n=5&x=abc", None, None, [["query", "x"]]),
    ("GET", "/search?n=5&flag=yes", None, None, [["query", "flag"]]),
    ("GET", "/search?n=5&ids=1&ids=two", None, None, [["query", "ids", 1]]),
    ("GET", "/search?n=x&x=y&flag=z&ids=w", None, None,
     [["query", "n"], ["query", "x"], ["query", "flag"], ["query", "ids", 0]]),
    ("GET", "/items/abc", None, None, [["path", "id"]]),
    ("GET", "/items/1.5", None, None, [["path", "id"]]),
    ("POST", "/fit", "application/json", b'{"wt": "heavy", "hp": 110}', [["body", "wt"]]),
    ("POST", "/fit", "application/json", b'{"hp": 1}', [["query", "wt"]]),
    ("POST", "/fit", "application/json", b'{"wt": 2, "hp": 1.5}', [["body", "hp"]]),
    ("POST", "/fit", "application/json", b'{"wt": true, "hp": 1, "am": "maybe"}',
     [["body", "wt"], ["body", "am"]]),
    ("POST", "/fit", "application/json", b'{"wt": null, "hp": [1, "x"]}',
     [["body", "wt"], ["body", "hp", 1]]),
    ("POST", "/fit", "application/x-www-form-urlencoded", b"wt=abc&hp=1", [["body", "wt"]]),
    ("POST", "/fit?wt=abc&hp=1", None, None, [["query", "wt"]]),
    ("POST", "/fit", None, None, [["query", "wt"], ["query", "hp"]]),
]

TYPES = {"int_parsing", "int_parsing_size", "int_type", "int_from_float", "float_parsing",
         "float_type", "bool_parsing", "bool_type", "missing"}


def send(host, port, method, target, content_type, body, timeout=30):
    import http.client
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class TypedRequestsTest(ValveTestCase):
    def start_plumber(self, file):
        port = free_port()
        serve = (f"plumber::pr_run(plumber::pr({file!r}), host = {LOOPBACK!r}, port = {port}L, "
                 "docs = FALSE, quiet = TRUE)")
        log = open(os.path.join(self.tmpdir, "plumber.log"), "wb")
        self.addCleanup(log.close)
        proc = self.track_process(subprocess.Popen(
            ["Rscript", "-e", serve], cwd=os.path.dirname(file), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT))

        def up():
            try:
                return send(LOOPBACK, port, "GET", "/calls", None, None, timeout=2)[0] == 200
            except OSError:
                return False
        wait_until(up, 30, message="plumber answering")
        return proc, port

    def calls(self, host, port):
        status, body = send(host, port, "GET", "/calls", None, None)
        self.assertEqual(status, 200, body)
        return json.loads(body)["calls"]

    def test_differential_against_plumber(self):
        _, plumber_port = self.start_plumber(TYPED)
        valve = self.start_valve("-f", TYPED, "-n", "1", "--access-log", "-", "--admin",
                                 "127.0.0.1:0", ready="/calls")
        self.assertIn("openapi: generation 1: 6 operations, 3 with checked parameters", valve.log())

        for method, target, ctype, body in WELL_TYPED:
            with self.subTest(method=method, target=target, body=body):
                want = send(LOOPBACK, plumber_port, method, target, ctype, body)
                got = send(valve.host, valve.port, method, target, ctype, body)
                self.assertEqual(got[0], want[0], (got, want))
                self.assertEqual(got[1], want[1])
                self.assertNotEqual(got[0], 422)

        for method, target, ctype, body, locs in WRONG:
            with self.subTest(method=method, target=target, body=body):
                status, text = send(valve.host, valve.port, method, target, ctype, body)
                self.assertEqual(status, 422, text)
                doc = json.loads(text)
                self.assertEqual([d["loc"] for d in doc["detail"]], locs, doc)
                for d in doc["detail"]:
                    self.assertIn(d["type"], TYPES)
                    self.assertTrue(d["msg"])
                    self.assertIn("input", d)
                    if d["type"] == "missing":
                        self.assertIsNone(d["input"])
                self.assertEqual(doc["status"], 422)
                self.assertTrue(doc["request_id"])

        # What reached R: every well-typed request, and none of the others.
        self.assertEqual(self.calls(valve.host, valve.port), len(WELL_TYPED))
        self.assertEqual(self.calls(LOOPBACK, plumber_port), len(WELL_TYPED))
        self.assertEqual(valve.metric("valve_check_refusals_total"), len(WRONG))
        # The 422s are in the access log as valve's answers, the worker's pid not among them.
        refused = [line for line in valve.stdout().splitlines() if " 422 " in line]
        self.assertEqual(len(refused), len(WRONG), valve.stdout()[-2000:])

    def test_openapi_file_route_switch_and_status(self):
        spec = os.path.join(self.tmpdir, "spec.json")
        with open(spec, "w") as f:
            json.dump({"openapi": "3.0.3", "paths": {"/hello": {"get": {"parameters": [
                {"name": "n", "in": "query", "required": True, "schema": {"type": "integer"}}]}}}},
                f)
        config = os.path.join(self.tmpdir, "valve.toml")
        with open(config, "w") as f:
            f.write(f"""
[apps.api]
cmd = {json.dumps(__import__('harness').backend_cmd())}
openapi = "spec.json"
n-max = 1

[[routes]]
prefix = "/a"
app = "api"
strip-prefix = true

[[routes]]
prefix = "/b"
app = "api"
strip-prefix = true
check-requests = false
""")
        valve = self.start_valve("--config", config, ready="/a/hello?n=1")
        self.assertEqual(valve.get("/a/hello?n=5").status, 200)
        r = valve.get("/a/hello?n=five")
        self.assertEqual(r.status, 422, r)
        self.assertEqual(r.json()["detail"][0]["loc"], ["query", "n"])
        self.assertEqual(r.header("Content-Type"), "application/json")
        self.assertEqual(valve.get("/a/hello").json()["detail"][0]["type"], "missing")
        self.assertEqual(valve.get("/b/hello?n=five").status, 200)  # its route does not check

        # --check-status, and --check-requests false for the whole app.
        other = self.start_backend_valve("--openapi", spec, "--check-status", "400",
                                         ready="/hello?n=1")
        r = other.get("/hello?n=x")
        self.assertEqual(r.status, 400, r)
        self.assertEqual(r.json()["detail"][0]["input"], "x")
        off = self.start_backend_valve("--openapi", spec, "--check-requests", "false",
                                       "--admin", "127.0.0.1:0", ready="/hello?n=1")
        self.assertEqual(off.get("/hello?n=x").status, 200)
        self.assertEqual(off.metric("valve_check_refusals_total"), 0)

    def test_reload_rereads_the_spec_with_preload(self):
        api = os.path.join(self.tmpdir, "typed.R")
        shutil.copy(TYPED, api)
        valve = self.start_valve("-f", api, "-n", "1", "--preload", "--admin", "127.0.0.1:0",
                                 ready="/calls")
        self.assertEqual(valve.get("/search?n=x").status, 422)
        with open(api) as f:
            text = f.read()
        with open(api, "w") as f:
            f.write(text.replace("#* @param n:int* a count", "#* @param n:chr* a count"))
        r = valve.admin("POST", "/reload")
        self.assertEqual(r.status, 200, r)
        self.assertIn("openapi: generation 2", valve.log())
        self.assertEqual(valve.get("/search?n=x").status, 200)
        self.assertEqual(valve.get("/search").status, 422)  # still required
        # Each generation's spec file is removed when valvectl stops (its runtime dir goes).


if __name__ == "__main__":
    unittest.main(verbosity=2)
