"""Fair queueing between clients: one client flooding a pool with slow requests from 127.0.0.1
does not make another, on 127.0.0.2, wait for the whole queue (the native backend, and real R
plumber workers); per-client limits answer 429 with Retry-After; priority classes, from a header
and from a config file's routes, put interactive requests ahead of batch ones; the client key
taken from X-Forwarded-For or a header."""

import http.client
import json
import os
import threading
import time
import unittest

from harness import ValveTestCase, app_path, backend_cmd, Response, wait_until

FLOODER, OTHER = "127.0.0.1", "127.0.0.2"


def get_from(valve, source, path, headers=None, timeout=60.0):
    """GET from a given loopback source address; a Response with .elapsed."""
    conn = http.client.HTTPConnection(valve.host, valve.port, timeout=timeout,
                                      source_address=(source, 0))
    started = time.monotonic()
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.reason, resp.getheaders(), data,
                        elapsed=time.monotonic() - started)
    finally:
        conn.close()


class Flood:
    """n connections from `source`, each one GET of `path` at once, in threads; results() waits
    for them all."""

    def __init__(self, valve, n, path, source=FLOODER, headers=None):
        self.responses = [None] * n
        self.finished = [None] * n
        self.started = time.monotonic()

        def one(i):
            try:
                self.responses[i] = get_from(valve, source, path, headers)
            except OSError as exc:
                self.responses[i] = exc
            self.finished[i] = time.monotonic()

        self.threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def results(self, timeout=90):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        if any(t.is_alive() for t in self.threads):
            raise AssertionError(f"the flood did not finish within {timeout} s")
        return self.responses


def queued(valve):
    return valve.status()["queue"]


class FairShare(ValveTestCase):
    def flood_then_other(self, valve, slow_path, fast_path, slow_s, n=50, workers=2,
                         other_requests=3, flood_headers=None, other_headers=None,
                         other_source=OTHER):
        """Floods with n slow requests, waits until the rest of them wait in the queue, then sends
        other_requests one after another from the other client; returns their times."""
        flood = Flood(valve, n, slow_path, headers=flood_headers)
        wait_until(lambda: queued(valve) >= n - workers, 30, message="the flood queued")
        times = []
        for _ in range(other_requests):
            response = get_from(valve, other_source, fast_path, other_headers)
            self.assertEqual(response.status, 200, response)
            times.append(response.elapsed)
            # The flood still waits: the other client did not just come after it.
            self.assertGreater(queued(valve), n // 2,
                               f"the flood was served first: the other waited {response.elapsed:.1f} s")
        responses = flood.results()
        self.assertTrue(all(isinstance(r, Response) and r.status == 200 for r in responses),
                        [r for r in responses if not isinstance(r, Response) or r.status != 200][:3])
        return times

    def test_another_client_waits_for_one_slow_request_not_the_flood(self):
        # 2 workers, 50 connections of 0.5 s requests from 127.0.0.1: first come, first served, a
        # request from 127.0.0.2 would wait about 48 / 2 x 0.5 = 12 s; in turn, about one.
        valve = self.start_backend_valve("-n", "2", "--n-min", "2", "--admin", "127.0.0.1:0")
        times = self.flood_then_other(valve, "/sleep?ms=500", "/hello", 0.5)
        for t in times:
            self.assertLess(t, 2.5, f"the other client waited {times} s behind the flood")
        status = valve.status()
        self.assertEqual(status["apps"][0]["clients"]["keys"], 0, status["apps"][0]["clients"])
        self.assertGreater(valve.metric('valve_queue_wait_by_priority_seconds_count'
                                        '{priority="normal"}'), 50)

    def test_with_real_plumber_workers(self):
        valve = self.start_valve("--file", app_path("api.R"), "-n", "2", "--n-min", "2",
                                 "--admin", "127.0.0.1:0", ready="/pid", ready_timeout=60)
        wait_until(lambda: len(valve.workers()) == 2 and valve.status()["workers"] and all(
            w["state"] == "ready" for w in valve.status()["workers"]), 60,
            message="both R workers ready")
        # 20 connections of 1 s: first come, first served, the other would wait about 9 s.
        times = self.flood_then_other(valve, "/sleep?zzz=1", "/pid", 1.0, n=20, other_requests=2)
        for t in times:
            self.assertLess(t, 3.5, f"the other client waited {times} s behind the flood")

    def test_client_key_from_x_forwarded_for(self):
        # Behind one trusted proxy (here the test itself, on 127.0.0.1 for both): the last hop.
        valve = self.start_backend_valve("-n", "2", "--n-min", "2", "--admin", "127.0.0.1:0",
                                         "--client-key", "forwarded:1")
        times = self.flood_then_other(
            valve, "/sleep?ms=500", "/hello", 0.5, n=24, other_requests=2,
            flood_headers={"X-Forwarded-For": "198.51.100.7, 10.0.0.1"},
            other_headers={"X-Forwarded-For": "198.51.100.7, 10.0.0.2"}, other_source=FLOODER)
        for t in times:
            self.assertLess(t, 2.5, f"the other client waited {times} s behind the flood")

    def test_client_key_from_a_header(self):
        valve = self.start_backend_valve("-n", "2", "--n-min", "2", "--admin", "127.0.0.1:0",
                                         "--client-key", "header:X-Api-Key")
        flood = Flood(valve, 12, "/sleep?ms=500", headers={"X-Api-Key": "flooder-key"})
        wait_until(lambda: queued(valve) >= 10, 30, message="the flood queued")
        top = valve.status()["apps"][0]["clients"]["top_waiting"]
        self.assertEqual(len(top), 1, top)
        self.assertTrue(top[0]["key"].startswith("header:"), top)
        self.assertNotIn("flooder-key", str(valve.status()), "an API key must not be shown")
        response = get_from(valve, FLOODER, "/hello", {"X-Api-Key": "other-key"})
        self.assertEqual(response.status, 200, response)
        self.assertLess(response.elapsed, 2.5)
        self.assertGreater(queued(valve), 5)
        flood.results()


class Limits(ValveTestCase):
    def test_past_client_max_queued_429_with_retry_after_others_still_queue(self):
        valve = self.start_backend_valve("-n", "1", "--n-min", "1", "--client-max-queued", "3",
                                         "--admin", "127.0.0.1:0")
        flood = Flood(valve, 4, "/sleep?ms=800")  # one on the worker, three waiting
        wait_until(lambda: queued(valve) == 3, 10, message="three queued")
        refused = get_from(valve, FLOODER, "/hello")
        body = self.assertValveError(refused, 429)
        self.assertRetryAfter(refused)
        self.assertIn("client-max-queued", body["error"])
        self.assertLess(refused.elapsed, 0.5, "429 comes at once")
        clients = valve.status()["apps"][0]["clients"]
        self.assertEqual(clients["top_waiting"],
                         [{"key": FLOODER, "queued": 3, "in_flight": 1}], clients)
        self.assertEqual(valve.status()["totals"]["client_limited"], 1)
        self.assertEqual(valve.metric("valve_client_limited_total"), 1)
        self.assertEqual(valve.metric('valve_client_keys{app="default"}'), 1)
        # Another client is not limited by the first one's count, and goes before the rest of it.
        other = get_from(valve, OTHER, "/hello")
        self.assertEqual(other.status, 200, other)
        self.assertLess(other.elapsed, 2.0)
        responses = flood.results()
        self.assertEqual([r.status for r in responses], [200] * 4)
        self.assertEqual(valve.metric("valve_rejections_total"), 0, "a 429 is not a 503")

    def test_client_max_in_flight_keeps_a_worker_for_others(self):
        # Three workers; one client may have one on a worker at a time: the other two stay free.
        valve = self.start_backend_valve("-n", "3", "--n-min", "3", "--client-max-in-flight", "1",
                                         "--admin", "127.0.0.1:0")
        wait_until(lambda: sum(w["state"] == "ready" for w in valve.status()["workers"]) == 3, 30,
                   message="three workers ready")
        flood = Flood(valve, 4, "/sleep?ms=500")
        wait_until(lambda: queued(valve) == 3, 10, message="three of the flood queued")
        busy = sum(w["in_flight"] for w in valve.status()["workers"])
        self.assertEqual(busy, 1, valve.status()["workers"])
        other = get_from(valve, OTHER, "/sleep?ms=10")
        self.assertLess(other.elapsed, 0.4, "a free worker took the other client's at once")
        started = time.monotonic()
        flood.results()
        self.assertGreater(time.monotonic() - flood.started, 1.8, "served one at a time")
        self.assertLess(time.monotonic() - started, 10)


class Priorities(ValveTestCase):
    def order_of(self, valve, requests):
        """Queues requests [(name, source, path, headers)] one after another behind a busy
        worker; the names in the order their answers came."""
        blocker = Flood(valve, 1, "/sleep?ms=600", source=OTHER)
        wait_until(lambda: sum(w["in_flight"] for w in valve.status()["workers"]) == 1, 10,
                   message="the worker busy")
        done, lock = [], threading.Lock()

        def one(name, source, path, headers):
            response = get_from(valve, source, path, headers)
            self.assertEqual(response.status, 200, response)
            with lock:
                done.append(name)

        threads = []
        for i, (name, source, path, headers) in enumerate(requests):
            t = threading.Thread(target=one, args=(name, source, path, headers), daemon=True)
            t.start()
            threads.append(t)
            wait_until(lambda: queued(valve) == i + 1, 10, message=f"{name} queued")
        for t in threads:
            t.join(30)
        blocker.results()
        return done

    def test_priority_header_puts_interactive_ahead_of_batch(self):
        valve = self.start_backend_valve("-n", "1", "--n-min", "1", "--priority-header",
                                         "X-Priority", "--admin", "127.0.0.1:0")
        batch = {"X-Priority": "batch"}
        order = self.order_of(valve, [
            ("batch1", FLOODER, "/sleep?ms=100", batch),
            ("batch2", FLOODER, "/sleep?ms=100", batch),
            ("normal", FLOODER, "/sleep?ms=100", {}),
            ("interactive", OTHER, "/sleep?ms=100", {"X-Priority": "interactive"}),
        ])
        self.assertEqual(order, ["interactive", "normal", "batch1", "batch2"])
        self.assertEqual(valve.metric('valve_queue_wait_by_priority_seconds_count'
                                      '{priority="batch"}'), 2)

    def test_route_priority_from_the_config_file(self):
        config = os.path.join(self.tmpdir, "valve.toml")
        with open(config, "w") as f:
            f.write(f"""
cmd = {json.dumps(backend_cmd())}
n-min = 1
n-max = 1

[[routes]]
prefix = "/batch"
app = "default"
strip-prefix = true
priority = "batch"

[[routes]]
prefix = "/"
app = "default"
priority = "interactive"
""")
        valve = self.start_valve("--config", config, "--admin", "127.0.0.1:0")
        order = self.order_of(valve, [
            ("batch1", FLOODER, "/batch/sleep?ms=100", {}),
            ("batch2", OTHER, "/batch/sleep?ms=100", {}),
            ("interactive", FLOODER, "/sleep?ms=100", {}),
        ])
        self.assertEqual(order, ["interactive", "batch1", "batch2"])
        routes = valve.status()["routes"]
        self.assertEqual(sorted(r["priority"] for r in routes), ["batch", "interactive"], routes)


if __name__ == "__main__":
    unittest.main(verbosity=2)
