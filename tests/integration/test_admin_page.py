"""The admin interface's live page (GET /) in headless Chromium against a real valvectl: the page
fetches status by itself and shows every worker and the totals, and it renders to a real image.
With --admin-token-file, the page asks for the token, keeps it in the tab's sessionStorage and sends
it as an Authorization header: never in a URL, nor in valvectl's log."""

import html.parser
import http.client
import json
import os
import signal
import struct
import subprocess
import tempfile
import unittest
import zlib

from harness import TAG_VARIABLE, ValveTestCase, tagged_processes, wait_until
from test_shiny import DevTools

CHROMIUM = os.environ.get("VALVE_CHROMIUM", "/usr/bin/chromium")
ADMIN_RE = r"admin interface on http://(\[[^\]]+\]|[^\s:/]+):(\d+)"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PageDom(html.parser.HTMLParser):
    """What the test reads from the DOM Chromium dumped: the data-pid of each row of
    <table id="workers">, the text of each <dd data-total="KEY">, the text of elements by id."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
            "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.workers_depth = None
        self.worker_pids = []
        self.totals = {}
        self.text_by_id = {}
        self.body_classes = set()
        self._open = []  # [depth, store, key, pieces] of elements whose text is being collected

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body_classes = set((attrs.get("class") or "").split())
        if tag == "table" and attrs.get("id") == "workers":
            self.workers_depth = self.depth
        if tag == "tr" and self.workers_depth is not None and "data-pid" in attrs:
            self.worker_pids.append(attrs["data-pid"])
        if tag in self.VOID:
            return
        self.depth += 1
        if "data-total" in attrs:
            self._open.append([self.depth, self.totals, attrs["data-total"], []])
        if "id" in attrs:
            self._open.append([self.depth, self.text_by_id, attrs["id"], []])

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        while self._open and self._open[-1][0] == self.depth:
            _, store, key, pieces = self._open.pop()
            store[key] = "".join(pieces).strip()
        self.depth -= 1
        if self.workers_depth is not None and self.depth == self.workers_depth:
            self.workers_depth = None

    def handle_data(self, data):
        for entry in self._open:
            entry[3].append(data)


def png_facts(data):
    """(width, height, distinct byte values in the decompressed image data) of a PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise AssertionError(f"not a PNG: starts with {data[:16]!r}")
    pos, width, height, idat = len(PNG_SIGNATURE), None, None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if width is None or not idat:
        raise AssertionError("PNG without IHDR or IDAT")
    return width, height, len(set(zlib.decompress(b"".join(idat))))


class AdminPage(ValveTestCase):
    def setUp(self):
        if not os.access(CHROMIUM, os.X_OK):
            self.fail(f"{CHROMIUM} not found: run scripts/install-deps (it installs chromium)")
        super().setUp()

    def admin_get(self, path, timeout=10.0):
        conn = http.client.HTTPConnection(self.admin_host, self.admin_port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type") or "", response.read()
        finally:
            conn.close()

    def status(self):
        code, content_type, body = self.admin_get("/status")
        self.assertEqual(code, 200, body[:300])
        self.assertTrue(content_type.startswith("application/json"), content_type)
        return json.loads(body)

    def chromium(self, *args, timeout=60.0):
        """Runs headless Chromium on its own profile in the test's tmpdir, in a session of its own,
        and returns its stdout. Afterwards, even on a timeout, kills its process group (by the PID
        started here), then whatever carries its environment tag (crashpad handlers call setsid)."""
        profile = tempfile.mkdtemp(prefix="chromium-", dir=self.tmpdir)
        argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--hide-scrollbars", "--virtual-time-budget=5000"]
        tag = os.urandom(8).hex()
        # TMPDIR too: Chromium's org.chromium.Chromium.* scratch directories stay in the test's.
        env = dict(os.environ, HOME=profile, XDG_CONFIG_HOME=profile, XDG_CACHE_HOME=profile,
                   TMPDIR=profile)
        env[TAG_VARIABLE] = tag
        proc = subprocess.Popen(argv + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)

        def kill_all(grace):
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # helpers (zygote, renderers) in its group
            except ProcessLookupError:
                pass
            try:
                wait_until(lambda: not tagged_processes(tag), grace, message="chromium gone")
            except TimeoutError:
                for pid in tagged_processes(tag):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_all(0)
            out, err = proc.communicate(timeout=10)
            self.fail(f"chromium still running after {timeout} s: "
                      f"{err.decode(errors='replace')[-2000:]}")
        finally:
            kill_all(5)
            if proc.poll() is None:
                proc.wait(timeout=10)
        self.assertEqual(proc.returncode, 0,
                         f"chromium {' '.join(args)} exited with {proc.returncode}:\n"
                         f"{err.decode(errors='replace')[-2000:]}")
        return out.decode("utf-8", "replace")

    def test_page_shows_workers_and_totals(self):
        valve = self.start_backend_valve("--n-max", "3", "--n-min", "2", "--admin", "127.0.0.1:0")
        match = valve.wait_log(ADMIN_RE)
        self.admin_host, self.admin_port = match.group(1).strip("[]"), int(match.group(2))
        url = f"http://{match.group(1)}:{self.admin_port}/"

        sent = 7
        for _ in range(sent):
            self.assertEqual(valve.get("/hello", timeout=10).status, 200)
        wait_until(lambda: sum(w["state"] == "ready" for w in self.status()["workers"]) == 2, 15,
                   message="two ready workers in /status")

        code, content_type, body = self.admin_get("/")
        self.assertEqual(code, 200)
        self.assertTrue(content_type.startswith("text/html"), content_type)
        self.assertIn(b'id="workers"', body)

        dom = PageDom()
        dom.feed(self.chromium("--dump-dom", url))
        dom.close()
        status = self.status()
        pids = sorted(str(w["pid"]) for w in status["workers"])
        self.assertEqual(sorted(int(p) for p in pids), valve.worker_pids(),
                         "/status does not list valvectl's workers")
        self.assertEqual(sorted(dom.worker_pids), pids, "one row per worker, with its data-pid")
        self.assertNotIn("down", dom.body_classes, f"page shows disconnected: {dom.text_by_id}")
        self.assertEqual(dom.text_by_id.get("state"), status["state"])
        self.assertEqual(dom.text_by_id.get("version"), status["version"])
        shown = dom.totals.get("requests", "")
        self.assertRegex(shown, r"^\d+$", f"totals: {dom.totals}")
        self.assertGreaterEqual(int(shown), sent)
        self.assertLessEqual(int(shown), status["totals"]["requests"])

        shot = os.path.join(self.tmpdir, "admin.png")
        self.chromium(f"--screenshot={shot}", "--window-size=1200,800", url)
        with open(shot, "rb") as f:
            data = f.read()
        width, height, distinct = png_facts(data)
        self.assertEqual((width, height), (1200, 800))
        self.assertGreater(len(data), 8000, "screenshot looks blank")
        self.assertGreater(distinct, 32, "screenshot looks blank")

    def test_page_asks_for_the_token_and_sends_it_as_a_header(self):
        token, token_file = self.admin_token_file("page")
        valve = self.start_backend_valve("--n-min", "2", "--n-max", "3", "--admin", "127.0.0.1:0",
                                         "--admin-token-file", token_file,
                                         "--access-log", "-", "--log-level", "debug")
        match = valve.wait_log(ADMIN_RE)
        url = f"http://{match.group(1)}:{match.group(2)}/"
        valve.admin_token = token
        wait_until(lambda: sum(w["state"] == "ready" for w in valve.status()["workers"]) == 2, 15,
                   message="two ready workers in /status")
        browser = DevTools(self)

        def body_classes(session):
            classes = browser.evaluate(session, "document.body ? document.body.className : ''")
            return set((classes or "").split())  # before the page has loaded: none

        def rows(session):
            return browser.evaluate(session, "Array.from(document.querySelectorAll("
                                             "'#workers tbody tr[data-pid]')).map(r => r.dataset.pid)")

        # Without a token: the form, and no data.
        context, session = browser.open_page(url)
        wait_until(lambda: "locked" in body_classes(session), 15, 0.1, message="the token form")
        self.assertEqual(rows(session), [])
        self.assertEqual(browser.text_of(session, "state"), "–")
        # A wrong token: refused, forgotten, asked again.
        browser.type_into(session, "token", "wrong-" + token)
        browser.evaluate(session, "document.getElementById('login').requestSubmit()")
        browser.wait_text(session, "login-error", lambda t: t == "That token was refused.")
        self.assertIn("locked", body_classes(session))
        self.assertIsNone(browser.evaluate(session, "sessionStorage.getItem('valve-admin-token')"))
        # The right one: the workers, the token kept in this tab only, the URL unchanged.
        browser.type_into(session, "token", token)
        browser.evaluate(session, "document.getElementById('login').requestSubmit()")
        pids = sorted(str(p) for p in valve.worker_pids())
        wait_until(lambda: sorted(rows(session)) == pids, 15, 0.1, message="one row per worker")
        self.assertEqual(body_classes(session) & {"locked", "down"}, set())
        self.assertIn("authed", body_classes(session))
        self.assertEqual(browser.text_of(session, "state"), valve.status()["state"])
        self.assertEqual(browser.evaluate(session, "sessionStorage.getItem('valve-admin-token')"),
                         token)
        self.assertEqual(browser.evaluate(session, "location.href"), url)
        self.assertEqual(browser.evaluate(session, "document.getElementById('token').value"), "")
        # It keeps polling with the token: the totals follow new requests.
        for _ in range(3):
            self.assertEqual(valve.get("/hello", timeout=10).status, 200)
        wait_until(lambda: int(browser.evaluate(session, "document.querySelector("
                                                         "'[data-total=requests]').textContent")
                               or 0) >= 3, 15, 0.1, message="the totals updated")
        # Another browser context (another tab's sessionStorage) is asked again.
        _, other = browser.open_page(url)
        wait_until(lambda: "locked" in body_classes(other), 15, 0.1, message="the form again")
        # "forget token" locks the page.
        browser.evaluate(session, "document.getElementById('forget').click()")
        wait_until(lambda: "locked" in body_classes(session), 15, 0.1, message="locked again")
        self.assertIsNone(browser.evaluate(session, "sessionStorage.getItem('valve-admin-token')"))
        # The token never reached a URL or a log line.
        self.assertNotIn(token, valve.log())
        self.assertNotIn(token, valve.stdout())
        history = browser.evaluate(session, "JSON.stringify(performance.getEntries().map("
                                            "e => e.name))")
        self.assertIn("/status", history)
        self.assertNotIn(token, history)


if __name__ == "__main__":
    unittest.main(verbosity=2)
