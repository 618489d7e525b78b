"""--type shiny: a real Shiny app (tests/apps/shiny) in R workers behind valvectl, driven by
headless Chromium through its DevTools protocol (over wsclient.py): the page loads, typing into
the input changes the output (computed by the R session over its WebSocket), two browser sessions
(two cookie jars) land on different workers and each keeps its own; a session whose worker is
gone is pinned to another with a new cookie."""

import json
import os
import re
import signal
import subprocess
import tempfile
import time
import unittest

import wsclient
from harness import (TAG_VARIABLE, ValveTestCase, app_path, run_valvectl, tagged_processes,
                     wait_until)

CHROMIUM = os.environ.get("VALVE_CHROMIUM", "/usr/bin/chromium")
APP = app_path("shiny")
COOKIE_RE = re.compile(r"^valve_worker=([0-9a-f]{32}); Path=/; HttpOnly; SameSite=Lax$")


class DevTools:
    """One headless Chromium with remote debugging on a port it picks, and a WebSocket to its
    browser endpoint. Commands to a page go through flattened sessions (Target.attachToTarget)."""

    def __init__(self, test):
        self.profile = tempfile.mkdtemp(prefix="chromium-", dir=test.tmpdir)
        self.tag = os.urandom(8).hex()
        # TMPDIR too: Chromium's org.chromium.Chromium.* scratch directories stay in the test's.
        env = dict(os.environ, HOME=self.profile, XDG_CONFIG_HOME=self.profile,
                   XDG_CACHE_HOME=self.profile, TMPDIR=self.profile)
        env[TAG_VARIABLE] = self.tag
        argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                f"--user-data-dir={self.profile}", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--remote-debugging-port=0", "about:blank"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        test.close_before_stop(self.close)
        port_file = os.path.join(self.profile, "DevToolsActivePort")

        def read_port_file():  # "PORT\n/devtools/browser/ID\n", once Chromium listens
            try:
                with open(port_file) as f:
                    words = f.read().split()
            except FileNotFoundError:
                return None
            return words if len(words) == 2 else None

        port, path = wait_until(read_port_file, 30, message="Chromium's DevToolsActivePort")
        self.ws = wsclient.WebSocket.connect("127.0.0.1", int(port), path)
        self.ws.settimeout(30)
        self.next_id = 0

    def call(self, method, session=None, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send_text(json.dumps(message))
        while True:  # events are skipped: the tests poll the page instead
            reply = json.loads(self.ws.recv_text())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def open_page(self, url):
        """A page in a new browser context (its own cookie jar); returns (context, session)."""
        context = self.call("Target.createBrowserContext")["browserContextId"]
        target = self.call("Target.createTarget", url=url, browserContextId=context)["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        return context, session

    def evaluate(self, session, expression):
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def text_of(self, session, element_id):
        return self.evaluate(session, f"(function() {{ var e = document.getElementById("
                                      f"{json.dumps(element_id)}); return e ? e.innerText : null; }})()")

    def wait_text(self, session, element_id, predicate, timeout=30):
        return wait_until(lambda: (lambda t: t if t is not None and predicate(t) else None)(
            self.text_of(session, element_id)), timeout, 0.1,
            message=f"#{element_id} as expected")

    def type_into(self, session, element_id, text):
        """Focuses the input, selects its text and types over it, as a user does."""
        self.evaluate(session, f"(function() {{ var e = document.getElementById("
                               f"{json.dumps(element_id)}); e.focus(); e.select(); }})()")
        self.call("Input.insertText", session, text=text)

    def cookies(self, context):
        return self.call("Storage.getCookies", browserContextId=context)["cookies"]

    def close(self):
        try:
            self.ws.abort()
        except AttributeError:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its helpers share its process group
        except ProcessLookupError:
            pass
        try:
            wait_until(lambda: not tagged_processes(self.tag), 5, message="chromium gone")
        except TimeoutError:
            for pid in tagged_processes(self.tag):  # crashpad handlers leave the group
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)


class Shiny(ValveTestCase):
    def start(self, *args):
        return self.start_valve("--type", "shiny", "-f", APP, "--admin", "127.0.0.1:0", *args,
                                ready="/", ready_timeout=60)

    def session_pid(self, browser, session):
        text = browser.wait_text(session, "pid", lambda t: t.startswith("pid "))
        return int(text.split()[1])

    def test_two_browser_sessions_each_on_its_own_worker(self):
        if not os.access(CHROMIUM, os.X_OK):
            self.fail(f"{CHROMIUM} not found: run scripts/install-deps (it installs chromium)")
        # One request at a time decides where a new session goes: with A's WebSocket open on
        # its worker, B's first page load goes to the other worker.
        valve = self.start("-n", "2", "--n-min", "2", "--worker-concurrency", "1")
        wait_until(lambda: [w["state"] for w in valve.status()["workers"]] == ["ready"] * 2, 60,
                   message="two ready workers")
        browser = DevTools(self)
        sessions = {}
        for name in ("a", "b"):
            context, session = browser.open_page(valve.url + "/")
            browser.wait_text(session, "greeting", lambda t: t == "Hello, WORLD!")
            sessions[name] = (context, session, self.session_pid(browser, session))
            wait_until(lambda: sum(w["websockets"] for w in valve.status()["workers"]) ==
                       len(sessions), 15, message="the session's WebSocket is open")
        pids = {name: s[2] for name, s in sessions.items()}
        self.assertNotEqual(pids["a"], pids["b"], "the second session went to the other worker")
        self.assertEqual(sorted(pids.values()), valve.worker_pids())

        cookies = {}
        for name, (context, _, _) in sessions.items():
            jar = [c for c in browser.cookies(context) if c["name"] == "valve_worker"]
            self.assertEqual(len(jar), 1, jar)
            self.assertTrue(jar[0]["httpOnly"])
            self.assertEqual(jar[0]["sameSite"], "Lax")
            self.assertEqual(jar[0]["path"], "/")
            cookies[name] = jar[0]["value"]
        self.assertNotEqual(cookies["a"], cookies["b"])

        for round_ in range(3):
            for name, (context, session, pid) in sessions.items():
                word = f"{name}{round_}x"
                browser.type_into(session, "name", word)
                browser.wait_text(session, "greeting", lambda t: t == f"Hello, {word.upper()}!")
                self.assertEqual(self.session_pid(browser, session), pid)
        # A new page load of the same browser session goes back to its worker.
        context, session, pid = sessions["a"]
        browser.call("Page.reload", session)
        browser.wait_text(session, "greeting", lambda t: t == "Hello, WORLD!")
        self.assertEqual(self.session_pid(browser, session), pid)
        self.assertEqual([c["value"] for c in browser.cookies(context)
                          if c["name"] == "valve_worker"], [cookies["a"]])

    def test_a_shiny_app_in_a_config_file_beside_a_plumber_api(self):
        if not os.access(CHROMIUM, os.X_OK):
            self.fail(f"{CHROMIUM} not found: run scripts/install-deps (it installs chromium)")
        config = os.path.join(self.tmpdir, "valve.toml")
        with open(config, "w") as f:
            f.write(f'[apps.dash]\ntype = "shiny"\nfile = {json.dumps(APP)}\n'
                    f'prefix = "/dash"\nstrip-prefix = true\n'
                    f'[apps.api]\nfile = {json.dumps(app_path("ops.R"))}\nprefix = "/api"\n'
                    f'strip-prefix = true\n')
        valve = self.start_valve("--config", config, "--admin", "127.0.0.1:0", ready="/api/hello",
                                 ready_timeout=60, env={"VALVE_TEST_DIR": self.tmpdir})
        apps = {a["name"]: a for a in valve.status()["apps"]}
        self.assertEqual(apps["dash"]["config"]["type"], "shiny")
        self.assertEqual(apps["api"]["config"]["type"], "plumber")
        browser = DevTools(self)
        context, session = browser.open_page(valve.url + "/dash/")
        browser.wait_text(session, "greeting", lambda t: t == "Hello, WORLD!", timeout=60)
        browser.type_into(session, "name", "routed")
        browser.wait_text(session, "greeting", lambda t: t == "Hello, ROUTED!")
        self.assertEqual(valve.get("/api/hello").header("Valve-App"), "api")
        self.assertEqual(valve.get("/dash/").header("Valve-App"), "dash")

    def test_cookie_pins_requests_and_a_gone_worker_is_replaced_in_the_cookie(self):
        valve = self.start("-n", "2", "--n-min", "2", "--access-log", "-")
        first = valve.get("/", headers={"X-Request-Id": "pin-0"})
        self.assertEqual(first.status, 200)
        self.assertIn("shiny", first.text())
        token = COOKIE_RE.match(first.header("Set-Cookie", "")).group(1)
        # Pinned: no new cookie, and every request lands on the same worker.
        for i in range(1, 6):
            pinned = valve.get("/", headers={"Cookie": f"other=1; valve_worker={token}",
                                             "X-Request-Id": f"pin-{i}"})
            self.assertEqual(pinned.status, 200)
            self.assertIsNone(pinned.header("Set-Cookie"))
        served = wait_until(lambda: (lambda ws: ws if len(ws) == 6 else None)(
            re.findall(r'"GET / HTTP/1.1" 200 \d+ id=pin-\d worker=(\d+)', valve.stdout())), 10,
            message="six access log lines")
        self.assertEqual(len(set(served)), 1, served)
        # An unknown token (a worker gone, or from another valve): pinned anew.
        stale = valve.get("/", headers={"Cookie": "valve_worker=" + "0" * 32})
        self.assertNotEqual(COOKIE_RE.match(stale.header("Set-Cookie", "")).group(1), "0" * 32)
        # The session's worker dies: the next request goes to a live worker and gets its cookie.
        worker_id = int(served[0])
        pid = next(w["pid"] for w in valve.status()["workers"] if w["id"] == worker_id)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: pid not in valve.worker_pids(), 10, message="the worker is gone")
        moved = valve.get("/", headers={"Cookie": f"valve_worker={token}"})
        self.assertEqual(moved.status, 200)
        new_token = COOKIE_RE.match(moved.header("Set-Cookie", "")).group(1)
        self.assertNotEqual(new_token, token)
        again = valve.get("/", headers={"Cookie": f"valve_worker={new_token}"})
        self.assertIsNone(again.header("Set-Cookie"))

    def test_shiny_default_concurrency_and_readiness(self):
        valve = self.start("-n", "1", "--queue-timeout", "1")
        status = valve.status()
        self.assertEqual(status["config"]["type"], "shiny")
        self.assertEqual(status["config"]["worker-concurrency"], 0)
        self.assertEqual([w["state"] for w in status["workers"]], ["ready"])
        # 20 WebSockets (sessions) at once on the one worker, each served.
        sockets = []
        for _ in range(20):
            ws = wsclient.WebSocket.connect(valve.host, valve.port, "/websocket/")
            self.close_before_stop(ws.abort)
            sockets.append(ws)
        wait_until(lambda: valve.status()["workers"][0]["websockets"] == 20, 15,
                   message="20 WebSockets open on the worker")
        hs = wsclient.handshake(valve.host, valve.port, "/websocket/")
        self.close_before_stop(hs.sock.close)
        self.assertEqual(hs.status, 503, "a 21st new session waits for room, then 503")
        sockets[0].abort()
        wait_until(lambda: valve.get("/").status == 200, 10, message="room again")

    def test_bad_app_directory_is_refused_naming_it(self):
        code, _, err, _, _ = run_valvectl(["--type", "shiny", "-f", app_path("")])
        self.assertEqual(code, 2, err)
        self.assertIn("not a Shiny app directory", err)
        code, _, err, _, _ = run_valvectl(["--type", "flask", "-f", APP])
        self.assertEqual(code, 2, err)
        self.assertIn("type flask: expected plumber or shiny", err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
