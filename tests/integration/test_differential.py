"""A differential test: the same requests to plumber directly and through valve, in three setups
(plain workers, --preload workers, and the app behind a stripped path prefix in a config file),
from four clients (raw sockets, curl, Python's requests, R's httr2). Every client's view through
valve must equal its view of plumber, but for what valve documents that it changes:

- in the answer: hop-by-hop headers (and those Connection names), X-Request-Id when the app set
  none, Valve-App with a config file's [apps], valve's own framing; Date may differ by a moment;
  422 from valve's request check for a parameter not of its declared type (/items/abc);
  a HEAD answer has no body (plumber sends one anyway);
- in what the app sees (tests/apps/differential's /echo): hop-by-hop headers and Expect removed,
  X-Request-Id and X-Forwarded-* added, underscore headers dropped, the prefix stripped.

Afterwards, every worker that served at the start still serves, with the same PID: no request
made valve replace a worker.
"""

import base64
import concurrent.futures
import dataclasses
import email.utils
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

import requests

from harness import LOOPBACK, RawConnection, ValveTestCase, app_path, free_port, parallel, \
    wait_until

APP_DIR = app_path("differential")
APP_FILE = os.path.join(APP_DIR, "plumber.R")
HTTR2_BATCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "httr2_batch.R")
HOST = "diff.test"
PREFIX = "/diff"  # setup (c): the app's route, stripped before the app sees the path
BIG = 100 * 1024 * 1024
DATE_SLACK = 3.0  # seconds two Date headers may differ by
# ... for the 100 MB answers, which four R workers make at once on two cores, each taking seconds
# to build its body before its head (and Date) goes out: under a loaded CI they start far apart.
DATE_SLACK_LARGE = 30.0

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
              "upgrade", "proxy-authenticate", "proxy-authorization"}
# What /echo reports that valve documents changing on the way in (besides hop-by-hop headers).
ECHO_ADDED = {"HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
              "HTTP_X_FORWARDED_PREFIX", "HTTP_EXPECT"}


# ---- what is sent ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Kind:
    """One kind of request. `target` is what plumber is sent; through valve it is the same, under
    the prefix in setup (c), unless valve_target says otherwise (an absolute-form target)."""
    name: str
    method: str
    target: str
    headers: list = dataclasses.field(default_factory=list)
    body: bytes = b""
    chunks: list = None  # a chunked upload: the chunk lines' bytes as sent (extensions and all)
    expect: bool = False  # Expect: 100-continue, the body sent after the interim answer
    valve_target: str = None  # "{prefix}" is replaced by the setup's prefix
    reference_headers: list = None  # what plumber is sent instead of headers (see underscores)
    prefixable: bool = True  # can be sent under setup (c)'s prefix
    refused: bool = False  # malformed: plumber closes without answer, valve answers 400 and closes
    raw_only: bool = False  # only a raw socket can send it
    # A parameter not of its declared type: plumber answers it its way (404 for a typed path),
    # valve with 422 before the app sees it (--check-requests, docs/operations.md#typed-requests).
    ill_typed: bool = False

    @property
    def echo(self):
        path = self.target.split("?")[0]
        return path == "/echo" or path.startswith("/echo/")

    def head(self, target, headers):
        names = {name.lower() for name, _ in headers}
        extra = []
        if self.chunks is not None:
            extra.append(("Transfer-Encoding", "chunked"))
        elif self.body and "content-length" not in names:
            extra.append(("Content-Length", str(len(self.body))))
        if self.expect:
            extra.append(("Expect", "100-continue"))
        lines = [f"{self.method} {target} HTTP/1.1"]
        if "host" not in names:
            lines.append(f"Host: {HOST}")
        lines += [f"{name}: {value}" for name, value in list(headers) + extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def payload(self):
        if self.chunks is None:
            return self.body
        return b"".join(self.chunks)

    def describe(self):
        head = self.head(self.target, self.headers).decode("utf-8", "replace")
        body = self.payload()
        shown = body[:200] + (b"..." if len(body) > 200 else b"")
        return f"[{self.name}] {head!r}" + (f" + body {shown!r} ({len(body)} B)" if body else "")


@dataclasses.dataclass
class Target:
    name: str
    host: str
    port: int
    prefix: str = ""
    valve: object = None  # the harness's Valve, None for plumber itself
    app: str = None  # the Valve-App header expected

    def target_for(self, kind):
        if self.valve is None:
            return kind.target
        if kind.valve_target is not None:
            return kind.valve_target.replace("{prefix}", self.prefix)
        return self.prefix + kind.target

    def headers_for(self, kind):
        if self.valve is None and kind.reference_headers is not None:
            return kind.reference_headers
        return kind.headers

    def url(self, kind):
        return f"http://{self.host}:{self.port}{self.target_for(kind)}"


@dataclasses.dataclass
class Answer:
    status: int
    reason: str
    headers: list  # [(name, value)] as the client saw them
    body: bytes
    interim: list = dataclasses.field(default_factory=list)  # statuses of 1xx answers
    error: str = None

    def summary(self):
        if self.error:
            return f"error: {self.error}"
        lines = [f"{self.status} {self.reason}"] + [f"{n}: {v}" for n, v in self.headers]
        body = self.body[:300] + (b"..." if len(self.body) > 300 else b"")
        return "\n    ".join(lines) + f"\n    body ({len(self.body)} B): {body!r}"


# ---- the request kinds ----------------------------------------------------------------------------

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
ROUTES = ["/echo", "/echo/plain", "/bytes?n=10", "/items/7", "/items/7/tags/red", "/status/200",
          "/redirect/302", "/cookies", "/headers", "/hop", "/error", "/warning", "/unavailable",
          "/ser/json", "/ser/unboxed", "/ser/html", "/ser/text", "/ser/cat", "/ser/print",
          "/ser/format", "/ser/rds", "/ser/octet", "/ser/csv", "/ser/custom",
          "/ser/png", "/ser/null", "/ser/broken", "/static/hello.txt", "/static/",
          "/static/sub/style.css", "/nope"]
# 1xx are left out: plumber (httpuv) writes the 1xx head as if it were the answer and then nothing
# more, so a client takes it for an interim answer and waits for ever, directly or not.
STATUSES = [200, 201, 202, 203, 204, 205, 206, 207, 226, 299, 300, 301, 302, 303, 304, 305, 307,
            308, 399, 400, 401, 402, 403, 404, 405, 406, 409, 410, 413, 418, 422, 429, 451, 499,
            500, 501, 502, 503, 504, 505, 511, 599]
EVERY_CLIENT_EVERY_METHOD = {"/echo", "/headers", "/static/hello.txt"}
EVERY_CLIENT_STATUSES = {201, 204, 206, 304, 404, 418, 503, 599}
MULTIPART = (b"--XyZzY\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue one\r\n"
             b"--XyZzY\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
             b"Content-Type: text/plain\r\n\r\nfile \xc3\xa9 contents\r\n--XyZzY--\r\n")
PATTERN = bytes(range(256))


def pattern(n):
    return (PATTERN * (n // 256 + 1))[:n]


def request_kinds():
    kinds = []
    # Every method on every route from a raw socket; the real clients, whose runs cost more (a
    # process each for curl), get GET everywhere and every method on a few.
    for route in ROUTES:
        for method in METHODS:
            everyone = method == "GET" or route in EVERY_CLIENT_EVERY_METHOD
            kinds.append(Kind(f"{method} {route}", method, route, raw_only=not everyone))
    for code in STATUSES:
        kinds.append(Kind(f"status {code}", "GET", f"/status/{code}",
                          raw_only=code not in EVERY_CLIENT_STATUSES))
    kinds.append(Kind("POST status 201", "POST", "/status/201", [("Content-Type", "text/plain")],
                      b"made"))
    for code in (301, 302, 303, 307, 308):
        kinds.append(Kind(f"redirect {code}", "GET", f"/redirect/{code}?to=/items/{code}"))
        kinds.append(Kind(f"POST redirect {code}", "POST", f"/redirect/{code}?to=https%3A%2F%2F"
                          f"elsewhere.test%2Fa%3Fb%3D1", [("Content-Type", "text/plain")], b"x",
                          raw_only=code != 307))
    kinds += [
        # Queries and paths: UTF-8, percent-encoding, repeated and empty parameters.
        Kind("query utf-8 raw", "GET", "/echo?name=caf\u00e9&emoji=\U0001F600", raw_only=True,
             refused=True),
        Kind("query percent-encoded", "GET", "/echo?name=caf%C3%A9&sp=a%20b+c&amp=%26%3D"),
        Kind("query repeated and empty", "GET", "/echo?a=1&a=2&empty=&flag&=novalue"),
        Kind("query reserved characters", "GET", "/echo?q=%2F%3F%23%5B%5D%40!$'()*,;"),
        Kind("path percent-encoded", "GET", "/echo/caf%C3%A9%20cr%C3%A8me"),
        Kind("path utf-8 raw", "GET", "/echo/caf\u00e9", raw_only=True, refused=True),
        Kind("path encoded slash", "GET", "/echo/a%2Fb"),
        Kind("path dot segments", "GET", "/static/sub/../hello.txt", raw_only=True),
        Kind("path double slash", "GET", "//echo", raw_only=True),
        Kind("path parameter", "GET", "/items/42"),
        Kind("path parameter negative", "GET", "/items/-3"),
        Kind("path parameter not an int", "GET", "/items/abc", ill_typed=True),
        Kind("path parameters two", "GET", "/items/1/tags/caf%C3%A9"),
        Kind("static encoded name", "GET", "/static/hell%6F.txt"),
        Kind("static missing", "GET", "/static/missing.txt"),
        Kind("static directory traversal", "GET", "/static/../plumber.R", raw_only=True),
        Kind("static binary", "GET", "/static/z.bin"),
        Kind("static utf-8 content", "GET", "/static/utf8.txt"),
        Kind("static json", "GET", "/static/data.json"),
        # Bodies.
        Kind("json body", "POST", "/echo", [("Content-Type", "application/json")],
             json.dumps({"a": [1, 2.5, None], "s": "caf\u00e9"}, ensure_ascii=False).encode()),
        Kind("json body invalid", "POST", "/echo", [("Content-Type", "application/json")],
             b"{not json"),
        Kind("form body", "POST", "/echo", [("Content-Type", "application/x-www-form-urlencoded")],
             b"a=1&b=caf%C3%A9&b=two&c=a+b"),
        Kind("multipart body", "POST", "/echo", [("Content-Type",
                                                 "multipart/form-data; boundary=XyZzY")], MULTIPART),
        Kind("text body PUT", "PUT", "/echo", [("Content-Type", "text/plain; charset=UTF-8")],
             "\u00fcber".encode()),
        Kind("octet body PATCH", "PATCH", "/echo", [("Content-Type", "application/octet-stream")],
             PATTERN),
        Kind("body on DELETE", "DELETE", "/echo", [("Content-Type", "text/plain")], b"gone"),
        Kind("empty body with length", "POST", "/echo", [("Content-Length", "0")]),
        Kind("body without a type", "POST", "/echo", [], b"a=b"),
        Kind("body on GET", "GET", "/echo", [("Content-Type", "text/plain")], b"get body"),
        Kind("error with a body", "POST", "/error", [("Content-Type", "application/json")],
             b"[1]"),
    ]
    for size in (0, 1, 65535, 65536, 65537, 1 << 20, 4 << 20):
        kinds.append(Kind(f"download {size} B", "GET", f"/bytes?n={size}"))
    for size in (1, 65536, 1 << 20, 4 << 20):
        kinds.append(Kind(f"upload {size} B", "POST", "/echo",
                          [("Content-Type", "application/octet-stream")], pattern(size)))
    kinds += [
        # Expect: 100-continue (valve answers the interim itself and drops the header).
        Kind("expect 100-continue", "POST", "/echo", [("Content-Type", "text/plain")],
             b"after the interim answer", expect=True),
        Kind("expect 100-continue 1 MB", "PUT", "/echo",
             [("Content-Type", "application/octet-stream")], pattern(1 << 20), expect=True),
        # Chunked uploads: extensions (with spaces around ';') and trailers never reach the app.
        Kind("chunked upload", "POST", "/echo", [("Content-Type", "text/plain")],
             chunks=[b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"]),
        Kind("chunked with extensions", "POST", "/echo", [("Content-Type", "text/plain")],
             chunks=[b"5;name=value\r\nhello\r\n", b"3 ; x = \"y\"\r\nabc\r\n",
                     b"0;last\r\n\r\n"], raw_only=True),
        Kind("chunked with a trailer", "POST", "/echo", [("Content-Type", "text/plain")],
             chunks=[b"4\r\nbody\r\n", b"0\r\nX-Trailer: t\r\n\r\n"], raw_only=True),
        Kind("chunked 1 MB", "POST", "/echo", [("Content-Type", "application/octet-stream")],
             chunks=[b"%x\r\n" % (64 << 10) + pattern(64 << 10) + b"\r\n"] * 16 + [b"0\r\n\r\n"]),
        # Request headers: underscores, hop-by-hop, repeated, empty, and the client's own id.
        Kind("underscore beside dash", "GET", "/echo", [("X-User", "dash"), ("X_User", "under")],
             reference_headers=[("X-User", "dash")]),
        Kind("underscore alone", "GET", "/echo", [("X_Only", "under"), ("X-Other", "kept")],
             reference_headers=[("X-Other", "kept")]),
        Kind("hop-by-hop request headers", "GET", "/echo",
             [("Connection", "keep-alive, X-Private"), ("X-Private", "secret"),
              ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("X-Public", "kept")]),
        Kind("repeated request header", "GET", "/echo", [("X-Many", "1"), ("X-Many", "2")],
             raw_only=True),
        Kind("empty request header", "GET", "/echo", [("X-Empty", "")], raw_only=True),
        Kind("client's request id", "GET", "/echo", [("X-Request-Id", "diff-request-1")]),
        Kind("client's request id on an error", "GET", "/error",
             [("X-Request-Id", "diff-request-2")]),
        Kind("filter answers", "GET", "/echo", [("X-Block", "yes")]),
        Kind("filter answers on a static file", "GET", "/static/hello.txt", [("X-Block", "yes")]),
        Kind("long header value", "GET", "/echo", [("X-Long", "v" * 6000)]),
        Kind("utf-8 header value", "GET", "/echo", [("X-Utf8", "caf\u00e9")], raw_only=True),
        # httpuv gzips when asked: a body of unknown length, chunked.
        Kind("gzip json", "GET", "/ser/json", [("Accept-Encoding", "gzip")]),
        Kind("gzip headers", "GET", "/headers", [("Accept-Encoding", "gzip")]),
        Kind("gzip 1 MB", "GET", f"/bytes?n={1 << 20}", [("Accept-Encoding", "gzip, deflate")]),
        Kind("gzip HEAD", "HEAD", "/cookies", [("Accept-Encoding", "gzip")]),
        Kind("gzip static", "GET", "/static/hello.txt", [("Accept-Encoding", "gzip")]),
        # Absolute-form targets: the app gets origin-form, and Host from the target.
        Kind("absolute-form", "GET", "/echo?a=1", [("Host", "diff.test:8080")],
             valve_target="http://diff.test:8080{prefix}/echo?a=1",
             reference_headers=[("Host", "diff.test:8080")], raw_only=True),
        Kind("absolute-form replaces Host", "POST", "/echo", [("Host", "other.test"),
                                                             ("Content-Type", "text/plain")],
             b"abs", valve_target="http://diff.test{prefix}/echo",
             reference_headers=[("Host", "diff.test"), ("Content-Type", "text/plain")],
             raw_only=True),
        Kind("OPTIONS *", "OPTIONS", "*", prefixable=False, raw_only=True),
        Kind("absolute-form OPTIONS, empty path", "OPTIONS", "*", [("Host", "diff.test")],
             valve_target="http://diff.test", prefixable=False, raw_only=True),
        Kind("absolute-form GET, empty path", "GET", "/", [("Host", "diff.test")],
             valve_target="http://diff.test", prefixable=False, raw_only=True),
    ]
    return kinds


# Requests on one connection: kept alive one after the other, and pipelined in one write.
SEQUENCE = ["GET /echo", "POST status 201", "GET /nope", "GET /cookies", "POST /headers",
            "download 65537 B", "GET /error", "chunked upload", "GET /redirect/302",
            "json body", "status 204", "GET /static/hello.txt", "status 304", "GET /unavailable",
            "GET /headers", "upload 65536 B", "gzip json"]
# The same through valve with HEAD answers between them (plumber's stray HEAD bodies would break
# the connection, so plumber's answers come from a connection each).
SEQUENCE_WITH_HEAD = ["GET /echo", "HEAD /headers", "GET /cookies", "HEAD /echo", "HEAD /nope",
                      "status 204", "HEAD /static/hello.txt", "POST status 201", "gzip HEAD",
                      "GET /ser/json"]


# ---- the clients ----------------------------------------------------------------------------------

def read_head(conn):
    """A response head on a RawConnection: (status, reason, headers)."""
    line = conn._readline().decode("latin-1")
    version, status, reason = (line.split(" ", 2) + [""])[:3]
    if not version.startswith("HTTP/"):
        raise AssertionError(f"bad status line {line!r}")
    headers = []
    while True:
        line = conn._readline().decode("utf-8", "replace")
        if not line:
            return int(status), reason, headers
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))


def raw_send(conn, kind, target):
    """Sends one request; with Expect, waits for the interim answer before the body."""
    head = kind.head(target.target_for(kind), target.headers_for(kind))
    interim = []
    if kind.expect:
        conn.send(head)
        status, _, _ = read_head(conn)
        interim.append(status)
        conn.send(kind.payload())
    else:
        conn.send(head + kind.payload())
    return interim


def raw_exchange(target, kind, timeout=30.0):
    """One request on a connection of its own, as exact bytes; the connection is closed after,
    so that plumber's stray HEAD body goes nowhere."""
    try:
        with RawConnection(target.host, target.port, timeout) as conn:
            interim = raw_send(conn, kind, target)
            response = conn.read_response(kind.method)
            return Answer(response.status, response.reason, response.headers, response.body,
                          interim)
    except Exception as exc:  # noqa: BLE001 - an error is an answer to compare too
        return Answer(0, "", [], b"", error=repr(exc))


def curl_exchange(target, kind, tmpdir, timeout=30.0):
    fd, head_file = tempfile.mkstemp(dir=tmpdir)
    os.close(fd)
    body_file = head_file + ".body"
    argv = ["curl", "-sS", "--http1.1", "--globoff", "--path-as-is", "--max-time", str(timeout),
            "-D", head_file, "-o", body_file, "-H", f"Host: {HOST}"]
    argv += ["-I"] if kind.method == "HEAD" else ["-X", kind.method]
    for name, value in target.headers_for(kind):
        argv += ["-H", f"{name}: {value}" if value else f"{name};"]
    if kind.expect:
        argv += ["-H", "Expect: 100-continue"]
    else:
        argv += ["-H", "Expect:"]  # curl's own for large bodies: only where the kind says
    payload = kind.body if kind.chunks is None else dechunk(kind.chunks)
    if kind.chunks is not None:
        argv += ["-H", "Transfer-Encoding: chunked"]
    if payload or kind.chunks is not None:
        with open(body_file + ".in", "wb") as f:
            f.write(payload)
        argv += ["--data-binary", "@" + body_file + ".in"]
    argv.append(target.url(kind))
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout + 10)
        if done.returncode != 0:
            return Answer(0, "", [], b"", error=f"curl exit {done.returncode}: "
                                                f"{done.stderr.decode(errors='replace')}")
        with open(head_file, "rb") as f:
            blocks = [b for b in f.read().split(b"\r\n\r\n") if b.strip()]
        body = b""
        if kind.method != "HEAD" and os.path.exists(body_file):  # -I puts the head there too
            with open(body_file, "rb") as f:
                body = f.read()
        interim, final = [], None
        for block in blocks:
            lines = block.decode("utf-8", "replace").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            reason = (lines[0].split(" ", 2) + [""])[2]
            headers = [(n.strip(), v.strip()) for n, _, v in (ln.partition(":") for ln in lines[1:])]
            if 100 <= status < 200:
                interim.append(status)
            else:
                final = Answer(status, reason, headers, body, interim)
        return final or Answer(0, "", [], body, interim, error="curl saw no final answer")
    finally:
        for path in (head_file, body_file, body_file + ".in"):
            if os.path.exists(path):
                os.unlink(path)


def dechunk(chunks):
    """The body a chunked kind carries, for clients that do their own chunking."""
    data, out = b"".join(chunks), b""
    while True:
        line, _, data = data.partition(b"\r\n")
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2:]


def requests_exchange(target, kind, timeout=30.0):
    headers = {"Host": HOST}
    headers.update(dict(target.headers_for(kind)))
    if kind.expect:
        headers["Expect"] = "100-continue"
    data = kind.body or None
    if kind.chunks is not None:
        payload = dechunk(kind.chunks)
        data = iter([payload[i:i + 65536] for i in range(0, len(payload), 65536)] or [b""])
    try:
        with requests.Session() as session:
            r = session.request(kind.method, target.url(kind), headers=headers, data=data,
                                allow_redirects=False, timeout=timeout)
            return Answer(r.status_code, r.reason, list(r.headers.items()), r.content)
    except Exception as exc:  # noqa: BLE001 - an error is an answer to compare too
        return Answer(0, "", [], b"", error=repr(exc))


def httr2_batch(jobs, tmpdir, timeout=120.0):
    """[(target, kind)] through one Rscript process: a list of Answers in the same order."""
    specs = []
    for i, (target, kind) in enumerate(jobs):
        headers = [["Host", HOST]] + [[n, v] for n, v in target.headers_for(kind)]
        if kind.expect:
            headers.append(["Expect", "100-continue"])
        else:
            headers.append(["Expect", ""])  # libcurl's own, for large bodies: only where asked
        body = kind.body if kind.chunks is None else dechunk(kind.chunks)
        if kind.chunks is not None:
            headers.append(["Transfer-Encoding", "chunked"])
        specs.append({"id": i, "url": target.url(kind), "method": kind.method, "headers": headers,
                      "body": base64.b64encode(body).decode() if body or kind.chunks else None})
    requests_file = os.path.join(tmpdir, "httr2-requests.json")
    results_file = os.path.join(tmpdir, "httr2-results.json")
    with open(requests_file, "w") as f:
        json.dump(specs, f)
    done = subprocess.run(["Rscript", HTTR2_BATCH, requests_file, results_file],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"httr2 batch failed ({done.returncode}): "
                             f"{done.stderr.decode(errors='replace')[-3000:]}")
    with open(results_file) as f:
        results = json.load(f)
    answers = []
    for result in results:
        if "error" in result:
            answers.append(Answer(0, "", [], b"", error=result["error"]))
        else:
            answers.append(Answer(result["status"], None, [tuple(h) for h in result["headers"]],
                                  base64.b64decode(result["body"])))
    return answers


# ---- comparing ------------------------------------------------------------------------------------

def header_tokens(headers, name):
    return {token.strip().lower() for n, v in headers if n.lower() == name for token in v.split(",")
            if token.strip()}


def comparable_headers(answer, reference, target, kind):
    """The answer's headers but those valve documents changing, Date's value replaced by a marker
    once it is checked, and Content-Length left out for /echo (what the app saw differs)."""
    dropped = HOP_BY_HOP | header_tokens(answer.headers, "connection")
    reference_names = {n.lower() for n, _ in reference.headers}
    out = []
    for name, value in answer.headers:
        lname = name.lower()
        if lname in dropped:
            continue
        if target.valve is not None and lname == "valve-app":
            continue
        if target.valve is not None and lname == "x-request-id" and \
                "x-request-id" not in reference_names:
            continue
        if kind.echo and lname == "content-length":
            continue
        if lname == "date":
            value = "<date>"
        out.append((lname, value))
    return out


def parse_date(answer):
    for name, value in answer.headers:
        if name.lower() == "date":
            try:
                return email.utils.parsedate_to_datetime(value).timestamp()
            except (TypeError, ValueError):
                return value
    return None


def decoded(answer):
    if any(n.lower() == "content-encoding" and "gzip" in v for n, v in answer.headers):
        try:
            return gzip.decompress(answer.body)
        except OSError:
            return answer.body
    return answer.body


def echo_view(answer, kind, target):
    """What /echo says the app saw, without what valve documents changing on the way in."""
    try:
        seen = json.loads(decoded(answer))
    except ValueError:
        return None
    if not isinstance(seen, dict) or "headers" not in seen:
        return seen
    sent = target.headers_for(kind)
    named = header_tokens(sent, "connection")
    dropped = {"HTTP_" + h.upper().replace("-", "_") for h in HOP_BY_HOP | named} | ECHO_ADDED
    if not any(n.lower() == "x-request-id" for n, _ in sent):
        dropped.add("HTTP_X_REQUEST_ID")
    seen["headers"] = {k: v for k, v in seen["headers"].items() if k not in dropped}
    return seen


def valve_echo_problems(answer, kind, target):
    """What valve documents adding to the request, checked in /echo's report."""
    try:
        headers = json.loads(decoded(answer)).get("headers", {})
    except (ValueError, AttributeError):
        return []
    problems = []
    host = dict((n.lower(), v) for n, v in target.headers_for(kind)).get("host", HOST)
    if kind.valve_target:
        host = target.target_for(kind).split("/")[2]
    expected = {"HTTP_X_FORWARDED_FOR": LOOPBACK, "HTTP_X_FORWARDED_PROTO": "http",
                "HTTP_X_FORWARDED_HOST": host}
    if target.prefix:
        expected["HTTP_X_FORWARDED_PREFIX"] = target.prefix
    for name, value in expected.items():
        if headers.get(name) != value:
            problems.append(f"the app saw {name}={headers.get(name)!r}, expected {value!r}")
    if not headers.get("HTTP_X_REQUEST_ID"):
        problems.append("the app saw no X-Request-Id")
    if "HTTP_EXPECT" in headers:
        problems.append("Expect reached the app")
    return problems


def differences(reference, answer, target, kind, client):
    """Why `answer` (through valve) is not `reference` (plumber's), as a list of sentences."""
    if kind.refused:
        problems = []
        if not (reference.error or reference.status == 400):
            problems.append("plumber took the request")
        if answer.status != 400 or \
                header_tokens(answer.headers, "connection") != {"close"}:
            problems.append("valve did not answer 400 and close")
        return problems
    if kind.ill_typed and not (reference.error or answer.error):
        return [] if answer.status == 422 else [f"status {answer.status}, not valve's 422"]
    if reference.error or answer.error:
        if reference.error and answer.error:
            return []  # both failed alike (say, a request the client cannot make)
        return [f"plumber: {reference.error or 'answered'}; valve: {answer.error or 'answered'}"]
    problems = []
    if answer.status != reference.status:
        problems.append(f"status {answer.status}, plumber's {reference.status}")
    if client in ("raw", "curl", "requests") and answer.reason != reference.reason:
        problems.append(f"reason {answer.reason!r}, plumber's {reference.reason!r}")
    if kind.expect and client in ("raw", "curl") and answer.interim != [100]:
        problems.append(f"interim answers {answer.interim}, expected [100]")
    ours = comparable_headers(answer, reference, target, kind)
    theirs = comparable_headers(reference, reference, Target("plumber", "", 0), kind)
    if ours != theirs:
        problems.append("headers differ:\n      plumber: " + repr(theirs) +
                        "\n      valve:   " + repr(ours))
    ref_date, date = parse_date(reference), parse_date(answer)
    slack = DATE_SLACK_LARGE if kind.name.endswith("100 MB") else DATE_SLACK
    if isinstance(ref_date, float) and isinstance(date, float) and \
            abs(ref_date - date) > slack:
        problems.append(f"Date differs by {abs(ref_date - date):.1f} s")
    if target.valve is not None:
        if client != "requests" and "x-request-id" not in {n.lower() for n, _ in answer.headers}:
            problems.append("no X-Request-Id in valve's answer")
        apps = [v for n, v in answer.headers if n.lower() == "valve-app"]
        if apps != ([target.app] if target.app else []):
            problems.append(f"Valve-App {apps}, expected {target.app}")
    if kind.method == "HEAD":
        if answer.body:
            problems.append(f"a HEAD answer with a body of {len(answer.body)} B")
    elif kind.echo and reference.status == 200 and \
            any(n.lower() == "x-echo" for n, _ in reference.headers):
        mine, plumbers = echo_view(answer, kind, target), echo_view(reference, kind, target)
        if mine != plumbers:
            problems.append(f"the app saw otherwise:\n      plumber: {plumbers}\n"
                            f"      valve:   {mine}")
        if target.valve is not None:
            problems += valve_echo_problems(answer, kind, target)
    elif answer.body != reference.body:
        problems.append(f"bodies differ: {len(reference.body)} B from plumber, "
                        f"{len(answer.body)} B through valve (first difference at byte "
                        f"{first_difference(reference.body, answer.body)})")
    return problems


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


# ---- the test -------------------------------------------------------------------------------------

class Differential(ValveTestCase):
    maxDiff = None

    def setUp(self):
        super().setUp()
        self.mismatches = []  # (client, setup, kind, reference, answer, problems)
        self.timings = []

    def log(self, message):
        sys.stderr.write(f"[differential] {message}\n")

    def timed(self, label, fn, *args):
        started = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.timings.append((label, time.monotonic() - started))
            self.log(f"{label}: {time.monotonic() - started:.1f} s")

    # -- start-up: plumber and the three valves at once
    def start_plumber(self):
        port = free_port()
        serve = (f"plumber::pr_run(plumber::pr({APP_FILE!r}), host = {LOOPBACK!r}, "
                 f"port = {port}L, docs = FALSE, quiet = TRUE)")
        log = open(os.path.join(self.tmpdir, "plumber.log"), "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen(["Rscript", "-e", serve], cwd=APP_DIR, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
        self.track_process(proc)
        return proc, port

    def wait_plumber(self, proc, port):
        def answers():
            if proc.poll() is not None:
                with open(os.path.join(self.tmpdir, "plumber.log"), "rb") as f:
                    raise AssertionError(f"plumber exited: {f.read().decode(errors='replace')}")
            try:
                with RawConnection(LOOPBACK, port, 5) as conn:
                    return conn.request("GET", "/items/1", host=HOST).status == 200
            except OSError:
                return False
        wait_until(answers, 60, interval=0.1, message="plumber answering")

    def start_setups(self):
        config = os.path.join(self.tmpdir, "valve.toml")
        with open(config, "w") as f:
            f.write(f'n-max = 2\nn-min = 2\ntimeout = 30\n\n[apps.diff]\nfile = "{APP_FILE}"\n'
                    f'prefix = "{PREFIX}"\nstrip-prefix = true\n')
        common = ["--admin", "127.0.0.1:0"]
        plain = ["-f", APP_FILE, "-n", "2", "--n-min", "2", "--timeout", "30"]
        proc, port = self.start_plumber()
        valves = [
            ("plain", self.start_valve(*plain, *common, listen=False), "", None),
            ("preload", self.start_valve(*plain, "--preload", *common, listen=False), "", None),
            ("prefix", self.start_valve("--config", config, *common, listen=False), PREFIX,
             "diff"),
        ]

        def ready(valve, prefix):
            valve.wait_listening()
            valve.wait_ready(prefix + "/items/1", timeout=60)
            wait_until(lambda: [w["state"] for w in valve.status()["workers"]] == ["ready"] * 2,
                       60, message="two ready workers")
        waits = [lambda: self.wait_plumber(proc, port)]
        waits += [lambda v=v, p=p: ready(v, p) for _, v, p, _ in valves]
        for outcome in self.timed("start-up", lambda: parallel(waits, 120)):
            if isinstance(outcome, Exception):
                raise outcome
        plumber = Target("plumber", LOOPBACK, port)
        setups = [Target(name, valve.host, valve.port, prefix, valve, app)
                  for name, valve, prefix, app in valves]
        return plumber, setups

    # -- running request kinds
    def compare(self, client, plumber, setups, kinds, exchange):
        """Each kind to plumber and to every setup at once (so Dates agree); records mismatches."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=1 + len(setups)) as pool:
            for kind in kinds:
                targets = [plumber] + [s for s in setups if kind.prefixable or not s.prefix]
                answers = list(pool.map(lambda t, k=kind: exchange(t, k), targets))
                self.record(client, kind, targets, answers)

    def record(self, client, kind, targets, answers):
        reference = answers[0]
        if reference.error and client == "raw" and not kind.refused:
            self.mismatches.append((client, "plumber", kind, reference, reference,
                                    ["plumber itself gave no answer"]))
        for target, answer in zip(targets[1:], answers[1:]):
            problems = differences(reference, answer, target, kind, client)
            if problems:
                self.mismatches.append((client, target.name, kind, reference, answer, problems))

    def sequences(self, plumber, setups, by_name):
        """Sequences on one connection, kept alive and pipelined. plumber closes a connection
        that sends a request before its answer came, and sends a body after a HEAD answer: so
        its answers to a pipelined sequence are those it gave kept alive, and to a sequence with
        HEADs those it gave on a connection each."""
        def keep_alive(target, kinds, pipelined):
            answers = []
            try:
                with RawConnection(target.host, target.port, 30) as conn:
                    if pipelined:
                        conn.send(b"".join(k.head(target.target_for(k), target.headers_for(k)) +
                                           k.payload() for k in kinds))
                    for kind in kinds:
                        if not pipelined:
                            raw_send(conn, kind, target)
                        response = conn.read_response(kind.method)
                        answers.append(Answer(response.status, response.reason, response.headers,
                                              response.body))
            except Exception as exc:  # noqa: BLE001 - the rest of the sequence is lost
                answers += [Answer(0, "", [], b"", error=repr(exc))] * (len(kinds) - len(answers))
            return answers

        def run(client, kinds, references):
            """references: plumber's answers, or None to send plumber the sequence kept alive."""
            targets = [plumber] + setups if references is None else setups
            pipelined = "pipelined" in client
            results = parallel([lambda t=t: keep_alive(t, kinds, pipelined) for t in targets], 120)
            results = [r if isinstance(r, list) else [Answer(0, "", [], b"", error=repr(r))] *
                       len(kinds) for r in results]
            if references is not None:
                results.insert(0, references)
            for i, kind in enumerate(kinds):
                self.record(client, kind, [plumber] + setups, [r[i] for r in results])
            return results[0]

        kinds = [by_name[name] for name in SEQUENCE]
        kept_alive = run("raw kept alive", kinds, None)
        run("raw pipelined", kinds, kept_alive)
        kinds = [by_name[name] for name in SEQUENCE_WITH_HEAD]
        references = [raw_exchange(plumber, kind) for kind in kinds]
        run("raw kept alive, HEADs", kinds, references)
        run("raw pipelined, HEADs", kinds, references)

    def large(self, plumber, setups):
        """100 MB up and down, once per setup, hashed as it streams."""
        upload = Kind("upload 100 MB", "POST", "/echo",
                      [("Content-Type", "application/octet-stream")], pattern(BIG))
        download = Kind("download 100 MB", "GET", f"/bytes?n={BIG}")

        def fetch(target):
            try:
                with RawConnection(target.host, target.port, 120) as conn:
                    conn.send(download.head(target.target_for(download), []))
                    digest, size = hashlib.md5(), [0]

                    def sink(piece):
                        digest.update(piece)
                        size[0] += len(piece)
                    response = conn.read_response("GET", sink=sink)
                    return Answer(response.status, response.reason, response.headers,
                                  f"{size[0]} B, md5 {digest.hexdigest()}".encode())
            except Exception as exc:  # noqa: BLE001 - an error is an answer to compare too
                return Answer(0, "", [], b"", error=repr(exc))

        targets = [plumber] + setups
        answers = parallel([lambda t=t: raw_exchange(t, upload, 120) for t in targets], 300)
        self.record("raw", upload, targets, answers)
        seen = echo_view(answers[0], upload, plumber) or {}
        self.assertEqual(seen.get("body_length"), BIG, "plumber got the whole 100 MB")
        self.assertEqual(seen.get("body_md5"), hashlib.md5(upload.body).hexdigest())
        answers = parallel([lambda t=t: fetch(t) for t in targets], 300)
        self.record("raw", download, targets, answers)
        self.assertEqual(answers[0].body,
                         f"{BIG} B, md5 {hashlib.md5(pattern(BIG)).hexdigest()}".encode())

    def report(self):
        lines = [f"{len(self.mismatches)} answers through valve differ from plumber's:"]
        by_kind = {}
        for client, setup, kind, _, _, _ in self.mismatches:
            by_kind.setdefault(kind.name, set()).add(f"{client}/{setup}")
        lines.append("in short: " + "; ".join(f"{name} ({', '.join(sorted(where))})"
                                               for name, where in by_kind.items()))
        shown = {}
        for client, setup, kind, reference, answer, problems in self.mismatches:
            key = (kind.name, tuple(problems))
            if key in shown:
                shown[key].append(f"{client}/{setup}")
                continue
            shown[key] = []
            lines.append(f"\n* {client} via {setup}: {kind.describe()[:600]}")
            lines += [f"    - {p}" for p in problems]
            lines.append("    plumber:\n    " + reference.summary()[:1500])
            lines.append("    valve:\n    " + answer.summary()[:1500])
        return "\n".join(lines)

    def test_same_answers_directly_and_through_valve(self):
        tmpdir = self.tmpdir
        plumber, setups = self.start_setups()
        at_start = {s.name: {w["pid"] for w in s.valve.status()["workers"]} for s in setups}
        kinds = request_kinds()
        by_name = {k.name: k for k in kinds}
        real = [k for k in kinds if not k.raw_only]
        self.log(f"{len(kinds)} request kinds, {len(real)} of them for curl, requests and httr2")

        # The four clients at once (httr2 in one R process): they mostly wait for answers.
        jobs = [(t, k) for k in real for t in [plumber] + setups if k.prefixable or not t.prefix]
        clients = [
            lambda: self.timed("httr2", httr2_batch, jobs, tmpdir, 240),
            lambda: self.timed("raw sockets", self.compare, "raw", plumber, setups, kinds,
                               raw_exchange),
            lambda: self.timed("curl", self.compare, "curl", plumber, setups, real,
                               lambda t, k: curl_exchange(t, k, tmpdir)),
            lambda: self.timed("requests", self.compare, "requests", plumber, setups, real,
                               requests_exchange),
        ]
        outcomes = self.timed("clients", lambda: parallel(clients, 300))
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        answers = outcomes[0]
        self.timed("sequences", self.sequences, plumber, setups, by_name)
        i = 0
        for kind in real:
            targets = [t for t in [plumber] + setups if kind.prefixable or not t.prefix]
            self.record("httr2", kind, targets, answers[i:i + len(targets)])
            i += len(targets)
        self.timed("100 MB", self.large, plumber, setups)

        # Nothing churned: the workers of the start still serve, and each served requests.
        churn = []
        for setup in setups:
            workers = setup.valve.status()["workers"]
            now = {w["pid"] for w in workers}
            if now != at_start[setup.name] or any(w["state"] != "ready" for w in workers):
                churn.append(f"{setup.name}: workers {sorted(at_start[setup.name])} at the start, "
                             f"now {[(w['pid'], w['state']) for w in workers]}")
            idle = [w["pid"] for w in workers if not w["requests"]]
            if idle:
                churn.append(f"{setup.name}: workers {idle} served no request")
        self.log("timings: " + ", ".join(f"{label} {seconds:.1f} s"
                                         for label, seconds in self.timings))
        if self.mismatches or churn:
            self.fail("\n".join(churn) + "\n" + self.report())


if __name__ == "__main__":
    unittest.main(verbosity=2)
