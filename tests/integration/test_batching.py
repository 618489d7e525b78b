"""Micro-batching (a route's batch-path) with real plumber workers (tests/apps/batch.R: an app of
two workers, and one of one worker with a short queue timeout): an idle pool sends each request
alone; concurrent requests go to the batch route in fewer worker calls, and each client gets, as
its JSON body, what the single route gives for its input alone; a malformed batch answer is retried
one by one (or is each member's 502 without batch-retry-singly); a body that is not JSON goes
alone; clients that leave a waiting batch harm no one; a batch that waits past queue-timeout gives
each of its requests the 503 a lone one gets."""

import json
import os
import socket
import struct
import threading
import time
import unittest

from harness import ValveTestCase, app_path, backend_cmd, format_request, parallel, wait_until

JSON = {"Content-Type": "application/json"}


class Batching(ValveTestCase):
    def start(self):
        config = os.path.join(self.tmpdir, "valve.toml")
        with open(config, "w") as f:
            f.write(f"""
n-min = 2
n-max = 2
health-path = "/hello"
[apps.api]
file = "{app_path('batch.R')}"
[[routes]]
prefix = "/"
app = "api"
[[routes]]
prefix = "/double"
app = "api"
batch-path = "/double_batch"
batch-max = 8
[[routes]]
prefix = "/bad"
app = "api"
batch-path = "/bad_batch"
[[routes]]
prefix = "/strict"
app = "api"
batch-path = "/bad_batch"
batch-retry-singly = false
# One worker and a short queue timeout, by Host.
[apps.qt]
file = "{app_path('batch.R')}"
n-min = 1
n-max = 1
queue-timeout = "0.5s"
[[routes]]
prefix = "/"
hostname = "qt.test"
app = "qt"
[[routes]]
prefix = "/double"
hostname = "qt.test"
app = "qt"
batch-path = "/double_batch"
""")
        valve = self.start_valve("--config", config, "--admin", "127.0.0.1:0", ready="/hello",
                                 ready_timeout=60)
        wait_until(lambda: sum(w["state"] == "ready" for w in valve.status()["workers"]) == 3, 60,
                   message="three workers ready")
        return valve

    def counts(self, valve):
        return {name: valve.metric(f"valve_{name}_total")
                for name in ("batches", "batched_requests", "batch_failures", "batch_fallbacks")}

    def post(self, valve, path, x, request_id=None):
        headers = dict(JSON)
        if request_id:
            headers["X-Request-Id"] = request_id
        return valve.post(path, json.dumps({"x": x}), headers=headers)

    def hold_workers(self, valve, seconds=1.0):
        """Both workers busy for `seconds` (from two threads): what arrives meanwhile queues."""
        threads = [threading.Thread(target=valve.get, args=(f"/sleep?s={seconds}",))
                   for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        return threads

    def test_batching(self):
        valve = self.start()
        inputs = [0, 1, 1.5, -2, 3.14159, 1e6, 7, 12]

        # An idle pool: each request goes alone to /double, as without batching.
        singles = {}
        for x in inputs:
            response = self.post(valve, "/double", x)
            self.assertEqual(response.status, 200, response)
            singles[x] = response.json()
        self.assertEqual(singles[1.5], {"y": 3, "x": 1.5})
        self.assertEqual(self.counts(valve)["batches"], 0)

        # Many at once: fewer worker calls, and each answer is the single route's for its input.
        before = self.counts(valve)
        n = 32
        xs = [inputs[i % len(inputs)] for i in range(n)]
        ids = [f"req-{i}-{os.urandom(4).hex()}" for i in range(n)]
        started = time.monotonic()
        results = parallel([lambda i=i: self.post(valve, "/double", xs[i], ids[i])
                            for i in range(n)], timeout=60)
        elapsed = time.monotonic() - started
        after = self.counts(valve)
        for i, response in enumerate(results):
            self.assertNotIsInstance(response, Exception)
            self.assertEqual(response.status, 200, response)
            self.assertEqual(response.json(), singles[xs[i]], (i, xs[i], response))
            self.assertEqual(response.header("X-Request-Id"), ids[i])
            self.assertEqual(response.header("Content-Type"), "application/json")
        batches = after["batches"] - before["batches"]
        batched = after["batched_requests"] - before["batched_requests"]
        worker_calls = batches + (n - batched)
        self.assertGreaterEqual(batched, n // 2, after)
        self.assertLess(worker_calls, n // 2, after)
        self.assertEqual(after["batch_failures"], before["batch_failures"])
        # Unbatched, 32 calls of 0.1 s on two workers take 1.6 s at least.
        self.assertLess(elapsed, 1.5, (elapsed, after))
        self.assertRegex(valve.log() + valve.stdout(), r"batch|listening")

        # A malformed batch answer (an element short): each request is sent alone instead.
        before = self.counts(valve)
        threads = self.hold_workers(valve)
        results = parallel([lambda x=x: self.post(valve, "/bad", x) for x in inputs], timeout=60)
        for t in threads:
            t.join(10)
        after = self.counts(valve)
        for x, response in zip(inputs, results):
            self.assertNotIsInstance(response, Exception)
            self.assertEqual(response.status, 200, response)
            self.assertEqual(response.json(), singles[x])
        self.assertGreaterEqual(after["batch_failures"] - before["batch_failures"], 1, after)
        self.assertEqual(after["batch_fallbacks"] - before["batch_fallbacks"],
                         after["batched_requests"] - before["batched_requests"], after)
        self.assertEqual(after["batched_requests"] - before["batched_requests"], len(inputs))

        # Without batch-retry-singly, each request of the failed batch gets valve's 502.
        before = self.counts(valve)
        threads = self.hold_workers(valve)
        results = parallel([lambda x=x: self.post(valve, "/strict", x, f"strict-{x}")
                            for x in inputs], timeout=60)
        for t in threads:
            t.join(10)
        for x, response in zip(inputs, results):
            self.assertNotIsInstance(response, Exception)
            self.assertEqual(response.status, 502, response)
            self.assertEqual(response.json()["status"], 502)
            self.assertEqual(response.header("X-Request-Id"), f"strict-{x}")
        after = self.counts(valve)
        self.assertEqual(after["batch_fallbacks"], before["batch_fallbacks"])

        # A body that is not one JSON value goes alone, and gets the route's own answer.
        before = self.counts(valve)
        threads = self.hold_workers(valve)
        bad_body = lambda: valve.post("/double", "{not json", headers=JSON)  # noqa: E731
        two_values = lambda: valve.post("/double", '{"x": 1}, {"x": 2}', headers=JSON)  # noqa
        results = parallel([bad_body, two_values] +
                           [lambda x=x: self.post(valve, "/double", x) for x in inputs[:4]],
                           timeout=60)
        for t in threads:
            t.join(10)
        after = self.counts(valve)
        self.assertNotIn(results[0].status, (200, 502, 503, 504), results[0])
        self.assertNotIn(results[1].status, (502, 503, 504), results[1])
        for x, response in zip(inputs[:4], results[2:]):
            self.assertEqual(response.status, 200, response)
            self.assertEqual(response.json(), singles[x])
        self.assertEqual(after["batched_requests"] - before["batched_requests"], 4, after)

        # Clients that leave a waiting batch: the others get their answers, nothing breaks.
        before = self.counts(valve)
        threads = self.hold_workers(valve)
        socks = []
        for i, x in enumerate(inputs):
            s = socket.create_connection((valve.host, valve.port), timeout=10)
            s.sendall(format_request("POST", "/double", list(JSON.items()), json.dumps({"x": x}).encode()))
            socks.append(s)
        time.sleep(0.2)
        for s in socks[::2]:  # half of them leave (a reset, not a half-close) while the batch waits
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        answers = []
        for s in socks[1::2]:
            data = b""
            while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + int(
                    [line for line in data.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")][0].split(b":")[1]):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            answers.append(data)
        for t in threads:
            t.join(10)
        for x, data in zip(inputs[1::2], answers):
            self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
            self.assertEqual(json.loads(data.split(b"\r\n\r\n", 1)[1]), singles[x])
        after = self.counts(valve)
        self.assertEqual(after["batched_requests"] - before["batched_requests"], len(inputs) // 2,
                         after)
        # A batch that waits past queue-timeout: each of its requests gets the 503 a lone one would.
        qt = {"Host": "qt.test"}
        holder = threading.Thread(target=valve.get, args=("/sleep?s=1.5", qt))
        holder.start()
        time.sleep(0.3)
        results = parallel([lambda x=x: valve.post("/double", json.dumps({"x": x}),
                                                   headers=dict(JSON, **qt))
                            for x in inputs[:4]], timeout=30)
        holder.join(10)
        for response in results:
            self.assertEqual(response.status, 503, response)
            self.assertEqual(response.json()["status"], 503)
            self.assertIn("queue timeout", response.json()["error"])
            self.assertEqual(response.header("Retry-After"), "1")
        self.assertEqual(valve.post("/double", json.dumps({"x": 7}), headers=dict(JSON, **qt))
                         .json(), singles[7])

        # The workers serve on, alone and batched.
        self.assertEqual(self.post(valve, "/double", 7).json(), singles[7])
        status = valve.status()
        self.assertEqual(status["totals"]["batched_requests"], after["batched_requests"])

    def test_worker_failures_native(self):
        """The native backend, two workers taking one request at a time: a batch whose worker dies
        (/crash) is retried one by one, on another worker; one that outlasts --timeout (/hang)
        kills its worker and is, without batch-retry-singly, each request's 504."""
        config = os.path.join(self.tmpdir, "native.toml")
        with open(config, "w") as f:
            f.write(f"""
n-min = 2
n-max = 2
worker-concurrency = 1
timeout = "1s"
[apps.native]
cmd = {json.dumps(backend_cmd())}
[[routes]]
prefix = "/"
app = "native"
[[routes]]
prefix = "/hello"
app = "native"
batch-path = "/crash"
[[routes]]
prefix = "/pid"
app = "native"
batch-path = "/hang"
batch-retry-singly = false
""")
        valve = self.start_valve("--config", config, "--admin", "127.0.0.1:0", ready="/hello")
        wait_until(lambda: sum(w["state"] == "ready" for w in valve.status()["workers"]) == 2, 20,
                   message="two workers ready")

        def held(path, n):
            holders = [threading.Thread(target=valve.get, args=("/sleep?ms=400",))
                       for _ in range(2)]
            for holder in holders:
                holder.start()
            time.sleep(0.15)
            results = parallel([lambda i=i: valve.post(path, json.dumps({"i": i}), headers=JSON)
                                for i in range(n)], timeout=30)
            for holder in holders:
                holder.join(10)
            return results

        before = self.counts(valve)
        for response in held("/hello", 5):
            self.assertEqual(response.status, 200, response)
            self.assertEqual(response.text().strip(), "hello")
        after = self.counts(valve)
        self.assertEqual(after["batches"] - before["batches"], 1, after)
        self.assertEqual(after["batch_failures"] - before["batch_failures"], 1, after)
        self.assertEqual(after["batch_fallbacks"] - before["batch_fallbacks"], 5, after)
        self.assertRegex(valve.log(), r"batch \w+ of 5 requests to /crash: the worker failed")

        started = time.monotonic()
        for response in held("/pid", 3):
            self.assertEqual(response.status, 504, response)
            self.assertEqual(response.json()["status"], 504)
        self.assertLess(time.monotonic() - started, 5)
        self.assertRegex(valve.log(), r"gave no answer within 1 s; replacing it")
        valve.wait_ready("/hello", timeout=20)



if __name__ == "__main__":
    unittest.main()
