"""Long jobs: a request sent with Prefer: respond-async gets 202 and the Location of a job; GET on
it answers the job's state, then the stored answer, which equals the synchronous one (status,
headers, body: a real plumber API, then the native backend's echo of the request it got); DELETE
cancels a queued job and a running one (its worker is stopped and replaced, other requests
unharmed); --job-timeout apart from --timeout; the answer's lifetime; the bounds on jobs and on
stored bytes; interactive requests overtake queued jobs; a config-file route's timeout;
--jobs-workers-max (jobs past it held in valve, a plain request served at once, the bound kept
across a reload); Prefer: wait=N (the job's own answer when it comes in time, else the 202)."""

import json
import os
import socket
import struct
import threading
import time
import unittest
from datetime import datetime

from harness import ValveTestCase, app_path, backend_cmd, format_request, wait_until

PREFIX = "/_valve/jobs/"
ASYNC = {"Prefer": "respond-async"}


def submit(valve, method, path, body=None, headers=None):
    """Sends a request as a job; checks the 202 and returns its Location."""
    headers = dict(headers or {})
    headers.setdefault("Prefer", "respond-async")
    r = valve.request(method, path, body=body, headers=headers)
    if r.status != 202:
        raise AssertionError(f"{method} {path} as a job: {r!r}")
    location = r.header("Location")
    assert location and location.startswith(PREFIX), r
    assert r.header("Preference-Applied") == "respond-async", r
    assert r.header("Retry-After") == "1", r
    doc = r.json()
    assert doc["state"] in ("queued", "running") and doc["location"] == location, doc
    assert len(doc["id"]) == 32 and location == PREFIX + doc["id"], doc
    return location


def pending(r):
    """Whether a GET on a job answered its state (not finished yet) rather than the answer."""
    if r.status != 202 or r.header("Retry-After") != "1":
        return False
    try:
        return r.json().get("state") in ("queued", "running")
    except ValueError:
        return False


def state(valve, location):
    r = valve.get(location)
    assert pending(r), r
    return r.json()


def result(valve, location, timeout=30):
    """Polls the job until its answer is stored; the answer."""
    deadline = time.monotonic() + timeout
    while True:
        r = valve.get(location)
        if not pending(r):
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"job {location} still {r.json()['state']} after {timeout} s")
        time.sleep(0.05)


def worker_pids(valve):
    return {w["pid"] for w in valve.status()["workers"] if w["state"] == "ready"}


def utc(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def comparable(r):
    """An answer's status, headers (but Date, which a second later differs) and body."""
    return (r.status, r.reason, [(k, v) for k, v in r.headers if k.lower() != "date"], r.body)


class JobsTest(ValveTestCase):
    def test_plumber_job_answer_equals_the_synchronous_one(self):
        valve = self.start_valve("-f", app_path("jobs.R"), "-n", "2", "--n-min", "2",
                                 "--admin", "127.0.0.1:0", ready="/quick")
        body = json.dumps({"wt": 2.62, "hp": 110}).encode()
        headers = {"Content-Type": "application/json", "X-Request-Id": "same-request-1"}
        path = "/fit?seconds=1"
        started = time.monotonic()
        location = submit(valve, "POST", path, body, headers)
        self.assertLess(time.monotonic() - started, 0.5, "the 202 waited for the job")
        first = state(valve, location)
        self.assertEqual(first["method"], "POST")
        self.assertEqual(first["target"], path)
        self.assertEqual(first["request_id"], "same-request-1")
        self.assertIsNone(first["status"])
        job = result(valve, location)
        sync = valve.post(path, body, headers)
        self.assertEqual(sync.status, 201, sync)
        self.assertEqual(sync.header("X-Fit"), "lm", sync)
        self.assertEqual(sync.json()["request_id"], "same-request-1", sync)
        self.assertEqual(comparable(job), comparable(sync))
        # Polled again: the same answer, until it expires.
        self.assertEqual(comparable(valve.get(location)), comparable(sync))
        self.assertEqual(valve.request("HEAD", location).body, b"")
        # In the status (its id cut to 8 digits) and the metrics.
        jobs = valve.status()["jobs"]
        self.assertEqual([j["state"] for j in jobs["jobs"]], ["done"], jobs)
        self.assertEqual(jobs["jobs"][0]["status"], 201)
        self.assertEqual(jobs["jobs"][0]["id"], location[len(PREFIX):][:8])
        self.assertNotIn(location[len(PREFIX):], json.dumps(jobs))
        self.assertEqual(valve.metric("valve_jobs_submitted_total"), 1)
        self.assertEqual(valve.metric('valve_jobs_finished_total{result="done"}'), 1)
        self.assertGreater(valve.metric("valve_jobs_stored_bytes"), len(job.body))
        # A reload keeps the job table: the answer is still there, and a job runs across it.
        location2 = submit(valve, "POST", "/fit?seconds=2", body, headers)
        wait_until(lambda: state(valve, location2)["state"] == "running", 10)
        reload = valve.admin("POST", "/reload")
        self.assertEqual(reload.status, 200, reload)
        self.assertEqual(comparable(valve.get(location)), comparable(sync))
        self.assertEqual(result(valve, location2).status, 201)

    def test_job_answer_equals_the_synchronous_one_on_the_native_backend(self):
        valve = self.start_backend_valve("-n", "1")
        body = b"x" * 5000
        headers = {"X-Request-Id": "same-request-2", "Content-Type": "text/plain",
                   "Prefer": "return=minimal"}
        sync = valve.post("/echo?a=1", body, headers)
        location = submit(valve, "POST", "/echo?a=1", body,
                          {**headers, "Prefer": "return=minimal, respond-async"})
        job = result(valve, location)
        self.assertEqual(comparable(job), comparable(sync))
        # The worker got the same request: the same headers in the same order (the preference
        # valve applied is taken out, the others stay), the same body.
        got = job.json()
        self.assertIn(["Prefer", "return=minimal"], got["headers"])
        self.assertEqual(got["body_length"], 5000)
        # A chunked answer (streamed /bytes) is stored whole and answered with its length.
        location = submit(valve, "GET", "/bytes?n=200000")
        job = result(valve, location)
        self.assertEqual(job.status, 200)
        self.assertEqual(job.body, valve.get("/bytes?n=200000").body)
        self.assertEqual(job.header("Content-Length"), "200000")
        # Wrong methods and unknown jobs.
        self.assertEqual(valve.post(location, b"").status, 405)
        r = valve.get(PREFIX + "0" * 32)
        self.assertEqual(r.status, 404, r)
        self.assertIn("no such job", r.json()["error"])
        self.assertEqual(valve.get(PREFIX).status, 404)

    def test_cancel_a_queued_and_a_running_job(self):
        valve = self.start_backend_valve("-n", "2", "--n-min", "2", "--admin", "127.0.0.1:0")
        wait_until(lambda: len(worker_pids(valve)) == 2, 10)
        pids = worker_pids(valve)
        # An interactive request on one worker all along, a job on the other, one job queued.
        interactive = {}
        thread = threading.Thread(
            target=lambda: interactive.update(r=valve.get("/sleep?ms=1500")), daemon=True)
        thread.start()
        time.sleep(0.2)
        running = submit(valve, "GET", "/hang")
        queued = submit(valve, "GET", "/hello")
        wait_until(lambda: state(valve, running)["state"] == "running", 5)
        self.assertEqual(state(valve, queued)["state"], "queued")
        self.assertEqual(valve.metric("valve_jobs_queued"), 1)
        self.assertEqual(valve.metric("valve_jobs_running"), 1)
        # The queued one leaves the queue.
        r = valve.request("DELETE", queued)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["state"], "cancelled")
        self.assertEqual(valve.get(queued).status, 404)
        self.assertEqual(valve.status()["queue"], 0)
        # The running one: its worker is killed and replaced; the interactive request is unharmed.
        r = valve.request("DELETE", running)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["state"], "cancelled")
        self.assertEqual(valve.get(running).status, 404)
        thread.join(10)
        self.assertEqual(interactive["r"].status, 200, interactive)
        wait_until(lambda: valve.metric("valve_worker_exits_total") == 1, 5)
        wait_until(lambda: len(worker_pids(valve)) == 2, 10)
        after = worker_pids(valve)
        self.assertEqual(len(after & pids), 1, (pids, after))
        self.assertIn("its job was cancelled", valve.log())
        self.assertEqual(valve.metric("valve_jobs_cancelled_total"), 2)
        self.assertEqual(valve.metric("valve_jobs_running"), 0)
        self.assertEqual(valve.metric("valve_jobs_queued"), 0)
        # A finished job's DELETE drops its answer (not a cancellation).
        done = submit(valve, "GET", "/hello")
        result(valve, done)
        self.assertEqual(valve.request("DELETE", done).json()["state"], "done")
        self.assertEqual(valve.get(done).status, 404)
        self.assertEqual(valve.metric("valve_jobs_cancelled_total"), 2)
        self.assertEqual(valve.metric("valve_jobs_stored_bytes"), 0)

    def test_job_timeout_apart_from_the_request_timeout(self):
        valve = self.start_backend_valve("-n", "2", "--timeout", "0.5", "--job-timeout", "1.5",
                                         "--admin", "127.0.0.1:0")
        self.assertEqual(valve.get("/sleep?ms=1000").status, 504)
        ok = submit(valve, "GET", "/sleep?ms=1000")
        self.assertEqual(result(valve, ok).status, 200)
        slow = submit(valve, "GET", "/sleep?ms=3000")
        r = result(valve, slow)
        self.assertEqual(r.status, 504, r)
        self.assertIn("1.5 s", r.json()["error"])
        self.assertEqual(valve.metric('valve_jobs_finished_total{result="done"}'), 1)
        self.assertEqual(valve.metric('valve_jobs_finished_total{result="failed"}'), 1)
        self.assertEqual(valve.status()["jobs"]["jobs"][1]["state"], "failed")

    def test_answers_expire(self):
        valve = self.start_backend_valve("-n", "1", "--job-result-ttl", "1",
                                         "--admin", "127.0.0.1:0")
        location = submit(valve, "GET", "/hello")
        r = result(valve, location)
        self.assertEqual(r.status, 200)
        finished = time.monotonic()
        wait_until(lambda: valve.get(location).status == 404, 5)
        self.assertGreater(time.monotonic() - finished, 0.8)
        self.assertEqual(valve.metric("valve_jobs_expired_total"), 1)
        # Forgotten without being asked for again, too.
        submit(valve, "GET", "/hello")
        wait_until(lambda: valve.metric("valve_jobs_expired_total") == 2, 5)
        self.assertEqual(valve.status()["jobs"]["kept"], 0)

    def test_bounds(self):
        valve = self.start_backend_valve("-n", "1", "--jobs-max", "2", "--jobs-max-bytes", "20k",
                                         "--admin", "127.0.0.1:0")
        first = submit(valve, "GET", "/sleep?ms=300")
        submit(valve, "GET", "/sleep?ms=300")
        r = valve.get("/hello", headers=ASYNC)
        self.assertEqual(r.status, 503, r)
        self.assertIn("jobs-max", r.json()["error"])
        self.assertTrue(r.header("Retry-After"), r)
        self.assertEqual(valve.metric("valve_jobs_refused_total"), 1)
        # A request without the preference is served as ever.
        self.assertEqual(valve.get("/hello").status, 200)
        result(valve, first)
        self.assertEqual(valve.request("DELETE", first).status, 200)
        # An answer larger than the room for stored answers is stored as valve's 503.
        big = submit(valve, "GET", "/bytes?n=50000")
        r = result(valve, big)
        self.assertEqual(r.status, 503, r)
        self.assertIn("jobs-max-bytes", r.json()["error"])
        self.assertLess(valve.metric("valve_jobs_stored_bytes"), 20 * 1024)
        # A job's body must fit request-buffer-size.
        small = self.start_backend_valve("-n", "1", "--request-buffer-size", "1k")
        r = small.post("/echo", b"y" * 2000, headers=ASYNC)
        self.assertEqual(r.status, 413, r)
        self.assertIn("request-buffer-size", r.json()["error"])

    def test_jobs_off_serves_the_request_at_once(self):
        valve = self.start_backend_valve("-n", "1", "--jobs-max", "0")
        r = valve.get("/hello", headers=ASYNC)
        self.assertEqual(r.status, 200, r)
        self.assertIsNone(r.header("Preference-Applied"))

    def test_interactive_requests_overtake_queued_jobs(self):
        valve = self.start_backend_valve("-n", "1", "--n-min", "1")
        busy = threading.Thread(target=lambda: valve.get("/sleep?ms=600"), daemon=True)
        busy.start()
        time.sleep(0.2)
        jobs = [submit(valve, "GET", "/sleep?ms=200") for _ in range(2)]
        self.assertEqual([state(valve, j)["state"] for j in jobs], ["queued", "queued"])
        r = valve.get("/sleep?ms=200")  # waits behind the busy one, ahead of both jobs
        answered = time.time()
        self.assertEqual(r.status, 200)
        busy.join(5)
        started = []
        for j in jobs:
            self.assertEqual(result(valve, j).status, 200)
            started.append(utc(valve.request("DELETE", j).json()["started"]))
        self.assertGreater(min(started), answered - 0.25, (started, answered))

    def test_route_timeout_from_the_config_file(self):
        config = os.path.join(self.tmpdir, "valve.toml")
        with open(config, "w") as f:
            f.write(f"""
cmd = {json.dumps(backend_cmd())}
n-max = 2
timeout = 5

[[routes]]
prefix = "/quick"
app = "default"
strip-prefix = true
timeout = "300ms"

[[routes]]
prefix = "/"
app = "default"
""")
        valve = self.start_valve("--config", config, "--admin", "127.0.0.1:0")
        r = valve.get("/quick/sleep?ms=1500")
        self.assertEqual(r.status, 504, r)
        self.assertIn("0.3 s", r.json()["error"])
        self.assertLess(r.elapsed, 1.2)
        self.assertEqual(valve.get("/sleep?ms=1000").status, 200)
        routes = {r["prefix"]: r["timeout"] for r in valve.status()["routes"]}
        self.assertEqual(routes, {"/quick": 0.3, "/": None})
        # A job on that route has --job-timeout, not the route's.
        location = submit(valve, "GET", "/quick/sleep?ms=600")
        self.assertEqual(result(valve, location).status, 200)


    def test_jobs_workers_max_holds_jobs_back(self):
        valve = self.start_backend_valve("-n", "2", "--n-min", "2", "--jobs-workers-max", "1",
                                         "--admin", "127.0.0.1:0")
        wait_until(lambda: len(worker_pids(valve)) == 2, 10)
        jobs = [submit(valve, "GET", "/sleep?ms=700") for _ in range(3)]
        wait_until(lambda: state(valve, jobs[0])["state"] == "running", 5)
        for j in jobs[1:]:
            doc = state(valve, j)
            self.assertEqual((doc["state"], doc["held"]), ("queued", True), doc)
        self.assertFalse(state(valve, jobs[0])["held"])
        # A held job cancelled: it leaves the hold, and never runs.
        cancelled = submit(valve, "GET", "/sleep?ms=700")
        self.assertEqual(valve.metric("valve_jobs_held"), 3)
        r = valve.request("DELETE", cancelled)
        self.assertEqual((r.status, r.json()["state"]), (200, "cancelled"), r)
        self.assertEqual(valve.get(cancelled).status, 404)
        self.assertEqual(valve.metric("valve_jobs_held"), 2)
        self.assertEqual(valve.metric("valve_jobs_queued"), 2)
        self.assertEqual(valve.metric("valve_jobs_running"), 1)
        apps = valve.status()["jobs"]["apps"]
        self.assertEqual(apps, {"default": {"admitted": 1, "held": 2, "workers_max": 1}}, apps)
        # The other worker is left for plain requests: served at once, not behind the jobs.
        for _ in range(3):
            r = valve.get("/sleep?ms=50")
            self.assertEqual(r.status, 200, r)
            self.assertLess(r.elapsed, 0.4, r)
        # One at a time, each started once the one before finished.
        spans = []
        for j in jobs:
            self.assertEqual(result(valve, j).status, 200)
            doc = valve.request("DELETE", j).json()
            spans.append((utc(doc["started"]), utc(doc["finished"])))
        for before, after in zip(spans, spans[1:]):
            self.assertGreaterEqual(after[0], before[1] - 0.01, spans)
        self.assertEqual(valve.metric("valve_jobs_held"), 0)
        self.assertEqual(valve.status()["jobs"]["apps"], {})
        self.assertEqual(valve.metric('valve_jobs_finished_total{result="done"}'), 3)
        self.assertEqual(valve.metric("valve_jobs_cancelled_total"), 1)

    def test_jobs_workers_max_holds_across_a_reload(self):
        # The default: n-max - 1, here 1 (one worker always left for plain requests).
        valve = self.start_backend_valve("-n", "2", "--n-min", "2", "--admin", "127.0.0.1:0")
        wait_until(lambda: len(worker_pids(valve)) == 2, 10)
        long = submit(valve, "GET", "/sleep?ms=2500")
        wait_until(lambda: state(valve, long)["state"] == "running", 5)
        held = submit(valve, "GET", "/sleep?ms=100")
        self.assertTrue(state(valve, held)["held"])
        # A new generation of two idle workers: the job on the old one still counts.
        reload = valve.admin("POST", "/reload")
        self.assertEqual(reload.status, 200, reload)
        self.assertEqual(state(valve, long)["state"], "running")
        time.sleep(1.2)  # the bound is looked at again every second
        doc = state(valve, held)
        self.assertEqual((doc["state"], doc["held"]), ("queued", True), doc)
        self.assertEqual(valve.get("/hello").status, 200)
        spans = []
        for j in (long, held):
            self.assertEqual(result(valve, j).status, 200)
            doc = valve.request("DELETE", j).json()
            spans.append((utc(doc["started"]), utc(doc["finished"])))
        self.assertGreaterEqual(spans[1][0], spans[0][1] - 0.01, spans)
        # Raised by a scale (n-max 3: 2 jobs at once), a held job goes within the second the
        # bound is looked at again.
        jobs = [submit(valve, "GET", "/sleep?ms=2500") for _ in range(2)]
        wait_until(lambda: state(valve, jobs[0])["state"] == "running", 5)
        self.assertTrue(state(valve, jobs[1])["held"])
        self.assertEqual(valve.admin("POST", "/scale?n-max=3").status, 200)
        wait_until(lambda: state(valve, jobs[1])["state"] == "running", 2)
        self.assertEqual(state(valve, jobs[0])["state"], "running")

    def test_prefer_wait(self):
        valve = self.start_backend_valve("-n", "2", "--n-min", "2", "--jobs-workers-max", "1",
                                         "--job-timeout", "1.5", "--admin", "127.0.0.1:0")
        # In time: the job's own answer, as if synchronous; nothing kept.
        headers = {"Prefer": "return=minimal, respond-async, wait=5", "X-Request-Id": "waited-1"}
        sync = valve.get("/echo?b=2", headers={"Prefer": "return=minimal",
                                               "X-Request-Id": "waited-1"})
        r = valve.get("/echo?b=2", headers=headers)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("Preference-Applied"), "wait=1", r)  # as capped, by job-timeout
        self.assertIsNone(r.header("Location"), r)
        self.assertLess(r.elapsed, 1, r)
        self.assertEqual(r.body, sync.body)  # the worker saw neither respond-async nor wait
        self.assertIn(["Prefer", "return=minimal"], r.json()["headers"])
        self.assertEqual(valve.metric("valve_jobs_waited_total"), 1)
        self.assertEqual(valve.metric("valve_jobs_submitted_total"), 1)
        self.assertEqual(valve.status()["jobs"]["kept"], 0)
        # Not in time: the 202 once the wait is over, capped at --job-timeout (1.5 s: 1 s).
        r = valve.get("/sleep?ms=1200", headers={"Prefer": "respond-async, wait=100"})
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.header("Preference-Applied"), "respond-async, wait=1", r)
        self.assertGreater(r.elapsed, 0.9, r)
        self.assertLess(r.elapsed, 1.15, r)
        location = r.header("Location")
        self.assertEqual(result(valve, location).status, 200)
        # A wait that is not delta-seconds is ignored: the 202 at once.
        r = valve.get("/hello", headers={"Prefer": "respond-async, wait=soon"})
        self.assertEqual((r.status, r.header("Preference-Applied")), (202, "respond-async"), r)
        result(valve, r.header("Location"))
        # A client that leaves (a reset) while its job is held: the job is dropped, never run.
        busy = submit(valve, "GET", "/sleep?ms=1000")
        wait_until(lambda: state(valve, busy)["state"] == "running", 5)
        with valve.raw() as conn:
            conn.send(format_request("GET", "/sleep?ms=10", [("Prefer", "respond-async, wait=1")]))
            wait_until(lambda: valve.metric("valve_jobs_held") == 1, 5)
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_until(lambda: valve.metric("valve_jobs_held") == 0, 5)
        self.assertEqual([j["target"] for j in valve.status()["jobs"]["jobs"]],
                         ["/sleep?ms=1200", "/hello", "/sleep?ms=1000"])
        self.assertEqual(result(valve, busy).status, 200)
        self.assertEqual(valve.metric("valve_jobs_submitted_total"), 5)
        self.assertEqual(valve.metric('valve_jobs_finished_total{result="done"}'), 4)


if __name__ == "__main__":
    unittest.main()
