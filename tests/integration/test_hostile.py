"""Hostile HTTP: a table of malformed or ambiguous requests (request-smuggling vectors among them).
Each gets valve's own JSON error with the right 4xx (or 505) and a closed connection, none reaches
the app as a request, and valve serves normally afterwards."""

import unittest

from harness import ValveTestCase

H = b"Host: a\r\n"
POST_CHUNKED = b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"

# (name, bytes, status). None reaches the worker, not even those whose head is fine but whose
# chunked body is not: valve reads such bodies whole before dispatch (see test_none_reaches_the_app).
VECTORS = [
    # Content-Length and Transfer-Encoding together, or ambiguous framing.
    ("CL then TE", b"POST /upload HTTP/1.1\r\n" + H +
     b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE then CL", b"POST /upload HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("two different CLs", b"POST /upload HTTP/1.1\r\n" + H +
     b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("two equal CLs", b"POST /upload HTTP/1.1\r\n" + H +
     b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    ("CL list", b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    ("negative CL", b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("CL with a sign", b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 400),
    ("hex CL", b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello", 400),
    ("CL overflow", b"POST /upload HTTP/1.1\r\n" + H +
     b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    ("CL not a number", b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: ten\r\n\r\n", 400),
    ("TE gzip", b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    ("TE chunked then identity", b"POST /upload HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    ("TE xchunked", b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n", 400),
    ("TE gzip, chunked (not implemented)", b"POST /upload HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("TE in HTTP/1.0", b"POST /upload HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("space before the colon", b"POST /upload HTTP/1.1\r\n" + H +
     b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE in an obs-fold", b"POST /upload HTTP/1.1\r\n" + H +
     b"X-Pad: 1\r\n Transfer-Encoding: chunked\r\n\r\n", 400),
    # Bad chunked bodies.
    ("chunk size not hex", POST_CHUNKED + b"ZZ\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size overflow", POST_CHUNKED + b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400),
    ("negative chunk size", POST_CHUNKED + b"-1\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk data without CRLF", POST_CHUNKED + b"5\r\nhelloXX0\r\n\r\n", 400),
    ("chunk size with a space", POST_CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n", 400),
    ("NUL in a chunk extension", POST_CHUNKED + b"5;a=\x00\r\nhello\r\n0\r\n\r\n", 400),
    # Line endings and bytes that must not appear.
    ("obs-fold", b"GET /hello HTTP/1.1\r\n" + H + b"X-A: 1\r\n continued\r\n\r\n", 400),
    ("bare LF", b"GET /hello HTTP/1.1\nHost: a\n\n", 400),
    ("bare CR", b"GET /hello HTTP/1.1\rHost: a\r\n\r\n", 400),
    ("NUL in a header value", b"GET /hello HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("NUL in the target", b"GET /he\x00llo HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("NUL in the method", b"G\x00ET /hello HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("space in a header name", b"GET /hello HTTP/1.1\r\n" + H + b"X A: 1\r\n\r\n", 400),
    ("empty header name", b"GET /hello HTTP/1.1\r\n" + H + b": 1\r\n\r\n", 400),
    ("header without a colon", b"GET /hello HTTP/1.1\r\n" + H + b"Bad Header Line\r\n\r\n", 400),
    ("control byte in a header value", b"GET /hello HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n",
     400),
    ("not HTTP at all", b"THIS IS NOT HTTP\r\n\r\n", 400),
    # Sizes.
    ("oversized request line", b"GET /hello?" + b"a" * 20000 + b" HTTP/1.1\r\n" + H + b"\r\n",
     414),
    ("oversized header", b"GET /hello HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n",
     431),
    ("too many headers", b"GET /hello HTTP/1.1\r\n" + H +
     b"".join(b"X-%d: 1234567890\r\n" % i for i in range(2000)) + b"\r\n", 431),
    # Methods and versions.
    ("invalid method token", b"G@T /hello HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("lower-case method (a valid token valve does not implement)",
     b"get /hello HTTP/1.1\r\n" + H + b"\r\n", 501),
    ("unknown method", b"FOO /hello HTTP/1.1\r\n" + H + b"\r\n", 501),
    ("HTTP/2.0", b"GET /hello HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("HTTP/1.2", b"GET /hello HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("lower-case version", b"GET /hello http/1.1\r\n" + H + b"\r\n", 400),
    ("space after the version", b"GET /hello HTTP/1.1 \r\n" + H + b"\r\n", 400),
    ("no version (HTTP/0.9)", b"GET /hello\r\n" + H + b"\r\n", 505),
    ("no version (HTTP/0.9), the line alone", b"GET /hello\r\n", 505),
    # Targets and hosts.
    ("absolute-form target of another scheme", b"GET ftp://evil.example/hello HTTP/1.1\r\n" + H +
     b"\r\n", 400),
    ("absolute-form target with userinfo", b"GET http://u@evil.example/hello HTTP/1.1\r\n" + H +
     b"\r\n", 400),
    ("fragment in the target", b"GET /hello#top HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("Host with a path", b"GET /hello HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    ("Host with userinfo", b"GET /hello HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
    ("asterisk target for GET", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("authority-form without CONNECT", b"GET evil.example:443 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("CONNECT", b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", 405),
    ("no Host in HTTP/1.1", b"GET /hello HTTP/1.1\r\n\r\n", 400),
    ("two Host headers", b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
]


class Hostile(ValveTestCase):
    def stats(self, valve):
        return valve.get("/stats").json()

    def test_each_vector_gets_its_error_and_a_closed_connection(self):
        self.assertGreaterEqual(len(VECTORS), 40)
        valve = self.start_backend_valve("-n", "1")
        for name, data, status in VECTORS:
            with self.subTest(vector=name):
                with valve.raw(timeout=10) as conn:
                    conn.send(data)
                    response = conn.read_response()
                    self.assertValveError(response, status)
                    self.assertEqual(response.header("Connection"), "close", response)
                    self.assertTrue(conn.wait_closed(5), "the connection stays open")
        self.assertEqual(valve.get("/hello").status, 200, "valve serves on")

    def test_none_reaches_the_app(self):
        valve = self.start_backend_valve("-n", "1")
        before = self.stats(valve)
        for name, data, status in VECTORS:
            with valve.raw(timeout=10) as conn:
                conn.send(data)
                conn.read_response()
        after = self.stats(valve)
        # The backend counts every head it reads (its /stats included) and every whole request.
        self.assertEqual(after["completed"], before["completed"], "a whole request reached the app")
        self.assertEqual(after["requests"] - before["requests"], 1, "a head reached the app")


if __name__ == "__main__":
    unittest.main()
