"""The table of requests in rfc_requests.py (RFC 9110, RFC 9112, request-smuggling research), each
sent on a connection of its own to valve, to nginx and to HAProxy, each in front of its own
recording backend (rfc_recorder.py), which keeps every byte a proxy sends it.

valve's column is asserted: a Forward row must reach the recorder as the row says (method, target,
headers, de-chunked body), a Reject row must get valve's own JSON error with that status and a
closed connection, and nothing at all may reach the recorder (for an error in a chunked body,
whose head valve has already passed on: never a whole request, and that connection closed). The
nginx and HAProxy columns are what those versions do, printed beside valve's, not asserted; the
test fails only if either program is missing. VALVE_RFC_TABLE=PATH also writes the table there
(docs/http-conformance.md holds a copy).
"""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import unittest

from harness import LOOPBACK, ValveTestCase, free_port, nginx_conf, wait_until
from rfc_requests import ROWS, Forward

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDER = os.path.join(HERE, "rfc_recorder.py")
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
# A proxy still waiting for more of a request after this long: "wait". valve gets longer, its
# column being asserted on a machine that may be busy with other tests.
ANSWER_TIMEOUT = {"valve": 5.0, "nginx": 2.0, "haproxy": 2.0}
SETTLE = 0.1  # after the answer, for anything a proxy sends the backend late (a smuggled request)

NGINX_HTTP = """\
  upstream recorder {{
    server 127.0.0.1:{backend};
    keepalive 4;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://recorder;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
    }}
  }}
"""

HAPROXY_CONF = """\
global
  maxconn 256
defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 10s
  timeout http-request 5s
frontend rfc
  bind 127.0.0.1:{port}
  default_backend recorder
backend recorder
  server recorder 127.0.0.1:{backend}
"""


# ---- what the recorder got --------------------------------------------------------------------


class Recording:
    """The recorder's directory: one .raw file per connection, a .closed file once it ended."""

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)

    def snapshot(self):
        return {name: os.path.getsize(os.path.join(self.dir, name))
                for name in os.listdir(self.dir) if name.endswith(".raw")}

    def since(self, snapshot):
        """[(connection, bytes)] that arrived after snapshot, connections with none left out."""
        out = []
        for name, size in sorted(self.snapshot().items()):
            start = snapshot.get(name, 0)
            if size > start:
                with open(os.path.join(self.dir, name), "rb") as f:
                    f.seek(start)
                    out.append((name[:-4], f.read()))
        return out

    def closed(self, connection):
        return os.path.exists(os.path.join(self.dir, connection + ".closed"))


class Recorded:
    """One request as the backend got it."""

    def __init__(self, method, target, version, headers, body):
        self.method, self.target, self.version = method, target, version
        self.headers, self.body = headers, body  # [(lower-case name, value bytes)]

    def values(self, name):
        return [v for k, v in self.headers if k == name.encode("latin-1")]


def parse_recorded(data):
    """The whole requests in data (CRLF lines, Content-Length or chunked bodies), and what is left
    over (a request cut short, or bytes that are not a request)."""
    requests = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        lines = data[:end].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            break
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.lower(), value.strip(b" \t")))
        fields = dict(headers)
        pos = end + 4
        if b"transfer-encoding" in fields:
            body = b""
            while True:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    return requests, data
                try:
                    size = int(data[pos:eol].split(b";")[0], 16)
                except ValueError:
                    return requests, data
                pos = eol + 2
                if size == 0:
                    trailer_end = data.find(b"\r\n\r\n", pos - 2)
                    if trailer_end < 0:
                        return requests, data
                    pos = trailer_end + 4
                    break
                if len(data) < pos + size + 2:
                    return requests, data
                body += data[pos:pos + size]
                pos += size + 2
        else:
            length = int(fields.get(b"content-length", b"0") or b"0")
            if len(data) < pos + length:
                break
            body = data[pos:pos + length]
            pos += length
        requests.append(Recorded(parts[0].decode("latin-1"), parts[1].decode("latin-1"),
                                 parts[2].decode("latin-1"), headers, body))
        data = data[pos:]
    return requests, data


def forward_problems(expect, requests, raw):
    """How the requests a proxy forwarded differ from a Forward row's expectation ([] if not)."""
    if len(requests) != expect.count:
        return [f"{len(requests)} requests reached the backend, not {expect.count}"]
    # Pipelined requests may reach the backend over several connections: the one the row names.
    got = next((r for r in requests if r.target == expect.target), requests[0])
    problems = []
    if got.method != expect.method:
        problems.append(f"method {got.method!r}")
    if got.target != expect.target:
        problems.append(f"target {got.target!r}")
    for name, want in expect.headers.items():
        values = got.values(name)
        if want is ...:
            if len(values) != 1:
                problems.append(f"{name}: {values!r}")
            continue
        want = want.encode("latin-1") if isinstance(want, str) else want
        if values != [want]:
            problems.append(f"{name}: {values!r}")
    for name in expect.absent:
        if got.values(name):
            problems.append(f"{name} kept")
    if got.body != expect.body:
        problems.append(f"body {got.body[:40]!r}")
    for text in expect.not_in_raw:
        if text.lower() in raw.lower():
            problems.append(f"{text!r} passed on")
    return problems


# ---- what the client got ----------------------------------------------------------------------


class Answer:
    def __init__(self):
        self.statuses = []  # final statuses in order
        self.headers = []  # of the first final answer: [(name, value)]
        self.body = b""
        self.end = None  # "close" (the proxy closed), "wait" (still open), "raw" (not HTTP)
        self.raw = b""


def read_answers(sock, count, method, timeout, await_close):
    """Reads up to `count` final answers; stops at close, garbage or `timeout`. With
    await_close, after an error answer, waits (bounded) to see whether the connection closes."""
    answer = Answer()
    buf = b""
    deadline = time.monotonic() + timeout

    def fill():
        nonlocal buf
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        data = sock.recv(65536)
        if not data:
            raise EOFError
        buf += data

    try:
        while len(answer.statuses) < count:
            while b"\r\n\r\n" not in buf:
                if buf and not b"HTTP/".startswith(buf[:5]) and not buf.startswith(b"HTTP/"):
                    answer.end, answer.raw = "raw", buf
                    return answer
                fill()
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            if not lines[0].startswith("HTTP/"):
                answer.end, answer.raw = "raw", head
                return answer
            status = int(lines[0].split(" ")[1])
            headers = [(n.strip(), v.strip()) for n, _, v in (h.partition(":") for h in lines[1:])]
            if 100 <= status < 200:
                continue
            fields = {n.lower(): v for n, v in headers}
            body = b""
            if method == "HEAD" or status in (204, 304):
                pass
            elif "chunked" in fields.get("transfer-encoding", "").lower():
                while True:
                    while b"\r\n" not in buf:
                        fill()
                    line, buf = buf.split(b"\r\n", 1)
                    size = int(line.split(b";")[0], 16)
                    while len(buf) < size + 2:
                        fill()
                    body, buf = body + buf[:size], buf[size + 2:]
                    if size == 0:
                        break
            elif "content-length" in fields:
                while len(buf) < int(fields["content-length"]):
                    fill()
                length = int(fields["content-length"])
                body, buf = buf[:length], buf[length:]
            else:
                try:
                    while True:
                        fill()
                except EOFError:
                    body, buf = buf, b""
            if not answer.statuses:
                answer.headers, answer.body = headers, body
            answer.statuses.append(status)
        if await_close and answer.statuses and answer.statuses[0] >= 400:
            deadline = time.monotonic() + timeout
            try:
                while True:
                    fill()
            except EOFError:
                answer.end = "close"
            except (TimeoutError, socket.timeout):
                answer.end = "wait"
    except EOFError:
        answer.end = "close"
    except (TimeoutError, socket.timeout):
        answer.end = "wait"
    except ConnectionResetError:
        answer.end = "close"
    return answer


class Outcome:
    """One row through one proxy: what the client got, what reached the backend."""

    def __init__(self, row, answer, pieces, recording):
        self.row, self.answer, self.pieces = row, answer, pieces
        self.raw = b"".join(data for _, data in pieces)
        self.requests, self.leftover = [], b""
        for _, data in pieces:
            requests, rest = parse_recorded(data)
            self.requests += requests
            self.leftover += rest
        self.all_closed = all(recording.closed(conn) for conn, _ in pieces)

    def cell(self):
        """The table cell: 'fwd', 'fwd*' (forwarded, not as the row says), '400',
        '400+head' (some of it reached the backend), '400+fwd' (a whole request did), 'close' /
        'wait' (no answer: closed, or still waiting), 'raw' (an answer that is not HTTP/1.x)."""
        a = self.answer
        if not a.statuses:
            return a.end or "?"
        status = a.statuses[0]
        if self.requests and 200 <= status < 300:
            expect = self.row.expect
            if isinstance(expect, Forward) and forward_problems(expect, self.requests, self.raw):
                return "fwd*"
            return "fwd"
        cell = str(status)
        if self.requests:
            cell += "+fwd"
        elif self.raw:
            cell += "+head"
        return cell

    def klass(self):
        """What the "why" column compares: forwarded or not, and the status."""
        cell = self.cell()
        return "fwd" if cell.startswith("fwd") else cell.split("+")[0]

    def note(self):
        """Why a cell has a star: how the forwarded request differs from the row."""
        if self.cell() != "fwd*":
            return ""
        return "; ".join(forward_problems(self.row.expect, self.requests, self.raw))


# ---- the three proxies ------------------------------------------------------------------------


class Proxy:
    def __init__(self, name, port, recording, asserted=False):
        self.name, self.port, self.recording = name, port, recording
        self.asserted = asserted  # valve: its rows' outcomes are checked, closes included

    def run(self, row):
        snapshot = self.recording.snapshot()
        timeout = ANSWER_TIMEOUT[self.name]
        with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.sendall(row.request)
            except OSError:
                pass  # the proxy may answer and close before it has read everything
            count = row.expect.count if isinstance(row.expect, Forward) else 1
            answer = read_answers(sock, count, row.method, timeout, self.asserted)
        time.sleep(SETTLE)
        return Outcome(row, answer, self.recording.since(snapshot), self.recording)

    def run_all(self, rows):
        return [self.run(row) for row in rows]


def valve_problems(outcome):
    """How valve's outcome breaks its row's expectation ([] if it does not)."""
    a, expect = outcome.answer, outcome.row.expect
    if isinstance(expect, Forward):
        if a.statuses[:1] != [200]:
            return [f"answered {a.statuses or a.end} {a.body[:200]!r}, not forwarded"]
        return forward_problems(expect, outcome.requests, outcome.raw)
    problems = []
    if a.statuses[:1] != [expect.status]:
        problems.append(f"answered {a.statuses or a.end} {a.body[:200]!r}, not {expect.status}")
    else:
        fields = {n.lower(): v for n, v in a.headers}
        if not fields.get("content-type", "").startswith("application/json"):
            problems.append(f"not valve's JSON error: {a.headers}")
        if fields.get("connection", "").lower() != "close" or a.end != "close":
            problems.append(f"connection not closed (Connection: {fields.get('connection')}, "
                            f"then {a.end})")
    if expect.reaches == "nothing" and outcome.raw:
        problems.append(f"the backend got {outcome.raw[:300]!r}")
    if expect.reaches == "head":
        if outcome.requests:
            problems.append(f"a whole request reached the backend: {outcome.raw[:300]!r}")
        if not outcome.all_closed:
            problems.append("valve kept the backend connection that got part of it open")
    return problems


def format_table(rows, columns, outcomes):
    """rows x columns (valve first) as a Markdown table, after the outcome each row requires of
    valve, with a "why" for each row where valve's outcome differs from every peer's, then the
    notes on starred cells."""
    header = ["row", "cite", "valve must"] + columns + ["why valve differs from both"]
    lines, notes = [], []
    for i, row in enumerate(rows):
        cells = [outcomes[c][i] for c in columns]
        valve, peers = cells[0], cells[1:]
        why = ""
        if all(p.klass() != valve.klass() for p in peers):
            why = row.why or "(no reason recorded in rfc_requests.py)"
        lines.append([row.id, row.cite, str(row.expect)] + [c.cell() for c in cells] + [why])
        for column, c in zip(columns, cells):
            if c.note():
                notes.append(f"- {row.id}, {column}: {c.note()}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    def fmt(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(line) for line in lines]
    if notes:
        out += ["", "fwd* (forwarded, not as the row expects valve to):"] + notes
    return "\n".join(out)


class RfcTable(ValveTestCase):
    def setUp(self):
        super().setUp()
        missing = [p for p in ("nginx", "haproxy") if not shutil.which(p, path=os.environ.get(
            "PATH", "") + ":/usr/sbin:/sbin")]
        if missing:
            self.fail(f"{' and '.join(missing)} not installed (scripts/install-deps installs them)")

    def start_recorder(self, name):
        recording = Recording(os.path.join(self.tmpdir, name))
        proc = self.track_process(subprocess.Popen(
            [PYTHON, RECORDER, "--port", "0", "--dir", recording.dir],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
        line = proc.stdout.readline().decode()
        if "listening on" not in line:
            raise AssertionError(f"the {name} recorder did not start: {line!r}")
        return recording, int(line.rsplit(":", 1)[1])

    def start_peer(self, name, argv, port):
        proc = self.track_process(subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

        def listening():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited: {proc.stderr.read().decode()}")
            try:
                socket.create_connection((LOOPBACK, port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_until(listening, 15, message=f"{name} listening")

    def start_nginx(self):
        recording, backend = self.start_recorder("nginx-recorder")
        port = free_port()
        conf = os.path.join(self.tmpdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(self.tmpdir, NGINX_HTTP.format(port=port, backend=backend)))
        self.start_peer("nginx", ["nginx", "-p", self.tmpdir, "-c", conf, "-e",
                                  os.path.join(self.tmpdir, "nginx-stderr.log")], port)
        return Proxy("nginx", port, recording)

    def start_haproxy(self):
        recording, backend = self.start_recorder("haproxy-recorder")
        port = free_port()
        conf = os.path.join(self.tmpdir, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(HAPROXY_CONF.format(port=port, backend=backend))
        self.start_peer("haproxy", ["haproxy", "-f", conf, "-db"], port)
        return Proxy("haproxy", port, recording)

    def start_valve_proxy(self):
        recording = Recording(os.path.join(self.tmpdir, "valve-recorder"))
        cmd = f"{PYTHON} {RECORDER} --port {{port}} --dir {recording.dir}"
        valve = self.start_valve("--cmd", cmd, "-n", "1", ready="/rfc/ready")
        return Proxy("valve", valve.port, recording, asserted=True)

    def test_the_table(self):
        self.assertGreaterEqual(len(ROWS), 60)
        self.assertEqual(len({row.id for row in ROWS}), len(ROWS), "row ids are unique")
        for row in ROWS:
            self.assertTrue(row.cite and row.rfc, row.id)
        proxies = [self.start_valve_proxy(), self.start_nginx(), self.start_haproxy()]
        outcomes = {}

        def run(proxy):
            try:
                outcomes[proxy.name] = proxy.run_all(ROWS)
            except Exception as exc:  # noqa: BLE001 - reported below
                outcomes[proxy.name] = exc
        threads = [threading.Thread(target=run, args=(p,), daemon=True) for p in proxies]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for proxy in proxies:
            result = outcomes.get(proxy.name)
            if not isinstance(result, list):
                self.fail(f"{proxy.name}: the rows did not run: {result!r}")

        table = format_table(ROWS, [p.name for p in proxies], outcomes)
        print("\n" + table, flush=True)
        if os.environ.get("VALVE_RFC_TABLE"):
            with open(os.environ["VALVE_RFC_TABLE"], "w") as f:
                f.write(table + "\n")

        # The recorder behind valve saw every forwarded row: "nothing reached it" means something.
        self.assertGreater(sum(len(o.requests) for o in outcomes["valve"]), 0)
        failures = []
        for outcome in outcomes["valve"]:
            problems = valve_problems(outcome)
            if problems:
                failures.append(f"{outcome.row.id} ({outcome.row.cite}; expected "
                                f"{outcome.row.expect}): " + "; ".join(problems))
        if failures:
            self.fail(f"{len(failures)} of {len(ROWS)} rows not as expected:\n"
                      + "\n".join(failures))


if __name__ == "__main__":
    unittest.main()
