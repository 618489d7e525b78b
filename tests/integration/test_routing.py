"""Several apps behind one valvectl, from a TOML config file (--config): routing by path prefix and
Host (longest prefix wins, prefix stripped or kept), 404 JSON when nothing matches, weighted sticky
splits measured over 10,000 keys, config mistakes reported with their lines (valvectl check), and
apps and routes changed by reload under load with real plumber workers, dropping no request."""

import http.client
import os
import re
import shutil
import signal
import subprocess
import unittest

from harness import (VALVECTL, ValveTestCase, Wrk, app_path, backend_cmd, is_alive,
                     wait_until)


def toml_string(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Routing(ValveTestCase):
    def write_config(self, text, name="valve.toml"):
        path = os.path.join(self.tmpdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def backend_app(self, name, extra=""):
        return (f"[apps.{name}]\ncmd = {toml_string(backend_cmd())}\n"
                f"worker-concurrency = 16\n{extra}\n")

    def test_prefix_and_host_routing(self):
        config = self.write_config(
            "n-max = 1\n" +
            self.backend_app("api", 'prefix = "/api"\nstrip-prefix = true') +
            self.backend_app("echo", 'prefix = "/echo"') +
            self.backend_app("tenant", 'prefix = "/"\nhostname = "tenant.test"') +
            self.backend_app("deep", 'prefix = "/api/deep"\nstrip-prefix = true'))
        valve = self.start_valve("--config", config, "--admin", "127.0.0.1:0", ready="/api/hello")

        # Stripped: the worker sees the path without the prefix, and the prefix in a header.
        response = valve.get("/api/echo?x=1")
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.header("Valve-App"), "api")
        sent = response.json()
        self.assertEqual(sent["target"], "/echo?x=1")
        headers = {name.lower(): value for name, value in sent["headers"]}
        self.assertEqual(headers["x-forwarded-prefix"], "/api")
        # Kept: the worker sees the whole path.
        response = valve.get("/echo?y=2")
        self.assertEqual(response.header("Valve-App"), "echo")
        self.assertEqual(response.json()["target"], "/echo?y=2")
        # The longest prefix wins, on whole path segments.
        response = valve.get("/api/deep/echo")
        self.assertEqual(response.header("Valve-App"), "deep")
        self.assertEqual(response.json()["target"], "/echo")
        self.assertEqual(valve.get("/api/deeper").header("Valve-App"), "api")
        # By Host (with or without a port); other hosts do not reach it.
        response = valve.get("/hello", headers={"Host": "Tenant.test:8080"})
        self.assertEqual((response.status, response.header("Valve-App")), (200, "tenant"))
        response = valve.get("/hello", headers={"Host": "other.test"})
        self.assertEqual(response.status, 404, response)
        self.assertIsNone(response.header("Valve-App"))
        body = response.json()
        self.assertEqual(body["status"], 404)
        self.assertIn("no route for other.test/hello", body["error"])
        self.assertEqual(response.header("Content-Type"), "application/json")
        # valve's own 404 keeps a kept-alive connection: the requests pipelined after it are served.
        with valve.raw() as conn:
            conn.send(b"GET /hello HTTP/1.1\r\nHost: other.test\r\n\r\n"
                      b"GET /hello HTTP/1.1\r\nHost: tenant.test\r\n\r\n")
            first, second = conn.read_response(), conn.read_response()
        self.assertEqual(first.status, 404, first)
        self.assertNotEqual(first.header("Connection"), "close", first)
        self.assertEqual((second.status, second.header("Valve-App")), (200, "tenant"), second)

        status = valve.status()
        apps = {a["name"]: a for a in status["apps"]}
        self.assertEqual(set(apps), {"api", "echo", "tenant", "deep"})
        self.assertGreaterEqual(apps["api"]["requests"], 2)
        self.assertEqual({w["app"] for w in status["workers"]}, set(apps))
        prefixes = {(r["hostname"], r["prefix"]) for r in status["routes"]}
        self.assertIn(("tenant.test", "/"), prefixes)
        metrics = valve.admin("GET", "/metrics").text()
        self.assertRegex(metrics, r'valve_requests_total\{app="api",code="2xx"\} [1-9]')
        self.assertRegex(metrics, r'valve_workers\{app="deep",state="ready"\} 1\b')
        # The access log and worker logs name the app.
        self.assertRegex(valve.log(), r"worker tenant/\d+ \(pid \d+\) ready")

        # Scaling names the app when there are several.
        response = valve.admin("POST", "/scale?n-max=2")
        self.assertEqual(response.status, 400, response)
        self.assertIn("several apps", response.json()["error"])
        response = valve.admin("POST", "/scale?app=api&n-max=3")
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json(), {"app": "api", "n_min": 1, "n_max": 3})
        response = valve.admin("POST", "/scale?app=nope&n-max=3")
        self.assertEqual(response.status, 400, response)
        # valvectl scale --app, and valvectl status naming each worker's app.
        admin = valve.admin_address()
        scale = subprocess.run([VALVECTL, "scale", "--admin", admin, "--app", "echo", "--n-max",
                                "4"], capture_output=True, text=True, timeout=30)
        self.assertEqual((scale.returncode, scale.stdout), (0, "scaled echo: n-min 1, n-max 4\n"),
                         scale)
        shown = subprocess.run([VALVECTL, "status", "--admin", admin], capture_output=True,
                               text=True, timeout=30)
        self.assertEqual(shown.returncode, 0, shown)
        for app in apps:
            self.assertRegex(shown.stdout, rf"(?m)^ *{app}/\d+ +\d+ +1 +ready ")

    def split_config(self, v1, v2, sticky="header:X-User"):
        return self.write_config(
            "n-max = 1\n" + self.backend_app("v1") + self.backend_app("v2") +
            f'[[routes]]\nprefix = "/"\nsplit = {{ v1 = {v1}, v2 = {v2} }}\n'
            f'sticky = "{sticky}"\n')

    def apps_for(self, valve, keys, header="X-User"):
        """The app that answers each key, over one kept-alive connection."""
        conn = http.client.HTTPConnection("127.0.0.1", valve.port, timeout=30)
        try:
            out = {}
            for key in keys:
                conn.request("GET", "/hello", headers={header: key})
                response = conn.getresponse()
                response.read()
                self.assertEqual(response.status, 200)
                out[key] = response.getheader("Valve-App")
            return out
        finally:
            conn.close()

    def test_weighted_split_is_sticky_and_within_two_points_over_10000_keys(self):
        config = self.split_config(90, 10)
        valve = self.start_valve("--config", config, "--admin", "127.0.0.1:0", ready="/hello")
        keys = [f"user-{i}" for i in range(10000)]
        first = self.apps_for(valve, keys)
        share = sum(1 for app in first.values() if app == "v2") / len(keys)
        self.assertLess(abs(share - 0.10), 0.02, f"v2 got {share:.3%} of keys, not 10%")
        # The same keys again land where they did.
        again = self.apps_for(valve, keys[:2000])
        self.assertEqual(again, {k: first[k] for k in keys[:2000]})

        # Weights change by reload: keys move only toward the app that grew, about 10% of them.
        self.split_config(80, 20)
        response = valve.admin("POST", "/reload", timeout=120)
        self.assertEqual(response.status, 200, response)
        after = self.apps_for(valve, keys[:4000])
        left_v2 = [k for k in after if first[k] == "v2" and after[k] != "v2"]
        self.assertEqual(left_v2, [], "a key on v2 left it though v2 only grew")
        moved = sum(1 for k in after if after[k] != first[k]) / len(after)
        self.assertLess(abs(moved - 0.10), 0.03, f"{moved:.1%} of keys moved")
        share = sum(1 for app in after.values() if app == "v2") / len(after)
        self.assertLess(abs(share - 0.20), 0.025)

        # Without the header, the client's address is the key: one client, one app.
        conn_apps = {valve.get("/hello").header("Valve-App") for _ in range(20)}
        self.assertEqual(len(conn_apps), 1)

    def test_split_by_cookie(self):
        config = self.split_config(50, 50, sticky="cookie:uid")
        valve = self.start_valve("--config", config, ready="/hello")
        seen = {}
        for i in range(200):
            cookie = f"theme=dark; uid=u{i}"
            apps = {valve.get("/hello", headers={"Cookie": cookie}).header("Valve-App")
                    for _ in range(2)}
            self.assertEqual(len(apps), 1, f"uid u{i} went to {apps}")
            seen[i] = apps.pop()
        share = sum(1 for a in seen.values() if a == "v1") / len(seen)
        self.assertTrue(0.35 < share < 0.65, share)

    def test_config_mistakes_are_listed_with_their_lines(self):
        bad = self.write_config(
            'nmax = 3\n'
            'timeout = "soon"\n'
            '[apps.a]\n'
            f'cmd = {toml_string(backend_cmd())}\n'
            'port = 4\n'
            '[[routes]]\n'
            'prefix = "/x"\n'
            'split = { a = 1, b = 1 }\n', name="bad.toml")
        check = subprocess.run([VALVECTL, "check", bad], capture_output=True, text=True,
                               timeout=30)
        self.assertEqual(check.returncode, 2, check)
        self.assertEqual(check.stdout, "")
        lines = check.stderr.splitlines()
        self.assertEqual(lines, [
            f"{bad}:1: nmax: unknown option (did you mean n-max?)",
            f'{bad}:2: timeout soon: expected seconds, like 30, 0.5 or 250ms',
            f"{bad}:5: port: an option of the whole server; set it at the top level, not for "
            "one app",
            f"{bad}:6: route /x: no app is named b",
        ])
        # Serving with it fails the same way, before anything starts.
        serve = subprocess.run([VALVECTL, "--config", bad, "--port", "0"], capture_output=True,
                               text=True, timeout=30)
        self.assertEqual(serve.returncode, 2, serve)
        self.assertIn(f"{bad}:1: nmax: unknown option", serve.stderr)
        # What the file names is checked too: a missing API file, with its app.
        missing = self.write_config('[apps.gone]\nfile = "nowhere.R"\nallow-root = true\n',
                                    name="missing.toml")
        check = subprocess.run([VALVECTL, "check", missing], capture_output=True, text=True,
                               timeout=30)
        self.assertEqual(check.returncode, 2, check)
        self.assertIn("app gone: file ", check.stderr)
        self.assertIn("nowhere.R: no such file", check.stderr)
        # A syntax error names its line.
        broken = self.write_config('port = 3000\n[apps.a\n', name="broken.toml")
        check = subprocess.run([VALVECTL, "check", broken], capture_output=True, text=True,
                               timeout=30)
        self.assertEqual(check.returncode, 2, check)
        self.assertRegex(check.stderr, re.escape(broken) + r":2: ")
        # Fine. (CI runs as root, where workers need allow-root or a user: the check knows.)
        with open(self.split_config(1, 1)) as f:
            text = f.read()
        good = self.write_config(("allow-root = true\n" if os.geteuid() == 0 else "") + text,
                                 name="good.toml")
        check = subprocess.run([VALVECTL, "check", good], capture_output=True, text=True,
                               timeout=30)
        self.assertEqual((check.returncode, check.stdout), (0, f"{good}: ok\n"), check)

    def r_app(self, name, version):
        """A copy of ops.R answering /hello with this version."""
        path = os.path.join(self.tmpdir, f"{name}.R")
        with open(app_path("ops.R")) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace('VERSION <- "v1"', f'VERSION <- "{version}"', 1))
        return path

    def test_reload_changes_apps_and_routes_under_load_without_a_failed_request(self):
        v1, v2 = self.r_app("v1", "one"), self.r_app("v2", "two")
        top = "n-min = 1\nn-max = 2\n"
        app_v1 = f"[apps.v1]\nfile = {toml_string(v1)}\n"
        app_v2 = f"[apps.v2]\nfile = {toml_string(v2)}\n"
        config = self.write_config(top + app_v1 + 'prefix = "/"\n')
        valve = self.start_valve("--config", config, "--admin", "127.0.0.1:0", ready="/hello",
                                 ready_timeout=60, env={"VALVE_TEST_DIR": self.tmpdir})
        self.assertEqual(valve.get("/hello").json()["version"], "one")
        wrk = Wrk(valve.url + "/hello", seconds=120, connections=8)
        try:
            # 1. A second app and a split: both serve, by key.
            self.write_config(top + app_v1 + app_v2 +
                              '[[routes]]\nprefix = "/"\nsplit = { v1 = 50, v2 = 50 }\n'
                              'sticky = "header:X-User"\n')
            valve.send_signal(signal.SIGHUP)
            wait_until(lambda: valve.status()["reload"]["state"] == "done", 120,
                       message="the first reload")
            versions = {valve.get("/hello", headers={"X-User": f"u{i}"}).json()["version"]
                        for i in range(40)}
            self.assertEqual(versions, {"one", "two"})
            old_v1 = {w["pid"] for w in valve.status()["workers"] if w["app"] == "v1"}
            # 2. v1 leaves: everything goes to v2, and v1's workers end.
            self.write_config(top + app_v2 + 'prefix = "/"\n')
            response = valve.admin("POST", "/reload", timeout=120)
            self.assertEqual(response.status, 200, response)
            for i in range(20):
                response = valve.get("/hello", headers={"X-User": f"u{i}"})
                self.assertEqual((response.json()["version"], response.header("Valve-App")),
                                 ("two", "v2"))
            wait_until(lambda: [a["name"] for a in valve.status()["apps"]] == ["v2"], 60,
                       message="v1 gone from the status")
            wait_until(lambda: not any(is_alive(p) for p in old_v1), 30,
                       message="v1's workers exited")
            # 3. A broken file changes nothing and says why.
            broken = self.write_config("n-min = 1\n[apps.v2]\nfile = 7\n")
            response = valve.admin("POST", "/reload", timeout=60)
            self.assertEqual(response.status, 502, response)
            self.assertIn(f"{broken}:3: file: ", response.json()["error"])
            self.assertEqual(valve.get("/hello").json()["version"], "two")
        finally:
            wrk.stop()
        result = wrk.result()
        self.assertGreater(result["requests"], 50, result["text"])
        self.assertEqual(result["non2xx"], 0, result["text"])
        self.assertEqual(result["socket_errors"], 0, result["text"])
        status = valve.status()
        self.assertEqual(status["totals"]["5xx"], 0)
        self.assertEqual(status["totals"]["crashes"], 0)
        metrics = valve.admin("GET", "/metrics").text()
        self.assertRegex(metrics, r'valve_reloads_total\{result="ok"\} 2\b')
        self.assertRegex(metrics, r'valve_reloads_total\{result="failed"\} 1\b')
        # v1's answers stay counted after it left.
        self.assertRegex(metrics, r'valve_requests_total\{app="v1",code="2xx"\} [1-9]')


if __name__ == "__main__":
    unittest.main()
