"""Helpers for valve's integration tests: start valvectl, talk HTTP to it, watch its process tree.

Environment:
  VALVECTL       the valvectl binary (meson passes the one it built)
  VALVE_BACKEND  the native test backend, valve-test-backend
  VALVE_SRC      the repository root, for tests/apps/ and examples/

Every wait is bounded and everything is on loopback. A process is only ever ended by the PID this
harness started or found in the tree of a valvectl it started (or tagged through its environment).
"""

import atexit
import concurrent.futures
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.environ.get("VALVE_SRC") or os.path.join(HERE, "..", ".."))


def _default_binary(env_name, *candidates):
    value = os.environ.get(env_name)
    if value:
        return os.path.abspath(value)
    for candidate in candidates:
        path = os.path.join(SRC, candidate)
        if os.access(path, os.X_OK):
            return path
    return os.path.join(SRC, candidates[0])


VALVECTL = _default_binary("VALVECTL", "build/cli/valvectl")
BACKEND = _default_binary("VALVE_BACKEND", "build/tests/backend/valve-test-backend")

LOOPBACK = "127.0.0.1"
TAG_VARIABLE = "VALVE_TEST_TAG"
LISTENING_RE = re.compile(r"listening on http://(\[[^\]]+\]|[^\s:/]+):(\d+)")
ADMIN_RE = re.compile(r'admin interface on (?:http://)?([^\s"]+)')  # text or JSON logs


def app_path(name):
    """A plumber file from tests/apps/."""
    return os.path.join(SRC, "tests", "apps", name)


def example_path(*parts):
    return os.path.join(SRC, "examples", *parts)


def backend_cmd(*extra):
    """A --cmd template running the native backend on the port valve assigns."""
    words = [shlex.quote(BACKEND), "--port", "{port}"] + [shlex.quote(str(e)) for e in extra]
    return " ".join(words)


SUBCOMMANDS = ("status", "reload", "scale")


def serving_flags(env=None, allow_root=True):
    """What every serving valvectl in the tests gets first: workers keep the test's tag and the
    variables the test sets (workers get an explicit environment), and may run as root, since CI
    runs the tests as root; tests of those refusals pass allow_root=False."""
    flags = ["--env", TAG_VARIABLE]
    for name in env or {}:
        flags += ["--env", name]
    if allow_root:
        flags.append("--allow-root")
    return flags


def wait_until(predicate, timeout, interval=0.05, message="condition"):
    """Polls predicate() until it returns a true value; returns that value or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} not met within {timeout} s")
        time.sleep(interval)


# ---- /proc -------------------------------------------------------------------------------------


class ProcInfo:
    __slots__ = ("pid", "ppid", "state", "start", "comm")

    def __init__(self, pid, ppid, state, start, comm):
        self.pid, self.ppid, self.state, self.start, self.comm = pid, ppid, state, start, comm

    def __repr__(self):
        return f"<pid {self.pid} ppid {self.ppid} {self.state} {self.comm}>"


def proc_info(pid):
    """ppid, state, start time and name of a process, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm is in parentheses and may itself contain spaces and parentheses.
    left, right = data.find("("), data.rfind(")")
    comm = data[left + 1:right]
    fields = data[right + 2:].split()
    # fields[0] is field 3 (state); field 4 is ppid, field 22 is starttime.
    return ProcInfo(pid, int(fields[1]), fields[0], int(fields[19]), comm)


def all_processes():
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = proc_info(int(entry))
            if info is not None:
                procs[info.pid] = info
    return procs


# /proc/PID/task/TID/children (Linux 4.2, CONFIG_PROC_CHILDREN) names a thread's children: a tree
# is read from the few processes in it rather than from every process on the machine, which the
# samplers below do twenty times a second for every valvectl (a tenth of a core each, with a suite
# running beside).
_HAVE_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _child_pids(pid):
    """pid's children (zombies included), as the kernel lists them under each of its threads."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(word) for word in f.read().split())
        except (OSError, ValueError):
            pass  # the thread or the process has just ended
    return found


def descendants(pid, procs=None):
    """Every live descendant of pid (children, grandchildren, ...), as ProcInfo."""
    if procs is None and _HAVE_CHILDREN_FILES:
        out, todo = [], [pid]
        while todo:
            for child in _child_pids(todo.pop()):
                info = proc_info(child)
                if info is not None:
                    out.append(info)
                    todo.append(child)
        return out
    procs = procs if procs is not None else all_processes()
    children = {}
    for info in procs.values():
        children.setdefault(info.ppid, []).append(info)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child.pid)
    return out


def children(pid, procs=None):
    procs = procs if procs is not None else all_processes()
    return [info for info in procs.values() if info.ppid == pid]


def is_alive(pid, start=None):
    """True if pid exists, is not a zombie and (if given) started at `start`."""
    info = proc_info(pid)
    if info is None or info.state in ("Z", "X", "x"):
        return False
    return start is None or info.start == start


def tagged_processes(tag):
    """Live processes whose environment carries our tag: whatever a valvectl we started spawned,
    even after they were reparented away from it."""
    needle = b"\0" + f"{TAG_VARIABLE}={tag}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = b"\0" + f.read() + b"\0"
        except OSError:
            continue
        if needle in environ:
            if is_alive(int(entry)):
                found.append(int(entry))
    return found


def vm_hwm_kb(pid):
    """Peak resident set size of a process, in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


def free_port():
    """A port that was free a moment ago (for tests that need a concrete number)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


NGINX_PREAMBLE = """\
daemon off;
master_process off;      # one process, ended by its PID: a test harness, not production
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 256; }}
"""


def nginx_conf(tmp, http_block):
    """A whole nginx.conf for a test's own nginx: in the foreground, one process, every file it
    writes under tmp; http_block is what goes inside http { }."""
    temp_paths = "".join(f"  {kind}_temp_path {tmp}/{kind};\n"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (NGINX_PREAMBLE.format(tmp=tmp) + "http {\n  access_log off;\n" + temp_paths +
            http_block + "}\n")


def fnv1a64(data, h=0xCBF29CE484222325):
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# ---- HTTP ---------------------------------------------------------------------------------------


class Response:
    def __init__(self, status, reason, headers, body, version="HTTP/1.1", elapsed=0.0):
        self.status = status
        self.reason = reason
        self.headers = headers  # [(name, value)], as received
        self.body = body
        self.version = version
        self.elapsed = elapsed

    def header(self, name, default=None):
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return default

    def header_all(self, name):
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        body = self.body[:300]
        return f"<Response {self.status} {self.reason} {self.headers} {body!r}>"


class RawConnection:
    """A client connection on a bare socket, for keep-alive, pipelining and malformed requests.

    read_response() parses one HTTP/1.x response: Content-Length, chunked or close-delimited.
    """

    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.peer_closed = False

    def settimeout(self, seconds):
        self.sock.settimeout(seconds)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            self.peer_closed = True
            raise EOFError("connection closed by peer")
        self.buf += data

    def _readline(self, limit=1 << 20):
        while True:
            idx = self.buf.find(b"\r\n")
            if idx >= 0:
                line = bytes(self.buf[:idx])
                del self.buf[:idx + 2]
                return line
            if len(self.buf) > limit:
                raise AssertionError("response line too long")
            self._fill()

    def _read_exact(self, n, sink):
        while n > 0:
            if not self.buf:
                self._fill()
            take = min(n, len(self.buf))
            sink(bytes(self.buf[:take]))
            del self.buf[:take]
            n -= take

    def _read_to_close(self, sink):
        while True:
            if self.buf:
                sink(bytes(self.buf))
                self.buf.clear()
            try:
                self._fill()
            except EOFError:
                return

    def read_response(self, method="GET", sink=None, interim=False):
        """Reads one response. With sink, body pieces go to sink(bytes) and .body stays empty.
        Interim (1xx) responses are skipped, unless interim is true: then one is returned."""
        started = time.monotonic()
        while True:
            status_line = self._readline().decode("latin-1")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/"):
                raise AssertionError(f"bad status line {status_line!r}")
            version, status = parts[0], int(parts[1])
            reason = parts[2] if len(parts) > 2 else ""
            headers = []
            while True:
                line = self._readline().decode("latin-1")
                if not line:
                    break
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
            if 100 <= status < 200 and status != 101 and not interim:
                continue  # interim response
            break
        pieces = []
        collect = sink or pieces.append
        response = Response(status, reason, headers, b"", version)
        te = (response.header("Transfer-Encoding") or "").lower()
        cl = response.header("Content-Length")
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            pass
        elif "chunked" in te:
            while True:
                size_line = self._readline().decode("latin-1")
                size = int(size_line.split(";")[0].strip(), 16)
                if size == 0:
                    while self._readline():  # trailers
                        pass
                    break
                self._read_exact(size, collect)
                if self._readline() != b"":
                    raise AssertionError("chunk not followed by CRLF")
        elif cl is not None:
            self._read_exact(int(cl), collect)
        else:
            self._read_to_close(collect)
        response.body = b"".join(pieces)
        response.elapsed = time.monotonic() - started
        return response

    def request(self, method, target, headers=None, body=b"", host="valve.test"):
        """Sends one request and reads its response."""
        self.send(format_request(method, target, headers, body, host))
        return self.read_response(method)

    def wait_closed(self, timeout):
        """True if the peer closes (FIN or RST) within timeout, with no bytes sent before."""
        old = self.sock.gettimeout()
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.sock.settimeout(remaining)
                try:
                    data = self.sock.recv(65536)
                except socket.timeout:
                    return False
                except ConnectionResetError:
                    return True
                if not data:
                    return True
                self.buf += data
                raise AssertionError(f"unexpected bytes while waiting for close: {bytes(self.buf)!r}")
        finally:
            self.sock.settimeout(old)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket."""

    def __init__(self, path, timeout=30.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def format_request(method, target, headers=None, body=b"", host="valve.test"):
    if isinstance(body, str):
        body = body.encode()
    lines = [f"{method} {target} HTTP/1.1"]
    names = set()
    for name, value in (headers or []):
        lines.append(f"{name}: {value}")
        names.add(name.lower())
    if "host" not in names and host is not None:
        lines.append(f"Host: {host}")
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class SteadyLoad:
    """`clients` threads sending GET `path` back to back for `seconds`, each status (or the
    exception's repr) recorded. join() waits for them (bounded) and returns every status."""

    def __init__(self, valve, path, seconds, clients=3, timeout=60):
        self.statuses = []
        self._lock = threading.Lock()
        self._until = time.monotonic() + seconds

        def client():
            while time.monotonic() < self._until:
                try:
                    status = valve.get(path, timeout=timeout).status
                except Exception as exc:  # noqa: BLE001 - counted as a failure
                    status = repr(exc)
                with self._lock:
                    self.statuses.append(status)

        self._threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def stop(self):
        """Ends the load early: each client finishes its request in progress."""
        self._until = 0

    def join(self, timeout):
        for t in self._threads:
            t.join(timeout)
        with self._lock:
            return list(self.statuses)


class Wrk:
    """wrk driving GET url with `connections` kept-alive connections for `seconds`, in the
    background; result() waits (bounded) and parses its summary."""

    def __init__(self, url, seconds, connections=8, threads=2, timeout_s=10):
        self.proc = subprocess.Popen(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
             "--timeout", f"{timeout_s}s", url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.seconds = seconds

    def result(self):
        try:
            out, _ = self.proc.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=10)
            raise AssertionError(f"wrk did not end: {out.decode(errors='replace')}")
        text = out.decode(errors="replace")
        if self.proc.returncode != 0:
            raise AssertionError(f"wrk failed ({self.proc.returncode}):\n{text}")
        requests = re.search(r"(\d+) requests in", text)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                           text)
        return {
            "requests": int(requests.group(1)) if requests else 0,
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
            "text": text,
        }

    def stop(self):
        """Ends the run early; wrk prints its summary on SIGINT."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def parallel(functions, timeout=120):
    """Runs the functions on threads at once; returns their results in order. An exception in one
    is returned in its place, so a test can count failures."""
    if not functions:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(functions)) as pool:
        futures = [pool.submit(fn) for fn in functions]
        out = []
        deadline = time.monotonic() + timeout
        for future in futures:
            try:
                out.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
            except concurrent.futures.TimeoutError:
                raise AssertionError(f"parallel requests still running after {timeout} s")
            except Exception as exc:  # noqa: BLE001 - the caller decides
                out.append(exc)
        return out


# ---- valvectl ------------------------------------------------------------------------------------

_LIVE = set()  # Valve objects not stopped yet, for the emergency stop below


def _emergency_stop():
    """Stops every valvectl still running when the test process itself is ending (a timeout's
    SIGTERM, Ctrl-C): by PID, SIGTERM then SIGKILL, then whatever they left behind."""
    for valve in list(_LIVE):
        try:
            valve.stop(timeout=3.0, leftover_timeout=2.0)
            valve.kill_leftovers()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def _on_sigterm(signum, frame):
    _emergency_stop()
    os._exit(128 + signum)


atexit.register(_emergency_stop)
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _on_sigterm)


class Valve:
    """One valvectl process started with --port 0, its log in a temporary directory, and a sampler
    thread that remembers every process that ever appeared in its tree."""

    def __init__(self, args, tmpdir, cwd=None, env=None, port=0, host=LOOPBACK, allow_root=True):
        self.args = [str(a) for a in args]
        self.tmpdir = tmpdir
        self.tag = os.urandom(8).hex()
        self.log_path = os.path.join(tmpdir, f"valvectl-{self.tag}.stderr")
        self.out_path = os.path.join(tmpdir, f"valvectl-{self.tag}.stdout")
        self.host, self.port = None, None
        self.admin_token = None  # sent by admin() as a bearer token when set
        self.seen = {}  # pid -> start time, of every descendant ever sampled
        self.max_children = 0
        self._lock = threading.RLock()
        self._stop_sampler = threading.Event()
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env[TAG_VARIABLE] = self.tag
        # valvectl's TMPDIR, where its runtime directory and its workers' temporary directories go:
        # the test's own, removed with it even when valvectl could not clean up (SIGKILL).
        self.tmp = (env or {}).get("TMPDIR") or private_tmpdir(tmpdir, self.tag)
        full_env["TMPDIR"] = self.tmp
        argv = [VALVECTL] + serving_flags(env, allow_root)
        if port is not None:
            argv += ["--port", str(port)]
        if host is not None:
            argv += ["--host", host]
        argv += self.args
        self.argv = argv
        if not os.access(VALVECTL, os.X_OK):
            raise AssertionError(f"valvectl not found at {VALVECTL} (set VALVECTL)")
        self._err = open(self.log_path, "wb")
        self._out = open(self.out_path, "wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=self._err, cwd=cwd or tmpdir, env=full_env)
        self.pid = self.proc.pid
        _LIVE.add(self)
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)
        self._sampler.start()

    # -- logs
    def log(self):
        with open(self.log_path, "rb") as f:
            err = f.read().decode("utf-8", "replace")
        return err

    def stdout(self):
        with open(self.out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, lines=60):
        text = self.log().splitlines()
        out = self.stdout().splitlines()
        tail = "\n".join(text[-lines:])
        if out:
            tail += "\n--- stdout ---\n" + "\n".join(out[-lines:])
        return tail

    def wait_log(self, pattern, timeout=10.0):
        """Waits for a regex in the stderr log; returns the match."""
        regex = re.compile(pattern)
        return wait_until(lambda: regex.search(self.log()), timeout,
                          message=f"log line matching {pattern!r}")

    # -- start-up
    def wait_listening(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING_RE.search(self.log())
            if match:
                self.host = match.group(1).strip("[]")
                self.port = int(match.group(2))
                if self.host in ("0.0.0.0", "::", "localhost"):
                    self.host = LOOPBACK
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"valvectl exited with {self.proc.returncode} before listening:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.02)
        raise AssertionError(f"no 'listening on' line within {timeout} s:\n{self.log_tail()}")

    def wait_ready(self, path="/hello", timeout=30.0, status=200):
        """Polls path until it answers `status` (the first worker is ready)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"valvectl exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                last = self.get(path, timeout=max(0.5, min(10.0, deadline - time.monotonic())))
                if last.status == status:
                    return last
            except (OSError, http.client.HTTPException) as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"{path} did not answer {status} within {timeout} s (last: {last!r}):\n"
                             f"{self.log_tail()}")

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    # -- HTTP
    def request(self, method, path, body=None, headers=None, timeout=30.0):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        started = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, resp.reason, resp.getheaders(), data,
                            "HTTP/1.1" if resp.version == 11 else "HTTP/1.0",
                            time.monotonic() - started)
        finally:
            conn.close()

    def get(self, path, headers=None, timeout=30.0):
        return self.request("GET", path, headers=headers, timeout=timeout)

    def post(self, path, body, headers=None, timeout=30.0):
        return self.request("POST", path, body=body, headers=headers, timeout=timeout)

    def raw(self, timeout=10.0):
        return RawConnection(self.host, self.port, timeout)

    # -- the admin interface (started with --admin)
    def admin_address(self, timeout=10.0):
        """The admin listener from the log: "127.0.0.1:PORT" or "unix:/path"."""
        return self.wait_log(ADMIN_RE.pattern, timeout).group(1)

    def admin(self, method, path, body=None, headers=None, timeout=30.0):
        """One request to the admin interface, TCP or Unix socket; a Response."""
        address = self.admin_address()
        if address.startswith("unix:"):
            conn = UnixHTTPConnection(address[5:], timeout=timeout)
        else:
            host, _, port = address.rpartition(":")
            conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
        headers = dict(headers or {})
        if self.admin_token and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = f"Bearer {self.admin_token}"
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return Response(resp.status, resp.reason, resp.getheaders(), resp.read())
        finally:
            conn.close()

    def metric(self, series):
        """One sample of /metrics on the admin interface, by its series as written there
        ('valve_websockets_open', 'valve_worker_busy_seconds_total{app="default"}')."""
        for line in self.admin("GET", "/metrics").text().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[1])
        raise AssertionError(f"no metric {series}")

    def status(self):
        """GET /status on the admin interface, as a dict."""
        response = self.admin("GET", "/status")
        if response.status != 200:
            raise AssertionError(f"/status answered {response!r}")
        return response.json()

    # -- processes
    def _sample(self):
        tree = descendants(self.pid)
        with self._lock:
            for info in tree:
                self.seen.setdefault(info.pid, info.start)
            direct = sum(1 for info in tree if info.ppid == self.pid and info.state != "Z")
            self.max_children = max(self.max_children, direct)
        return tree

    def _sample_loop(self):
        while not self._stop_sampler.is_set() and self.proc.poll() is None:
            try:
                self._sample()
            except Exception:  # noqa: BLE001 - a process vanishing mid-scan is normal
                pass
            self._stop_sampler.wait(0.05)

    def tree(self):
        """Live descendants of valvectl (ProcInfo), zombies included."""
        return self._sample()

    def workers(self):
        """valvectl's direct children that are not zombies: one per worker."""
        return [info for info in self.tree() if info.ppid == self.pid and info.state != "Z"]

    def worker_pids(self):
        return sorted(info.pid for info in self.workers())

    def zombies(self):
        return [info for info in self.tree() if info.ppid == self.pid and info.state == "Z"]

    def reset_max_children(self):
        count = len(self.workers())
        with self._lock:
            self.max_children = count

    def running(self):
        return self.proc.poll() is None

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, sig):
        if self.proc.poll() is None:
            self._sample()
            os.kill(self.pid, sig)

    def leftovers(self):
        """Processes valvectl started that are still alive."""
        alive = set()
        with self._lock:
            seen = dict(self.seen)
        for pid, start in seen.items():
            if pid != self.pid and is_alive(pid, start):
                alive.add(pid)
        alive.update(tagged_processes(self.tag))
        alive.discard(self.pid)
        return sorted(alive)

    def wait_no_leftovers(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = self.leftovers()
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout=20.0, leftover_timeout=5.0):
        """Signals valvectl by PID, waits (bounded), SIGKILLs if needed. Then waits (bounded) for
        every process it started to be gone, and returns (exit code, leftover pids).
        The leftovers are not killed here: see kill_leftovers()."""
        if self.proc.poll() is None:
            try:
                self.send_signal(sig)
            except ProcessLookupError:
                pass
            if self.wait_exit(timeout) is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
        code = self.proc.returncode
        _LIVE.discard(self)
        self._stop_sampler.set()
        left = self.wait_no_leftovers(leftover_timeout)
        self._close_files()
        return code, left

    def kill_leftovers(self):
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2.0
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _close_files(self):
        for f in (self._err, self._out):
            try:
                f.close()
            except OSError:
                pass


def private_tmpdir(parent, name):
    """A TMPDIR for one valvectl under a test's directory: like /tmp, anyone may make a directory
    there (workers of --user too); its parent is made traversable for them."""
    path = os.path.join(parent, f"tmp-{name}")
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o1777)
    os.chmod(parent, os.stat(parent).st_mode | 0o111)
    return path


def tmp_entries(path):
    """What is left in a valvectl's TMPDIR (its runtime directory, its workers' directories)."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


TMPDIR_RE = re.compile(r"valve-(worker|template)-(\d+)-(\d+)-\w{6}$")


def owned_tmpdirs(valve):
    """The temporary directories valvectl made in its TMPDIR for its workers and preload
    templates: {("worker", id) or ("template", generation): path}."""
    found = {}
    for name in tmp_entries(valve.tmp):
        match = TMPDIR_RE.match(name)
        if match and int(match.group(2)) == valve.pid:
            found[(match.group(1), int(match.group(3)))] = os.path.join(valve.tmp, name)
    return found


def tmpdir_owners(status):
    """Whose temporary directories may exist, from valve's /status: its workers' and templates'."""
    owners = {("worker", w["id"]) for w in status["workers"]}
    for t in (status.get("preload") or {}).get("templates", []):
        if t["state"] != "exited":
            owners.add(("template", t["generation"]))
    return owners


def run_valvectl(args, timeout=15.0, cwd=None, env=None, allow_root=True):
    """Runs valvectl to completion (for flag errors, --help, start-up failures). Returns
    (exit code, stdout, stderr, seconds, leftover pids). Kills it by PID if it runs past timeout,
    in which case the exit code is None. A serving command line gets serving_flags() first."""
    args = [str(a) for a in args]
    if not any(a in SUBCOMMANDS for a in args):
        args = serving_flags(env, allow_root) + args
    tag = os.urandom(8).hex()
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env[TAG_VARIABLE] = tag
    own_tmp = None
    if not (env or {}).get("TMPDIR"):  # one of its own, removed below whatever valvectl left
        own_tmp = full_env["TMPDIR"] = tempfile.mkdtemp(prefix="valve-run-")
        os.chmod(own_tmp, 0o1777)
    if not os.access(VALVECTL, os.X_OK):
        raise AssertionError(f"valvectl not found at {VALVECTL} (set VALVECTL)")
    started = time.monotonic()
    proc = subprocess.Popen([VALVECTL] + args, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=full_env)
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        code = None
        err = f"[valvectl still running after {timeout} s: killed]\n".encode() + err
    elapsed = time.monotonic() - started
    deadline = time.monotonic() + 5.0
    left = tagged_processes(tag)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = tagged_processes(tag)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if own_tmp:
        shutil.rmtree(own_tmp, ignore_errors=True)
    return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), elapsed, left


# ---- unittest base -------------------------------------------------------------------------------


class ValveTestCase(unittest.TestCase):
    """Starts valvectl processes for a test and always stops them in tearDown, failing the test if
    any process they started outlives them; prints the log tails when the test failed."""

    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        if not os.access(VALVECTL, os.X_OK):
            raise AssertionError(f"valvectl not found at {VALVECTL} (set VALVECTL)")

    def setUp(self):
        self.tmpdir = tempfile.mkdtemp(prefix="valve-it-")
        self._valves = []
        self._pids = []  # extra processes a test started itself: (pid, Popen or None)
        self._clients = []  # closers of client connections, run before the valvectl processes stop

    def start_valve(self, *args, ready="/hello", listen=True, ready_timeout=30.0, cwd=None,
                    env=None, port=0, host=LOOPBACK, allow_root=True):
        """Starts valvectl with serving_flags(), then args (plus --port 0 --host 127.0.0.1 unless
        port/host are None), waits for its 'listening on' line, then until `ready` answers 200
        (None: do not wait)."""
        valve = Valve(args, self.tmpdir, cwd=cwd, env=env, port=port, host=host,
                      allow_root=allow_root)
        self._valves.append(valve)
        if listen:
            valve.wait_listening()
            if ready:
                valve.wait_ready(ready, timeout=ready_timeout)
        return valve

    def admin_token_file(self, prefix):
        """A fresh random admin token and the path of a 0600 file holding it (--admin-token-file)."""
        token = prefix + "-" + os.urandom(16).hex()
        path = os.path.join(self.tmpdir, "admin-token")
        with open(path, "w") as f:
            f.write(token + "\n")
        os.chmod(path, 0o600)
        return token, path

    def start_backend_valve(self, *args, ready="/hello", backend_args=(), **kwargs):
        return self.start_valve("--cmd", backend_cmd(*backend_args), *args, ready=ready, **kwargs)

    def track_process(self, popen):
        """A process the test started itself: killed by PID in tearDown."""
        self._pids.append(popen)
        return popen

    def close_before_stop(self, close):
        """close() runs first in tearDown, before any valvectl is stopped: a client connection
        still open then (a WebSocket, a browser's) would hold valvectl's graceful stop for all of
        its --graceful-timeout, past stop()'s own wait."""
        self._clients.append(close)
        return close

    def _test_failed(self):
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        if result is None:
            return False
        for test, _ in list(getattr(result, "errors", [])) + list(getattr(result, "failures", [])):
            if test is self or getattr(test, "test_case", None) is self:
                return True
        return False

    def tearDown(self):
        problems = []
        for close in reversed(self._clients):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - keep closing the others
                problems.append(f"closing a client: {exc!r}")
        for valve in reversed(self._valves):
            try:
                code, left = valve.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                problems.append(f"stopping valvectl {valve.pid}: {exc!r}")
                continue
            if left:
                details = ", ".join(f"{pid} ({(proc_info(pid) or ProcInfo(pid, 0, '?', 0, '?')).comm})"
                                    for pid in left)
                problems.append(f"valvectl {valve.pid} left processes behind: {details}")
                valve.kill_leftovers()
        for popen in reversed(self._pids):
            if popen.poll() is None:
                popen.kill()
                try:
                    popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    problems.append(f"helper process {popen.pid} did not die")
        if problems or self._test_failed():
            for valve in self._valves:
                sys.stderr.write(f"\n----- valvectl {valve.pid}: {' '.join(valve.argv[1:])}\n"
                                 f"{valve.log_tail()}\n----- end of log\n")
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        if problems:
            self.fail("; ".join(problems))

    # -- assertions shared by the test files
    def assertOnlyLiveTmpdirs(self, valve, what, timeout=15):
        """Eventually (valve removes them off its loop) the temporary directories in valvectl's
        TMPDIR are exactly those of its workers and templates still there (needs --admin)."""
        last = {}

        def settled():
            last["dirs"], last["owners"] = set(owned_tmpdirs(valve)), tmpdir_owners(valve.status())
            return last["dirs"] == last["owners"]
        try:
            wait_until(settled, timeout, message=f"only live workers' directories after {what}")
        except TimeoutError:
            self.fail(f"after {what}: directories of {sorted(last['dirs'])}, but workers and "
                      f"templates {sorted(last['owners'])}")

    def assertValveError(self, response, status):
        """valve's own error answer: the status, JSON {"error", "status", "request_id"}."""
        self.assertEqual(response.status, status, response)
        content_type = response.header("Content-Type") or ""
        self.assertTrue(content_type.startswith("application/json"), response)
        body = response.json()
        self.assertIsInstance(body.get("error"), str, body)
        self.assertTrue(body["error"], body)
        self.assertEqual(body.get("status"), status, body)
        self.assertIsInstance(body.get("request_id"), str, body)
        self.assertTrue(body["request_id"], body)
        return body

    def assertRetryAfter(self, response):
        value = response.header("Retry-After")
        self.assertIsNotNone(value, f"no Retry-After header: {response}")
        self.assertRegex(value.strip(), r"^\d+$|^[A-Z][a-z]{2}, ", response)
        return value
