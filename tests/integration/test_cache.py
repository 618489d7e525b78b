"""The shared HTTP cache (--cache-size) and request coalescing, by a table of requests and answers.

Each row is a few requests to the native backend's /cache route, which answers with the headers the
query asks for (h=Name:Value). After each request the backend's /cache-calls tells whether a worker was
called: "W" (a worker answered) or "C" (the cache did), or a status the row expects. The table runs
against valve and, as an independent oracle, against Varnish 7.1 with a VCL that only turns off
its heuristic TTL and grace (Varnish stores answers without explicit freshness for default_ttl,
and serves stale ones for a grace period: both set to 0). valve's column is asserted; so is Varnish's, except in
rows marked with why Varnish deliberately differs (it ignores a request's Cache-Control, passes
requests with Authorization, does not invalidate on POST, caches no POST, purges only by VCL).
"""

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse
from email.utils import formatdate

from harness import BACKEND, LOOPBACK, VALVECTL, ValveTestCase, backend_cmd, free_port, wait_until

import http.client

# Varnish's own heuristic is its default_ttl (120 s for an answer with no freshness of its own, or
# with an Expires that is not a date), and grace serves stale answers: both off (-p default_ttl=0,
# default_grace=0, and beresp.grace below), Varnish's defaults are otherwise the RFC's.
VCL = """vcl 4.1;
backend default {{ .host = "127.0.0.1"; .port = "{port}"; }}
sub vcl_backend_response {{
  set beresp.grace = 0s;
}}
"""

CONFIG = """
cache-size = "1m"
n-max = 1
[apps.api]
cmd = "{backend}"
prefix = "/"
[apps.predict]
cmd = "{backend}"
prefix = "/p"
strip-prefix = true
cache-post = ["X-Model"]
[apps.small]
cmd = "{backend}"
prefix = "/small"
strip-prefix = true
cache-size = "12k"
cache-entry-max = "4k"
[apps.impatient]
cmd = "{backend}"
prefix = "/impatient"
strip-prefix = true
cache-lock-timeout = 0.1
"""


def target(row, *headers, **params):
    """A /cache target for a row: its own URI, the answer's headers, the backend's parameters."""
    query = [("r", row)] + [(k, str(v)) for k, v in params.items()]
    query += [("h", h) for h in headers]
    return "/cache?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


def http_date(offset=0):
    return formatdate(time.time() + offset, usegmt=True)


NOW_LM = "Sun, 06 Nov 1994 08:49:37 GMT"

# (name, steps, why Varnish differs or None). A step: (method, target, request headers, body,
# expected), expected "W" / "C" / a status int ("C" with a status: (status, "C")), or ("sleep", s).
ROWS = [
    ("max-age is fresh", [("GET", target("a", "Cache-Control:max-age=60"), {}, None, "W"),
                          ("GET", target("a", "Cache-Control:max-age=60"), {}, None, "C")], None),
    ("s-maxage is fresh", [("GET", target("b", "Cache-Control:s-maxage=60"), {}, None, "W"),
                           ("GET", target("b", "Cache-Control:s-maxage=60"), {}, None, "C")], None),
    ("Expires with Date", [("GET", target("c", "Date:" + http_date(), "Expires:" + http_date(60)), {}, None, "W"),
                           ("GET", target("c", "Date:" + http_date(), "Expires:" + http_date(60)), {}, None, "C")],
     None),
    ("an invalid Expires is stale", [("GET", target("d", "Expires:0"), {}, None, "W"),
                                     ("GET", target("d", "Expires:0"), {}, None, "W")], None),
    ("Last-Modified alone: no heuristic", [("GET", target("e", "Last-Modified:" + NOW_LM), {}, None, "W"),
                                           ("GET", target("e", "Last-Modified:" + NOW_LM), {}, None, "W")],
     None),
    ("public alone: no heuristic", [("GET", target("f", "Cache-Control:public"), {}, None, "W"),
                                    ("GET", target("f", "Cache-Control:public"), {}, None, "W")], None),
    ("max-age expires", [("GET", target("g", "Cache-Control:max-age=1"), {}, None, "W"),
                         ("GET", target("g", "Cache-Control:max-age=1"), {}, None, "C"),
                         ("sleep", 2.1),
                         ("GET", target("g", "Cache-Control:max-age=1"), {}, None, "W")], None),
    ("no-store", [("GET", target("h", "Cache-Control:max-age=60, no-store"), {}, None, "W"),
                  ("GET", target("h", "Cache-Control:max-age=60, no-store"), {}, None, "W")], None),
    ("private", [("GET", target("i", "Cache-Control:max-age=60, private"), {}, None, "W"),
                 ("GET", target("i", "Cache-Control:max-age=60, private"), {}, None, "W")], None),
    ("no-cache answer", [("GET", target("j", "Cache-Control:max-age=60, no-cache"), {}, None, "W"),
                         ("GET", target("j", "Cache-Control:max-age=60, no-cache"), {}, None, "W")], None),
    ("Set-Cookie", [("GET", target("k", "Cache-Control:max-age=60", "Set-Cookie:s=1"), {}, None, "W"),
                    ("GET", target("k", "Cache-Control:max-age=60", "Set-Cookie:s=1"), {}, None, "W")], None),
    ("Vary: Accept", [("GET", target("l", "Cache-Control:max-age=60", "Vary:Accept"), {"Accept": "a/a"}, None, "W"),
                      ("GET", target("l", "Cache-Control:max-age=60", "Vary:Accept"), {"Accept": "b/b"}, None, "W"),
                      ("GET", target("l", "Cache-Control:max-age=60", "Vary:Accept"), {"Accept": "a/a"}, None, "C"),
                      ("GET", target("l", "Cache-Control:max-age=60", "Vary:Accept"), {"Accept": "b/b"}, None, "C")],
     None),
    ("Vary: *", [("GET", target("m", "Cache-Control:max-age=60", "Vary:*"), {}, None, "W"),
                 ("GET", target("m", "Cache-Control:max-age=60", "Vary:*"), {}, None, "W")], None),
    ("Authorization, plain max-age", [("GET", target("n", "Cache-Control:max-age=60"), {"Authorization": "Bearer x"}, None, "W"),
                                      ("GET", target("n", "Cache-Control:max-age=60"), {"Authorization": "Bearer x"}, None, "W")],
     None),
    ("Authorization, public", [("GET", target("o", "Cache-Control:max-age=60, public"), {"Authorization": "Bearer x"}, None, "W"),
                               ("GET", target("o", "Cache-Control:max-age=60, public"), {}, None, "C")],
     "passes every request with Authorization (builtin vcl_recv)"),
    ("ETag and If-None-Match", [("GET", target("p", "Cache-Control:max-age=60", 'ETag:"v1"'), {}, None, "W"),
                                ("GET", target("p", "Cache-Control:max-age=60", 'ETag:"v1"'), {"If-None-Match": '"v1"'}, None, (304, "C")),
                                ("GET", target("p", "Cache-Control:max-age=60", 'ETag:"v1"'), {"If-None-Match": '"v2"'}, None, "C")],
     None),
    ("Last-Modified and If-Modified-Since", [
        ("GET", target("q", "Cache-Control:max-age=60", "Last-Modified:" + NOW_LM), {}, None, "W"),
        ("GET", target("q", "Cache-Control:max-age=60", "Last-Modified:" + NOW_LM), {"If-Modified-Since": NOW_LM}, None, (304, "C")),
        ("GET", target("q", "Cache-Control:max-age=60", "Last-Modified:" + NOW_LM),
         {"If-Modified-Since": "Sat, 05 Nov 1994 08:49:37 GMT"}, None, "C")], None),
    ("request no-cache", [("GET", target("s", "Cache-Control:max-age=60"), {}, None, "W"),
                          ("GET", target("s", "Cache-Control:max-age=60"), {"Cache-Control": "no-cache"}, None, "W"),
                          ("GET", target("s", "Cache-Control:max-age=60"), {}, None, "C")],
     "ignores the request's Cache-Control"),
    ("request max-age", [("GET", target("t", "Cache-Control:max-age=60"), {}, None, "W"),
                         ("sleep", 1.1),
                         ("GET", target("t", "Cache-Control:max-age=60"), {"Cache-Control": "max-age=0"}, None, "W"),
                         ("GET", target("t", "Cache-Control:max-age=60"), {"Cache-Control": "max-age=30"}, None, "C")],
     "ignores the request's Cache-Control"),
    ("request min-fresh", [("GET", target("u", "Cache-Control:max-age=10"), {}, None, "W"),
                           ("GET", target("u", "Cache-Control:max-age=10"), {"Cache-Control": "min-fresh=20"}, None, "W"),
                           ("GET", target("u", "Cache-Control:max-age=10"), {"Cache-Control": "min-fresh=5"}, None, "C")],
     "ignores the request's Cache-Control"),
    ("request max-stale", [("GET", target("v", "Cache-Control:max-age=1"), {}, None, "W"),
                           ("sleep", 2.1),
                           ("GET", target("v", "Cache-Control:max-age=1"), {"Cache-Control": "max-stale=60"}, None, "C")],
     "ignores the request's Cache-Control (grace is its stale-serving)"),
    ("request only-if-cached", [("GET", target("w", "Cache-Control:max-age=60"), {"Cache-Control": "only-if-cached"}, None, 504),
                                ("GET", target("w", "Cache-Control:max-age=60"), {}, None, "W"),
                                ("GET", target("w", "Cache-Control:max-age=60"), {"Cache-Control": "only-if-cached"}, None, "C")],
     "ignores the request's Cache-Control"),
    ("request no-store", [("GET", target("x", "Cache-Control:max-age=60"), {"Cache-Control": "no-store"}, None, "W"),
                          ("GET", target("x", "Cache-Control:max-age=60"), {}, None, "W")],
     "ignores the request's Cache-Control"),
    ("HEAD from a stored GET", [("GET", target("y", "Cache-Control:max-age=60"), {}, None, "W"),
                                ("HEAD", target("y", "Cache-Control:max-age=60"), {}, None, "C")], None),
    ("a 404 with max-age", [("GET", target("z", "Cache-Control:max-age=60", code=404), {}, None, (404, "W")),
                            ("GET", target("z", "Cache-Control:max-age=60", code=404), {}, None, (404, "C"))], None),
    ("POST invalidates its URI", [("GET", target("inv", "Cache-Control:max-age=60"), {}, None, "W"),
                                  ("GET", target("inv", "Cache-Control:max-age=60"), {}, None, "C"),
                                  ("POST", target("inv", "Cache-Control:max-age=60"), {}, b"x", "W"),
                                  ("GET", target("inv", "Cache-Control:max-age=60"), {}, None, "W")],
     "does not invalidate on unsafe methods"),
    ("POST not opted in", [("POST", target("np", "Cache-Control:max-age=60"), {}, b"x", "W"),
                           ("POST", target("np", "Cache-Control:max-age=60"), {}, b"x", "W")], None),
]

# Rows only valve runs: the opt-in POST route and the LRU bound of apps in valve's config file.
VALVE_ROWS = [
    ("POST keyed by body and X-Model", [
        ("POST", "/p" + target("pp", "Cache-Control:max-age=60"), {}, b'{"x":1}', "W"),
        ("POST", "/p" + target("pp", "Cache-Control:max-age=60"), {}, b'{"x":1}', "C"),
        ("POST", "/p" + target("pp", "Cache-Control:max-age=60"), {}, b'{"x":2}', "W"),
        ("POST", "/p" + target("pp", "Cache-Control:max-age=60"), {"X-Model": "2"}, b'{"x":1}', "W"),
        ("POST", "/p" + target("pp", "Cache-Control:max-age=60"), {"X-Model": "2"}, b'{"x":1}', "C"),
        ("POST", "/p" + target("pp", "Cache-Control:max-age=60"), {}, b'{"x":1}', "C"),
        ("POST", "/p" + target("pp"), {}, b'{"x":3}', "W"),  # no freshness: not stored
        ("POST", "/p" + target("pp"), {}, b'{"x":3}', "W")]),
]


class Peer:
    """valve or Varnish in front of native backends; calls(): the backend's /cache-calls through it."""

    def __init__(self, name, host, port, stats_prefix=""):
        self.name, self.host, self.port, self.stats_prefix = name, host, port, stats_prefix

    def request(self, method, path, headers=None, body=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def calls(self, prefix=""):
        status, _, body = self.request("GET", prefix + "/cache-calls")
        assert status == 200, (self.name, status, body)
        return json.loads(body)["calls"]


def run_row(peer, steps, prefix=""):
    """The outcome of each step: "W", "C", a status, or (status, "W"/"C")."""
    outcomes = []
    for step in steps:
        if step[0] == "sleep":
            time.sleep(step[1])
            continue
        method, path, headers, body, expected = step
        before = peer.calls(prefix)
        status, resp_headers, data = peer.request(method, path, headers, body)
        after = peer.calls(prefix)
        who = "W" if after > before else "C"
        if isinstance(expected, int):
            outcomes.append(status)
        elif isinstance(expected, tuple) or status != 200:
            outcomes.append((status, who))
        else:
            outcomes.append(who)
        outcomes[-1] = (outcomes[-1], status, resp_headers, data)
    return outcomes


IGNORED = {"age", "cache-status", "x-request-id"}


def comparable(headers):
    return [(k.lower(), v) for k, v in headers if k.lower() not in IGNORED]


class Cache(ValveTestCase):
    def start_cache_valve(self, *extra):
        config = os.path.join(self.tmpdir, "valve.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(backend=backend_cmd().replace("\\", "\\\\").replace('"', '\\"')))
        token, token_file = self.admin_token_file("cache")
        valve = self.start_valve("--config", config, "--admin", f"{LOOPBACK}:0",
                                 "--admin-token-file", token_file, *extra, ready="/cache-calls")
        valve.admin_token = token
        return valve

    def start_varnish(self):
        backend_port = free_port()
        backend = self.track_process(subprocess.Popen([BACKEND, "--port", str(backend_port)],
                                                      stdout=subprocess.DEVNULL))
        workdir = tempfile.mkdtemp(prefix="varnish-", dir=self.tmpdir)
        vcl = os.path.join(workdir, "default.vcl")
        with open(vcl, "w") as f:
            f.write(VCL.format(port=backend_port))
        port = free_port()
        varnishd = shutil.which("varnishd") or "/usr/sbin/varnishd"
        self.assertTrue(os.access(varnishd, os.X_OK), "varnishd is not installed (apt: varnish)")
        with open(os.path.join(workdir, "stderr"), "wb") as stderr:
            proc = self.track_process(subprocess.Popen(
                [varnishd, "-F", "-j", "none", "-n", workdir, "-a", f"{LOOPBACK}:{port}", "-f", vcl,
                 "-s", "malloc,64m", "-p", "default_ttl=0", "-p", "default_grace=0",
                 "-p", "default_keep=0", "-p", "thread_pools=1", "-p", "thread_pool_min=10"],
                stdout=subprocess.DEVNULL, stderr=stderr))
        peer = Peer("varnish", LOOPBACK, port)

        def up():
            if proc.poll() is not None:
                with open(os.path.join(workdir, "stderr")) as f:
                    raise AssertionError(f"varnishd exited with {proc.returncode}: {f.read()}")
            try:
                return peer.request("GET", "/hello")[0] == 200
            except OSError:
                return False

        wait_until(up, 30, message="varnishd answering")
        del backend
        return peer

    def check_rows(self, peer, rows, assert_differing, prefix=""):
        """Runs rows against peer; returns {row: [outcome, ...]}, asserting each row's
        expectations where asserted."""
        results = {}
        for name, steps, *rest in rows:
            differs = rest[0] if rest else None
            got = run_row(peer, steps, prefix)
            expected = [s[4] for s in steps if s[0] != "sleep"]
            outcomes = [g[0] for g in got]
            results[name] = outcomes
            if differs and not assert_differing:
                continue
            self.assertEqual(outcomes, expected, f"{peer.name}: row {name!r}")
            if peer.name == "valve":
                self.check_valve_answers(name, steps, got)
        return results

    def check_valve_answers(self, name, steps, got):
        """A stored answer is the worker's, byte for byte, bar Age and Cache-Status."""
        steps = [s for s in steps if s[0] != "sleep"]
        answers = {}  # the worker's answer to each distinct request, and the last one
        for step, (outcome, status, headers, data) in zip(steps, got):
            cache_status = dict((k.lower(), v) for k, v in headers).get("cache-status", "")
            self.assertTrue(cache_status.startswith("valve; "), f"{name}: {headers}")
            who = outcome[1] if isinstance(outcome, tuple) else outcome
            # Which stored answer serves it: the last one a worker gave for the same URI and the
            # same headers that can select a variant (Vary).
            request = (step[1], tuple(sorted((k, v) for k, v in step[2].items() if k.lower() not in
                                             ("cache-control", "if-none-match", "if-modified-since",
                                              "authorization"))))
            if who == "W" and step[0] != "HEAD":
                answers[request] = (headers, data)
                self.assertIn("fwd=", cache_status, name)
            if who == "C":
                self.assertTrue(cache_status.startswith("valve; hit"), f"{name}: {cache_status}")
                self.assertIn("age", [k.lower() for k, _ in headers], name)
                first = answers.get(request)
                if status == 200 and step[0] == "GET" and first is not None:
                    self.assertEqual(data, first[1], name)
                    self.assertEqual(comparable(headers), comparable(first[0]), name)

    def test_table_against_varnish(self):
        valve = self.start_cache_valve()
        varnish = self.start_varnish()
        results = {}
        errors = []

        def run(peer, key):
            try:
                results[key] = self.check_rows(peer, ROWS, assert_differing=(key == "valve"))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append((key, exc))

        peers = [Peer("valve", valve.host, valve.port), varnish]
        threads = [threading.Thread(target=run, args=(p, p.name)) for p in peers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        if errors:
            raise errors[0][1]
        print()
        print(f"{'row':40} {'valve':40} varnish")
        for name, steps, differs in ROWS:
            print(f"{name:40} {str(results['valve'][name]):40} {results['varnish'][name]}"
                  + (f"  (Varnish {differs})" if differs else ""))
        self.check_rows(Peer("valve", valve.host, valve.port), VALVE_ROWS, True, prefix="/p")
        # The counts behind it, in /metrics and /status.
        for series in ("valve_cache_hits_total", "valve_cache_misses_total",
                       "valve_cache_stores_total"):
            self.assertGreater(valve.metric(series), 0, series)
        self.assertGreater(valve.metric('valve_cache_bytes{app="api"}'), 0)
        apps = {a["name"]: a for a in valve.status()["apps"]}
        self.assertGreater(apps["api"]["cache"]["hits"], 0)
        self.assertEqual(apps["api"]["cache"]["size"], 1 << 20)

    def test_purge_lru_and_tokens(self):
        valve = self.start_cache_valve()
        peer = Peer("valve", valve.host, valve.port)
        fresh = "Cache-Control:max-age=60"
        # Purge by path prefix, through valvectl cache purge (the admin token from the environment).
        self.assertEqual([o[0] for o in run_row(peer, [("GET", "/p" + target("pg", fresh), {}, None, "W"),
                                                      ("GET", "/p" + target("pg", fresh), {}, None, "C")],
                                                "/p")], ["W", "C"])
        env = dict(os.environ, VALVE_ADMIN_TOKEN=valve.admin_token)
        cli = subprocess.run([VALVECTL, "cache", "purge", "--admin", valve.admin_address(),
                              "--app", "predict", "/p/cache"], env=env, capture_output=True,
                             text=True, timeout=10)
        self.assertEqual((cli.returncode, cli.stdout), (0, "purged 1 answer\n"), cli.stderr)
        self.assertEqual(run_row(peer, [("GET", "/p" + target("pg", fresh), {}, None, "W")],
                                 "/p")[0][0], "W")
        # The admin token rules hold for purges; unknown parameters and apps are refused.
        no_token = valve.admin("POST", "/cache/purge", headers={"Authorization": "Bearer wrong"})
        self.assertEqual(no_token.status, 401)
        self.assertEqual(valve.admin("GET", "/cache/purge").status, 405)
        self.assertEqual(valve.admin("POST", "/cache/purge?color=red").status, 400)
        self.assertEqual(valve.admin("POST", "/cache/purge?app=nope").status, 400)
        everything = valve.admin("DELETE", "/cache")
        self.assertEqual(everything.status, 200, everything.text())
        bad = subprocess.run([VALVECTL, "cache", "purge", "--admin", valve.admin_address(), "v1"],
                             env=env, capture_output=True, text=True, timeout=10)
        self.assertEqual(bad.returncode, 2, bad.stderr)
        self.assertIn("PATH-PREFIX v1", bad.stderr)
        # The LRU bound: app small holds 12k; twelve answers of about 1.5k do not all fit.
        pad = "X-Pad:" + "p" * 1200
        for i in range(12):
            run_row(peer, [("GET", "/small" + target("lru", fresh, pad, i=i), {}, None, "W")], "/small")
        newest = run_row(peer, [("GET", "/small" + target("lru", fresh, pad, i=11), {}, None, "C")],
                         "/small")
        self.assertEqual(newest[0][0], "C")
        oldest = run_row(peer, [("GET", "/small" + target("lru", fresh, pad, i=0), {}, None, "W")],
                         "/small")
        self.assertEqual(oldest[0][0], "W")
        small = {a["name"]: a for a in valve.status()["apps"]}["small"]["cache"]
        self.assertLessEqual(small["bytes"], 12 * 1024)
        self.assertGreater(small["evictions"], 0)
        # Larger than cache-entry-max (4k): passed on whole, never stored.
        big = "/small" + target("big", fresh, "X-Pad:" + "b" * 5000)
        self.assertEqual([o[0] for o in run_row(peer, [("GET", big, {}, None, "W"),
                                                      ("GET", big, {}, None, "W")], "/small")],
                         ["W", "W"])

    def test_coalescing(self):
        valve = self.start_cache_valve()
        peer = Peer("valve", valve.host, valve.port)

        def burst(path, n):
            results = [None] * n
            barrier = threading.Barrier(n)

            def one(i):
                barrier.wait(10)
                started = time.monotonic()
                status, headers, body = peer.request("GET", path)
                results[i] = (status, body, time.monotonic() - started)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            return results, time.monotonic() - started

        # 100 identical requests to a 1 s endpoint, one worker: one worker call answers them all.
        before = peer.calls()
        path = target("co", "Cache-Control:max-age=60", ms=1000)
        results, elapsed = burst(path, 100)
        self.assertEqual(peer.calls() - before, 1)
        self.assertEqual({r[0] for r in results}, {200})
        self.assertEqual(len({r[1] for r in results}), 1)
        slowest = max(r[2] for r in results)
        print(f"\n100 coalesced requests: slowest {slowest:.3f} s, burst {elapsed:.3f} s")
        self.assertLess(slowest, 1.6)  # 1.1 s on a quiet machine (bench/cache measures it)
        self.assertGreaterEqual(valve.metric("valve_cache_coalesced_total"), 99)
        # An answer that may not be stored is not shared: each waiter goes to the worker itself.
        before = peer.calls()
        results, _ = burst(target("co-private", "Cache-Control:max-age=60, private", ms=100), 4)
        self.assertEqual(peer.calls() - before, 4)
        self.assertEqual(len({r[1] for r in results}), 4)
        # Nor an error without freshness.
        before = peer.calls()
        results, _ = burst(target("co-500", code=500, ms=100), 3)
        self.assertEqual({r[0] for r in results}, {500})
        self.assertEqual(peer.calls() - before, 3)
        # The wait is bounded (cache-lock-timeout 0.1 in app impatient): then they go on their own.
        before = peer.calls("/impatient")
        results, _ = burst("/impatient" + target("co-slow", "Cache-Control:max-age=60", ms=400), 3)
        self.assertEqual({r[0] for r in results}, {200})
        self.assertEqual(peer.calls("/impatient") - before, 3)
        self.assertGreaterEqual(valve.metric("valve_cache_lock_timeouts_total"), 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
