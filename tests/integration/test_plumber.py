"""Real plumber workers behind valve: the example API, forwarded headers as plumber sees them,
request bodies, and an API with its docs turned off (which valve-rs never sees as ready)."""

import json
import statistics
import time
import unittest

from harness import ValveTestCase, app_path, example_path, wait_until


class Example(ValveTestCase):
    def test_hello_example(self):
        valve = self.start_valve("-f", example_path("hello", "plumber.R"), "-n", "2",
                                 ready="/echo?msg=ready", ready_timeout=60)
        echo = valve.get("/echo?msg=hello%20valve")
        self.assertEqual(echo.status, 200, echo)
        self.assertEqual(echo.json(), {"msg": "hello valve"})

        total = valve.post("/sum", json.dumps([1, 2, 3.5]),
                           headers={"Content-Type": "application/json"})
        self.assertEqual(total.status, 200, total)
        self.assertEqual(total.json()["sum"], 6.5)

        named = valve.post("/sum", json.dumps({"numbers": [10, -4]}),
                           headers={"Content-Type": "application/json"})
        self.assertEqual(named.json()["sum"], 6)

        for bad in ('["a", 1]', "not json", "[]", '{"numbers": "7"}'):
            with self.subTest(body=bad):
                refused = valve.post("/sum", bad, headers={"Content-Type": "application/json"})
                self.assertEqual(refused.status, 400, refused)
                self.assertIn("numbers", refused.json()["error"])

        slept = valve.get("/sleep?zzz=0.2")
        self.assertEqual(slept.status, 200, slept)
        self.assertEqual(slept.json()["slept"], 0.2)
        # plumber's spec types zzz from its default (zzz = 1: a number), so valve refuses a word
        # before R sees it (422, typed requests); R itself would answer 400.
        refused = valve.get("/sleep?zzz=soon")
        self.assertEqual(refused.status, 422, refused)
        self.assertEqual([d["loc"] for d in refused.json()["detail"]], [["query", "zzz"]])


class Api(ValveTestCase):
    def start_api(self, *args):
        return self.start_valve("-f", app_path("api.R"), *args, ready="/pid", ready_timeout=60)

    def test_worker_is_a_direct_child_running_r(self):
        valve = self.start_api("-n", "1")
        pid = valve.get("/pid").json()["pid"]
        self.assertIn(pid, valve.worker_pids(), "the R process is valvectl's child (fork+exec)")

    def test_forwarded_headers_reach_plumber(self):
        valve = self.start_api("-n", "1")
        response = valve.get("/headers", headers={"Host": "example.test:8080",
                                                  "X-Request-Id": "plumber-req-1",
                                                  "X-Custom": "kept"})
        self.assertEqual(response.status, 200, response)
        seen = response.json()["headers"]
        self.assertEqual(seen.get("HTTP_HOST"), "example.test:8080")
        self.assertEqual(seen.get("HTTP_X_FORWARDED_FOR", "").split(",")[-1].strip(), "127.0.0.1",
                         seen)
        self.assertEqual(seen.get("HTTP_X_FORWARDED_PROTO"), "http")
        self.assertEqual(seen.get("HTTP_X_FORWARDED_HOST"), "example.test:8080")
        self.assertEqual(seen.get("HTTP_X_REQUEST_ID"), "plumber-req-1")
        self.assertEqual(seen.get("HTTP_X_CUSTOM"), "kept")
        self.assertEqual(response.header("X-Request-Id"), "plumber-req-1")

        generated = valve.get("/headers").json()["headers"].get("HTTP_X_REQUEST_ID")
        self.assertTrue(generated, "valve adds an X-Request-Id when the client sent none")

    def test_post_body_reaches_plumber(self):
        valve = self.start_api("-n", "1")
        body = bytes(range(256)) * 4096  # 1 MiB, every byte value
        response = valve.post("/upload", body, headers={"Content-Type": "application/octet-stream"})
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json()["length"], len(body))
        small = valve.post("/upload", b"abc", headers={"Content-Type": "text/plain"})
        self.assertEqual(small.json()["length"], 3)


class PlumberAnswers(ValveTestCase):
    """plumber's own answers pass through as they are, and none of them is held against a worker:
    its 405 with an empty Allow header (to a method the route lacks, and to every HEAD), the
    stray body it sends after a HEAD answer, and a 503 the app sets itself."""

    def test_405_head_and_app_503_pass_through_and_never_churn_workers(self):
        valve = self.start_valve("-f", app_path("api.R"), "-n", "2", "--n-min", "2",
                                 "--admin", "127.0.0.1:0", ready="/pid", ready_timeout=60)
        wait_until(lambda: [w["state"] for w in valve.status()["workers"]] == ["ready"] * 2, 60,
                   message="two ready workers")
        pids = sorted(valve.worker_pids())
        with valve.raw(timeout=20) as conn:
            for _ in range(4):  # more than --max-fails (3) in a row, on one kept-alive connection
                for method in ("POST", "DELETE", "OPTIONS", "PUT", "PATCH"):
                    answer = conn.request(method, "/pid")
                    self.assertEqual(answer.status, 405, answer)
                    self.assertEqual(answer.header_all("Allow"), [""], answer)
                    self.assertEqual(answer.json(), {"error": "405 - Method Not Allowed"})
                head = conn.request("HEAD", "/pid")
                self.assertEqual(head.status, 405, head)
                self.assertEqual(head.header("Content-Length"), "36", head)
                self.assertEqual(head.body, b"", "an answer to HEAD has no body (RFC 9110 9.3.2)")
                unavailable = conn.request("GET", "/unavailable")
                self.assertEqual(unavailable.status, 503, unavailable)
                self.assertEqual(unavailable.json()["error"], "down for maintenance")
                # The connection is still in step: the next answer is the next request's.
                self.assertEqual(conn.request("GET", "/pid").status, 200)
        self.assertEqual(sorted(valve.worker_pids()), pids, "a worker was replaced")
        status = valve.status()
        self.assertTrue(all(w["state"] == "ready" for w in status["workers"]), status)
        self.assertNotIn("unhealthy", valve.log())
        self.assertNotIn("failed before answering", valve.log())


    def test_a_retry_in_a_one_worker_pool_goes_to_that_worker_at_once(self):
        # The retry of a GET avoids the worker that failed it, unless no other can ever exist:
        # then it must not wait the queue timeout for one.
        valve = self.start_valve("-f", app_path("api.R"), "-n", "1", "--queue-timeout", "20",
                                 ready="/pid", ready_timeout=60)
        started = time.monotonic()
        answer = valve.get("/switch", timeout=30)
        self.assertValveError(answer, 502)
        self.assertIn("switched protocols", answer.json()["error"])
        self.assertLess(time.monotonic() - started, 10, "the retry waited for a worker")
        self.assertEqual(valve.get("/pid").status, 200)


class Latency(ValveTestCase):
    def assert_no_stall(self, valve):
        with valve.raw() as conn:
            conn.request("GET", "/pid")
            gets, posts = [], []
            for _ in range(30):
                started = time.monotonic()
                self.assertEqual(conn.request("GET", "/pid").status, 200)
                gets.append(time.monotonic() - started)
                started = time.monotonic()
                self.assertEqual(conn.request("POST", "/upload", body=b"p" * 5000).status, 200)
                posts.append(time.monotonic() - started)
        self.assertLess(statistics.median(gets), 0.020, f"GET latencies {gets}")
        self.assertLess(statistics.median(posts), 0.020, f"POST latencies {posts}")

    def test_no_keep_alive_stall_to_plumber(self):
        # plumber's keep-alive connections stall 40 ms per request (delayed ACK); valve's
        # connection to its workers must not.
        valve = self.start_valve("-f", app_path("api.R"), "-n", "1", ready="/pid",
                                 ready_timeout=60)
        self.assert_no_stall(valve)

    def test_no_keep_alive_stall_to_plumber_over_tcp(self):
        # The same plumber API supervised through --cmd on a TCP port: valve re-arms TCP_QUICKACK
        # on its kept-alive connection, so httpuv's Nagle does not meet a delayed ACK.
        serve = (f"Rscript -e 'plumber::pr_run(plumber::pr(\"{app_path('api.R')}\"), "
                 "host=\"127.0.0.1\", port={port}, docs=FALSE)'")
        valve = self.start_valve("--cmd", serve, "-n", "1", ready="/pid", ready_timeout=60)
        self.assert_no_stall(valve)


class NoDocs(ValveTestCase):
    def test_api_without_docs_is_served(self):
        valve = self.start_valve("-f", app_path("nodocs.R"), "-n", "1", ready="/hello",
                                 ready_timeout=60)
        response = valve.get("/hello")
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json()["msg"], "hello without docs")
        self.assertEqual(valve.get("/__docs__/").status, 404)


if __name__ == "__main__":
    unittest.main(verbosity=2)
