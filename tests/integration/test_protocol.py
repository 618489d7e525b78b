"""HTTP/1.1 between clients, valve and workers, with the native backend as the worker: keep-alive,
pipelining, streaming bodies, forwarded headers, and valve's own 4xx answers."""

import concurrent.futures
import os
import socket
import struct
import time
import unittest

from harness import ValveTestCase, fnv1a64, vm_hwm_kb

SANITIZED = os.environ.get("VALVE_SANITIZED", "") not in ("", "none")
MiB = 1 << 20
PATTERN = b"0123456789abcdef"  # the backend's /bytes body, repeated from offset 0


def echo_headers(response):
    """The headers the backend received, from its /echo answer: {lowercase name: [values]}."""
    seen = {}
    for name, value in response.json()["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    return seen


class PatternChecker:
    """Checks a streamed /bytes body piece by piece without holding it."""

    def __init__(self, test):
        self.test = test
        self.length = 0
        self.template = PATTERN * ((2 * MiB) // len(PATTERN) + 2)

    def __call__(self, piece):
        offset = self.length % len(PATTERN)
        for start in range(0, len(piece), MiB):
            part = piece[start:start + MiB]
            expected = self.template[offset:offset + len(part)]
            if part != expected:
                self.test.fail(f"body differs from the pattern near byte {self.length + start}")
            offset = (offset + len(part)) % len(PATTERN)
        self.length += len(piece)


class KeepAliveAndPipelining(ValveTestCase):
    def test_keep_alive_serves_many_requests_on_one_connection(self):
        valve = self.start_backend_valve("-n", "1")
        ids = set()
        with valve.raw() as conn:
            for i in range(5):
                response = conn.request("GET", f"/echo?i={i}")
                self.assertEqual(response.status, 200, response)
                self.assertEqual(response.json()["target"], f"/echo?i={i}")
                self.assertNotEqual((response.header("Connection") or "").lower(), "close")
                ids.add(response.header("X-Request-Id"))
        self.assertNotIn(None, ids)
        self.assertEqual(len(ids), 5, "each request gets its own X-Request-Id")

    def test_pipelined_requests_are_answered_in_order(self):
        # The slowest first: answers must still come back in request order.
        valve = self.start_backend_valve("-n", "3", "--n-min", "3")
        targets = ["/sleep?ms=600", "/sleep?ms=300", "/hello", "/echo?i=4", "/sleep?ms=1"]
        with valve.raw(timeout=15) as conn:
            conn.send(b"".join(
                f"GET {t} HTTP/1.1\r\nHost: valve.test\r\n\r\n".encode() for t in targets))
            bodies = [conn.read_response("GET") for _ in targets]
        self.assertEqual([r.status for r in bodies], [200] * 5, bodies)
        self.assertEqual(bodies[0].body, b"slept 600\n")
        self.assertEqual(bodies[1].body, b"slept 300\n")
        self.assertEqual(bodies[2].body, b"hello\n")
        self.assertEqual(bodies[3].json()["target"], "/echo?i=4")
        self.assertEqual(bodies[4].body, b"slept 1\n")

    def test_pipelined_requests_then_half_close_are_all_answered(self):
        # A client may send its requests and shut its side (printf ... | nc -N): each complete
        # request is answered, then valve closes; a last request cut short gets no answer.
        valve = self.start_backend_valve("-n", "1")
        targets = ["/echo?i=1", "/sleep?ms=100", "/echo?i=3"]
        with valve.raw(timeout=15) as conn:
            conn.send(b"".join(
                f"GET {t} HTTP/1.1\r\nHost: valve.test\r\n\r\n".encode() for t in targets)
                + b"POST /echo HTTP/1.1\r\nHost: valve.test\r\nContent-Length: 10\r\n\r\nabc")
            conn.sock.shutdown(socket.SHUT_WR)
            answers = [conn.read_response("GET") for _ in targets]
            self.assertEqual([r.status for r in answers], [200] * 3, answers)
            self.assertEqual(answers[0].json()["target"], "/echo?i=1")
            self.assertEqual(answers[1].body, b"slept 100\n")
            self.assertEqual(answers[2].json()["target"], "/echo?i=3")
            with self.assertRaises(EOFError):
                conn.read_response("POST")
        self.assertEqual(valve.get("/hello").status, 200)

    def test_half_close_racing_the_answers_loses_no_request(self):
        # The client's end may reach valve at any moment: while a request is at the worker, or
        # between one answer and taking up the next pipelined request. Many clients, each ending
        # a little later than the last, cover those moments; every request is still answered.
        valve = self.start_backend_valve("-n", "2", "--n-min", "2")
        request = b"".join(f"GET /echo?i={i} HTTP/1.1\r\nHost: valve.test\r\n\r\n".encode()
                           for i in range(3))

        def one(delay):
            with socket.create_connection((valve.host, valve.port), timeout=15) as sock:
                sock.sendall(request)
                time.sleep(delay)
                sock.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
            return received.count(b"HTTP/1.1 200 ")

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            answered = list(pool.map(one, [0.0002 * (i % 50) for i in range(3000)]))
        self.assertEqual([i for i, n in enumerate(answered) if n != 3], [])

    def test_head_has_no_body_and_keeps_the_connection_usable(self):
        valve = self.start_backend_valve("-n", "1")
        with valve.raw() as conn:
            head = conn.request("HEAD", "/bytes?n=1000")
            self.assertEqual(head.status, 200, head)
            self.assertEqual(head.body, b"")
            if head.header("Content-Length") is not None:
                self.assertEqual(head.header("Content-Length"), "1000")
            # Had valve sent body bytes after the HEAD answer, this would read them as garbage.
            after = conn.request("GET", "/hello")
            self.assertEqual(after.status, 200, after)
            self.assertEqual(after.body, b"hello\n")

    def test_close_delimited_worker_answer_reaches_the_client(self):
        valve = self.start_backend_valve("-n", "1")
        with valve.raw() as conn:
            response = conn.request("GET", "/noframe")
            self.assertEqual(response.status, 200, response)
            self.assertEqual(response.body, b"no framing\n")
            framed = (response.header("Content-Length") is not None
                      or "chunked" in (response.header("Transfer-Encoding") or "").lower())
            if framed and (response.header("Connection") or "").lower() != "close":
                self.assertEqual(conn.request("GET", "/hello").body, b"hello\n")

    def test_worker_connection_close_is_hop_by_hop(self):
        # The worker's "Connection: close" concerns valve's connection to it, not the client's.
        valve = self.start_backend_valve("-n", "1")
        with valve.raw() as conn:
            response = conn.request("GET", "/close")
            self.assertEqual(response.body, b"bye\n")
            if (response.header("Connection") or "").lower() == "close":
                self.assertTrue(conn.wait_closed(3), "said Connection: close but kept it open")
            else:
                self.assertEqual(conn.request("GET", "/hello").body, b"hello\n")

    def test_worker_statuses_pass_through(self):
        valve = self.start_backend_valve("-n", "1")
        with valve.raw() as conn:
            for code in (201, 418, 500, 503):
                response = conn.request("GET", f"/status?code={code}")
                self.assertEqual(response.status, code, response)
                # The worker's own body, not a valve error document.
                self.assertEqual(response.json(), {"status": code})
            no_content = conn.request("GET", "/status?code=204")
            self.assertEqual(no_content.status, 204)
            self.assertEqual(no_content.body, b"")
            self.assertEqual(conn.request("GET", "/hello").body, b"hello\n")

    def test_any_path_is_proxied(self):
        valve = self.start_backend_valve("-n", "1")
        root = valve.get("/")
        self.assertEqual(root.status, 404)
        self.assertEqual(root.json(), {"error": "not found"})  # the backend's 404, not valve's
        odd = "/echo?a=1&b=%20x&c=%E2%9C%93"
        self.assertEqual(valve.get(odd).json()["target"], odd)

    def test_idle_client_connection_closed_after_keepalive_timeout(self):
        valve = self.start_backend_valve("-n", "1", "--keepalive-timeout", "1")
        with valve.raw() as conn:
            self.assertEqual(conn.request("GET", "/hello").status, 200)
            started = time.monotonic()
            self.assertTrue(conn.wait_closed(5), "idle connection still open after 5 s")
            self.assertGreater(time.monotonic() - started, 0.5)


class ForwardedHeaders(ValveTestCase):
    def test_forwarded_headers_and_host(self):
        valve = self.start_backend_valve("-n", "1")
        with valve.raw() as conn:
            response = conn.request("GET", "/echo", headers=[
                ("Host", "example.test:8080"), ("X-Custom", "kept as is"),
                ("X-Forwarded-For", "10.1.2.3")])
        self.assertEqual(response.status, 200, response)
        seen = echo_headers(response)
        self.assertEqual(seen.get("host"), ["example.test:8080"])
        self.assertEqual(seen.get("x-custom"), ["kept as is"])
        forwarded_for = ",".join(seen.get("x-forwarded-for", []))
        self.assertEqual([p.strip() for p in forwarded_for.split(",")][-1], "127.0.0.1",
                         f"X-Forwarded-For {forwarded_for!r} does not end with the client")
        self.assertEqual(seen.get("x-forwarded-proto"), ["http"])
        self.assertEqual(seen.get("x-forwarded-host"), ["example.test:8080"])
        request_ids = seen.get("x-request-id", [])
        self.assertEqual(len(request_ids), 1, seen)
        self.assertTrue(request_ids[0])
        self.assertEqual(response.header("X-Request-Id"), request_ids[0])

    def test_client_request_id_is_kept(self):
        valve = self.start_backend_valve("-n", "1")
        response = valve.get("/echo", headers={"X-Request-Id": "client-id-42"})
        self.assertEqual(echo_headers(response).get("x-request-id"), ["client-id-42"])
        self.assertEqual(response.header("X-Request-Id"), "client-id-42")

    def test_hop_by_hop_headers_are_dropped(self):
        valve = self.start_backend_valve("-n", "1")
        with valve.raw() as conn:
            response = conn.request("GET", "/echo", headers=[
                ("Connection", "keep-alive, X-Hop-Custom"), ("X-Hop-Custom", "secret"),
                ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
                ("Proxy-Connection", "keep-alive"), ("X-End-To-End", "yes")])
        seen = echo_headers(response)
        for name in ("x-hop-custom", "keep-alive", "te", "proxy-connection"):
            self.assertNotIn(name, seen, f"hop-by-hop header {name} reached the worker")
        for value in seen.get("connection", []):
            self.assertNotIn("x-hop-custom", value.lower())
        self.assertEqual(seen.get("x-end-to-end"), ["yes"])


class Bodies(ValveTestCase):
    def test_content_length_upload(self):
        valve = self.start_backend_valve("-n", "1")
        body = bytes((i * 7 + 3) % 256 for i in range(300_000))
        response = valve.post("/upload", body, headers={"Content-Type": "application/octet-stream"})
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json(), {"length": len(body), "fnv1a": f"{fnv1a64(body):016x}"})

    def test_chunked_upload(self):
        valve = self.start_backend_valve("-n", "1")
        sizes = [1, 100, 65536, 3000, 7, 150_000, 2]
        pieces = [bytes((i + n) % 251 for i in range(n)) for n in sizes]
        with valve.raw(timeout=20) as conn:
            conn.send("POST /upload HTTP/1.1\r\nHost: valve.test\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n")
            for piece in pieces:
                conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                time.sleep(0.01)
            conn.send(b"0\r\n\r\n")
            response = conn.read_response()
        body = b"".join(pieces)
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json(), {"length": len(body), "fnv1a": f"{fnv1a64(body):016x}"})

    def transfer_up_and_down(self, conn, size):
        block = PATTERN * (MiB // len(PATTERN))
        conn.send(f"POST /upload HTTP/1.1\r\nHost: valve.test\r\nContent-Length: {size}\r\n"
                  "Content-Type: application/octet-stream\r\n\r\n")
        for _ in range(size // MiB):
            conn.send(block)
        upload = conn.read_response()
        self.assertEqual(upload.status, 200, upload)
        self.assertEqual(upload.json()["length"], size)
        for chunked in ("0", "1"):
            conn.send(f"GET /bytes?n={size}&chunked={chunked} HTTP/1.1\r\n"
                      "Host: valve.test\r\n\r\n")
            time.sleep(1.0)  # a slow reader: valve must push back, not buffer the rest
            checker = PatternChecker(self)
            download = conn.read_response(sink=checker)
            self.assertEqual(download.status, 200, download)
            self.assertEqual(checker.length, size, f"chunked={chunked}")

    def test_100_mib_up_and_down_without_buffering(self):
        valve = self.start_backend_valve("-n", "1", "--timeout", "120")
        with valve.raw(timeout=60) as conn:
            self.transfer_up_and_down(conn, 10 * MiB)
            warm_mb = vm_hwm_kb(valve.pid) / 1024
            self.transfer_up_and_down(conn, 100 * MiB)
        peak_mb = vm_hwm_kb(valve.pid) / 1024
        # Streaming memory does not grow with the body: buffering would cost at least the 90 MiB more
        # uploaded. A sanitizer's allocator (shadow memory, quarantine) adds churn, not buffering.
        growth_limit = 64 if SANITIZED else 40
        self.assertLess(peak_mb - warm_mb, growth_limit,
                        f"valvectl grew from {warm_mb:.0f} to {peak_mb:.0f} MB: bodies were buffered")
        if not SANITIZED:
            self.assertLess(peak_mb, 80, f"valvectl peaked at {peak_mb:.0f} MB: bodies were buffered")


class RequestsAServerMustAccept(ValveTestCase):
    """RFC 9112 and 9110 requests that a server must take, and valve's own judgement of those it
    cannot: each checked at the worker (the backend's /echo shows what reached it)."""

    def requests_seen(self, valve):
        return valve.get("/stats").json()["requests"]

    def test_absolute_form_target_reaches_the_worker_in_origin_form(self):
        # RFC 9112 3.2.2: a server must accept absolute-form, and its authority replaces Host.
        valve = self.start_backend_valve("-n", "1")
        with valve.raw() as conn:
            for target, origin, host in (
                    ("http://example.test:8080/echo?x=1", "/echo?x=1", "example.test:8080"),
                    ("HTTPS://Example.Test/echo", "/echo", "Example.Test"),
                    ("http://[::1]:9/echo?a=%20b", "/echo?a=%20b", "[::1]:9")):
                with self.subTest(target=target):
                    answer = conn.request("GET", target, host="other.test")
                    self.assertEqual(answer.status, 200, answer)
                    seen = answer.json()
                    self.assertEqual(seen["target"], origin)
                    headers = echo_headers(answer)
                    self.assertEqual(headers["host"], [host])
                    self.assertEqual(headers["x-forwarded-host"], [host])
        for bad in (b"GET ftp://example.test/echo HTTP/1.1\r\nHost: a\r\n\r\n",
                    b"GET http://user@example.test/echo HTTP/1.1\r\nHost: a\r\n\r\n",
                    b"GET http:///echo HTTP/1.1\r\nHost: a\r\n\r\n"):
            with self.subTest(bad=bad), valve.raw() as conn:
                conn.send(bad)
                self.assertValveError(conn.read_response(), 400)

    def test_chunk_extensions_with_whitespace_are_accepted(self):
        # RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
        valve = self.start_backend_valve("-n", "1")
        body = (b"3 ; a=b\r\nabc\r\n4;x = \"q y\"\t\r\ndefg\r\n2\t;\tz\r\nhi\r\n"
                b"0 ; end\r\nX-Trailer: t\r\n\r\n")
        with valve.raw() as conn:
            conn.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
            answer = conn.read_response()
        self.assertEqual(answer.status, 200, answer)
        self.assertEqual(answer.json()["body"], "abcdefghi")
        self.assertNotIn("x-trailer", echo_headers(answer))

    def test_unknown_method_gets_501_and_reaches_no_worker(self):
        # RFC 9110 9.1: a method is any token; one the server does not implement gets 501.
        valve = self.start_backend_valve("-n", "1")
        before = self.requests_seen(valve)
        baseline = self.requests_seen(valve) - before
        before = self.requests_seen(valve)
        for method in (b"FOO", b"get", b"M-SEARCH2", b"BREW"):
            with self.subTest(method=method), valve.raw() as conn:
                conn.send(method + b" /echo HTTP/1.1\r\nHost: a\r\n\r\n")
                answer = conn.read_response()
                self.assertValveError(answer, 501)
                self.assertIn(method.decode(), answer.json()["error"])
                self.assertEqual(answer.header("Connection"), "close")
        self.assertEqual(self.requests_seen(valve) - before, baseline, "a request reached the worker")

    def test_transfer_encoding_in_http_1_0_is_refused(self):
        # RFC 9112 6.1: faulty framing; the connection closes after the answer.
        valve = self.start_backend_valve("-n", "1")
        with valve.raw() as conn:
            conn.send(b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            self.assertValveError(conn.read_response(), 400)
            self.assertTrue(conn.wait_closed(5))
        with valve.raw() as conn:
            conn.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                      b"3\r\nabc\r\n0\r\n\r\n")
            self.assertValveError(conn.read_response(), 501)

    def test_underscore_headers_are_dropped_unless_allowed(self):
        # plumber reads X_User and X-User as one variable, HTTP_X_USER: nginx drops the first kind.
        headers = {"X-User": "alice", "X_User": "admin", "Under_Score": "1"}
        valve = self.start_backend_valve("-n", "1")
        seen = echo_headers(valve.get("/echo", headers=headers))
        self.assertEqual(seen["x-user"], ["alice"])
        self.assertNotIn("x_user", seen)
        self.assertNotIn("under_score", seen)
        allowed = self.start_backend_valve("-n", "1", "--underscores-in-headers")
        seen = echo_headers(allowed.get("/echo", headers=headers))
        self.assertEqual(seen["x_user"], ["admin"])
        self.assertEqual(seen["under_score"], ["1"])

    def test_a_bad_chunked_body_reaches_no_worker_not_even_its_head(self):
        valve = self.start_backend_valve("-n", "1")
        before = self.requests_seen(valve)
        baseline = self.requests_seen(valve) - before
        before = self.requests_seen(valve)
        with valve.raw() as conn:
            conn.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"3\r\nabc\r\nzz\r\n")
            self.assertValveError(conn.read_response(), 400)
        self.assertEqual(self.requests_seen(valve) - before, baseline, "a head reached the worker")

    def test_a_slow_small_upload_does_not_hold_the_only_worker(self):
        # A body up to --request-buffer-size is read whole before the request is queued: a client
        # that trickles (or stalls) holds no worker, and gets 408 once --header-timeout passes.
        valve = self.start_backend_valve("-n", "1", "--worker-concurrency", "1",
                                         "--header-timeout", "2")
        with valve.raw(timeout=10) as slow:
            slow.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            time.sleep(0.3)
            started = time.monotonic()
            self.assertEqual(valve.get("/hello", timeout=5).status, 200)
            self.assertLess(time.monotonic() - started, 1.5, "the stalled upload held the worker")
            self.assertValveError(slow.read_response(), 408)

    def test_expect_100_continue_gets_continue_then_the_answer(self):
        valve = self.start_backend_valve("-n", "1")
        for size in (5, 3 * MiB):  # buffered, and streamed past --request-buffer-size
            with self.subTest(size=size), valve.raw(timeout=20) as conn:
                conn.send(f"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n"
                          "Expect: 100-continue\r\n\r\n".encode())
                interim = conn.read_response(interim=True)
                self.assertEqual(interim.status, 100, interim)
                body = b"z" * size
                conn.send(body)
                answer = conn.read_response()
                self.assertEqual(answer.status, 200, answer)
                self.assertEqual(answer.json()["length"], size)


class ValveErrors(ValveTestCase):
    """valve's own answers to bad requests: status, JSON body, and nothing forwarded."""

    def send_raw(self, valve, data, timeout=10):
        with valve.raw(timeout=timeout) as conn:
            conn.send(data)
            return conn.read_response()

    def test_malformed_requests_get_400(self):
        valve = self.start_backend_valve("-n", "1")
        for data in (b"THIS IS NOT HTTP\r\n\r\n",
                     b"GET /hello HTTP/1.1\r\nHost: a\r\nBad Header Line\r\n\r\n",
                     b"GET /hello HTTP/1.1\r\nHost: a\r\nContent-Length: ten\r\n\r\n"):
            with self.subTest(data=data):
                self.assertValveError(self.send_raw(valve, data), 400)
        self.assertEqual(valve.get("/hello").status, 200, "valve survives bad requests")

    def test_slow_head_gets_408(self):
        valve = self.start_backend_valve("-n", "1", "--header-timeout", "0.5")
        with valve.raw(timeout=10) as conn:
            conn.send(b"GET /hello HTTP/1.1\r\nHost: a\r\n")  # and never the blank line
            started = time.monotonic()
            response = conn.read_response()
            waited = time.monotonic() - started
        self.assertValveError(response, 408)
        self.assertGreater(waited, 0.3)
        self.assertLess(waited, 5)

    def test_long_request_line_gets_414(self):
        valve = self.start_backend_valve("-n", "1")
        response = self.send_raw(valve, f"GET /hello?x={'a' * 20000} HTTP/1.1\r\n"
                                        "Host: a\r\n\r\n".encode())
        self.assertValveError(response, 414)

    def test_big_headers_get_431(self):
        valve = self.start_backend_valve("-n", "1")
        response = self.send_raw(valve, f"GET /hello HTTP/1.1\r\nHost: a\r\n"
                                        f"X-Big: {'a' * 20000}\r\n\r\n".encode())
        self.assertValveError(response, 431)

    def test_max_header_size_is_configurable(self):
        valve = self.start_backend_valve("-n", "1", "--max-header-size", "2k")
        small = valve.get("/echo", headers={"X-Big": "a" * 1000})
        self.assertEqual(small.status, 200, small)
        self.assertEqual(echo_headers(small)["x-big"], ["a" * 1000])
        self.assertValveError(valve.get("/echo", headers={"X-Big": "a" * 3000}), 431)

    def test_big_bodies_get_413(self):
        valve = self.start_backend_valve("-n", "1", "--max-body-size", "1k")
        exact = valve.post("/upload", b"z" * 1024)
        self.assertEqual(exact.status, 200, exact)
        self.assertEqual(exact.json()["length"], 1024)
        # Declared too big: answered from the head alone, without waiting for the body.
        with valve.raw() as conn:
            conn.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n")
            self.assertValveError(conn.read_response(), 413)
        # Chunked: found out while streaming, before the worker answered.
        with valve.raw() as conn:
            conn.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(3):
                conn.send(b"200\r\n" + b"y" * 512 + b"\r\n")
            self.assertValveError(conn.read_response(), 413)
        self.assertEqual(valve.get("/hello").status, 200)

    def test_content_length_with_transfer_encoding_is_refused_not_forwarded(self):
        valve = self.start_backend_valve("-n", "1")

        def requests_seen():
            return valve.get("/stats").json()["requests"]

        first = requests_seen()
        baseline = requests_seen() - first  # what one /stats adds (it counts itself)
        before = requests_seen()
        response = self.send_raw(valve, b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                                        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        self.assertValveError(response, 400)
        after = requests_seen()
        self.assertEqual(after - before, baseline, "the request reached the worker")

    def test_client_that_disconnects_keeps_its_worker_busy(self):
        # One worker, one request at a time: a new request must not reach the worker while the
        # abandoned one still runs there.
        valve = self.start_backend_valve("-n", "1", "--worker-concurrency", "1")
        first_pid = int(valve.get("/pid").body)
        conn = valve.raw()
        conn.send(b"GET /sleep?ms=1500 HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.3)
        conn.close()
        started = time.monotonic()
        response = valve.get("/pid", timeout=15)
        waited = time.monotonic() - started
        self.assertEqual(response.status, 200, response)
        if int(response.body) == first_pid:
            self.assertGreater(waited, 0.9, "the worker got a request while still busy")
        stats = valve.get("/stats").json()
        self.assertEqual(stats["max_in_flight"], 1, stats)

    def test_client_gone_mid_download_frees_its_worker_soon(self):
        # valve pauses reading from a worker while a slow client catches up; when that client goes
        # away, the rest of the answer is drained at once, not left until --timeout kills the worker.
        valve = self.start_backend_valve("-n", "1", "--timeout", "20")
        first_pid = int(valve.get("/pid").body)
        sock = socket.create_connection((valve.host, valve.port))
        sock.sendall(b"GET /bytes?n=200000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        sock.recv(65536)
        time.sleep(0.5)  # valve's buffers toward this client fill, and it stops reading the worker
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset
        started = time.monotonic()
        response = valve.get("/pid", timeout=30)
        waited = time.monotonic() - started
        self.assertEqual(response.status, 200, response)
        self.assertEqual(int(response.body), first_pid, "the worker was replaced, not drained")
        self.assertLess(waited, 8, "the worker stayed busy with an answer nobody reads")
        self.assertNotIn("gave no answer", valve.log())

    def test_a_get_answer_that_is_slow_to_finish_is_held_back_only_briefly(self):
        # valve holds a retryable GET's answer until it is complete (a worker that dies meanwhile
        # has sent the client nothing, so the request can be retried), but 0.1 s at most.
        valve = self.start_backend_valve("-n", "1")
        sock = socket.create_connection((valve.host, valve.port), timeout=10)
        with sock:
            started = time.monotonic()
            sock.sendall(b"GET /drip?ms=1500 HTTP/1.1\r\nHost: a\r\n\r\n")
            got, first_at = b"", None
            while not got.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(65536)
                self.assertTrue(chunk, f"the connection closed: {got!r}")
                got += chunk
                if first_at is None and b"first" in got:
                    first_at = time.monotonic() - started
            done_at = time.monotonic() - started
        self.assertTrue(got.startswith(b"HTTP/1.1 200"), got)
        self.assertNotIn(b"last", got[:got.index(b"first")], got)
        self.assertLess(first_at, 0.9, "the first part waited for the end of the answer")
        self.assertGreater(done_at, 1.4, "the backend's pause")
        self.assertIn(b"last", got)


if __name__ == "__main__":
    unittest.main(verbosity=2)
