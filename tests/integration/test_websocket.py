"""WebSockets through valvectl to real plumber/httpuv workers (tests/apps/websocket.R echoes each
message; "pid" answers the worker's pid, "close" makes the worker close, "die" ends its process),
with the RFC 6455 client of wsclient.py: echo both ways, sockets count against
--worker-concurrency, --timeout does not cut a tunnel, either side's close ends it, a dying worker
closes it and is replaced, the access log, metrics and status show it, shutdown and reload give
it graceful-timeout. Bounded tunnels: an idle socket is closed at --tunnel-idle-timeout and its worker
serves the request waiting for it, a busy one at --tunnel-max-lifetime, a client that answers no
ping at --tunnel-ping-interval, while an active one or one that answers pings stays; past
--tunnel-workers-max a handshake gets 503. Upgrades other than WebSocket are served as plain HTTP
(native backend)."""

import json
import os
import signal
import threading
import time
import unittest

import wsclient
from harness import ValveTestCase, app_path, parallel, wait_until

API = app_path("websocket.R")


class WebSockets(ValveTestCase):
    def start(self, *args, **kwargs):
        return self.start_valve("-f", API, "--admin", "127.0.0.1:0", *args, ready="/hello",
                                **kwargs)

    def connect(self, valve, path="/ws", **kwargs):
        ws = wsclient.WebSocket.connect(valve.host, valve.port, path, **kwargs)
        ws.settimeout(15)
        self.close_before_stop(ws.abort)
        return ws

    def test_echo_both_ways_then_the_access_log_shows_101(self):
        valve = self.start("-n", "1", "--access-log", "-")
        ws = self.connect(valve, "/ws?room=1")
        self.assertIsNotNone(ws.handshake.header("X-Request-Id"))
        for i in range(300):
            text = f"message {i} " + "x" * (i * 7)
            ws.send_text(text)
            self.assertEqual(ws.recv_text(), text)
        big = "é" * 100_000  # 200 kB in one frame: past valve's write high-water mark
        ws.send_text(big)
        self.assertEqual(ws.recv_text(), big)
        # Sent back to back, read afterwards: the tunnel queues in both directions.
        for i in range(100):
            ws.send_text(f"burst {i}")
        self.assertEqual([ws.recv_text() for _ in range(100)], [f"burst {i}" for i in range(100)])
        ws.send_text("pid")
        pid = int(ws.recv_text())
        self.assertIn(pid, valve.worker_pids())
        status = valve.status()
        self.assertEqual([w["websockets"] for w in status["workers"]], [1])
        self.assertEqual(status["totals"]["websockets_open"], 1)
        self.assertEqual(status["requests_in_progress"], 1, "an open WebSocket is in progress")
        self.assertEqual(valve.metric("valve_websockets_open"), 1)
        ws.close()
        line = wait_until(lambda: [l for l in valve.stdout().splitlines() if "/ws?room=1" in l],
                          10, message="access log line")[0]
        self.assertIn('"GET /ws?room=1 HTTP/1.1" 101 ', line)
        sent = int(line.split('" 101 ')[1].split()[0])
        self.assertGreater(sent, 300_000, "bytes sent to the client through the tunnel")
        wait_until(lambda: valve.status()["totals"]["websockets_open"] == 0, 10,
                   message="the tunnel is gone")
        self.assertEqual(valve.metric("valve_websockets_total"), 1)
        self.assertEqual(valve.status()["workers"][0]["in_flight"], 0)
        self.assertEqual(valve.get("/hello").status, 200)

    def test_open_sockets_count_against_worker_concurrency(self):
        valve = self.start("-n", "1", "--worker-concurrency", "1", "--queue-timeout", "1")
        ws = self.connect(valve)
        ws.send_text("one")
        self.assertEqual(ws.recv_text(), "one")
        waited = valve.get("/hello", timeout=10)
        self.assertEqual(waited.status, 503, "the only slot is the open WebSocket's")
        self.assertGreater(waited.elapsed, 0.8, "it waited in the queue first")
        ws.send_text("still here")
        self.assertEqual(ws.recv_text(), "still here")
        ws.close()
        wait_until(lambda: valve.get("/hello").status == 200, 10, message="the slot is free again")

    def test_several_sockets_at_once_on_one_worker(self):
        valve = self.start("-n", "1", "--worker-concurrency", "3", "--queue-timeout", "1")
        sockets = [self.connect(valve) for _ in range(3)]
        wait_until(lambda: valve.status()["workers"][0]["websockets"] == 3, 10,
                   message="three WebSockets open")

        def talk(ws, n):
            def run():
                for i in range(50):
                    ws.send_text(f"{n}:{i}")
                    if ws.recv_text() != f"{n}:{i}":
                        return False
                return True
            return run

        self.assertEqual(parallel([talk(ws, n) for n, ws in enumerate(sockets)], 60), [True] * 3)
        with self.assertRaises(AssertionError) as refused:
            self.connect(valve)
        self.assertIn("503", str(refused.exception))
        self.assertEqual(valve.get("/hello", timeout=10).status, 503)
        sockets[0].close()
        fourth = self.connect(valve)
        fourth.send_text("fourth")
        self.assertEqual(fourth.recv_text(), "fourth")

    def test_timeout_does_not_cut_an_open_tunnel(self):
        valve = self.start("-n", "1", "--timeout", "1")
        ws = self.connect(valve)
        ws.send_text("pid")
        pid = int(ws.recv_text())
        timeouts = valve.status()["totals"]["timeouts"]  # (a slow first /hello may have had one)
        time.sleep(3)  # three request timeouts, idle
        ws.send_text("after a quiet while")
        self.assertEqual(ws.recv_text(), "after a quiet while")
        ws.send_text("pid")
        self.assertEqual(int(ws.recv_text()), pid)
        self.assertEqual(valve.status()["totals"]["timeouts"], timeouts)

    def test_worker_closing_the_socket_closes_the_client(self):
        valve = self.start("-n", "1")
        ws = self.connect(valve)
        ws.send_text("pid")
        pid = int(ws.recv_text())
        ws.send_text("close")  # the worker sends a close frame
        self.assertEqual(ws.recv(), (wsclient.OP_CLOSE, 1000))
        ws.send_frame(wsclient.OP_CLOSE, b"\x03\xe8")  # the reply; the worker then closes TCP
        self.assertTrue(ws.wait_eof(10), "valve closes the client once the worker closed")
        wait_until(lambda: valve.status()["totals"]["websockets_open"] == 0, 10,
                   message="the tunnel is gone")
        again = self.connect(valve)
        again.send_text("pid")
        self.assertEqual(int(again.recv_text()), pid, "the same worker serves on")

    def test_client_closing_the_socket_frees_the_worker(self):
        valve = self.start("-n", "1", "--worker-concurrency", "1")
        for i in range(5):
            ws = self.connect(valve)
            ws.send_text(f"round {i}")
            self.assertEqual(ws.recv_text(), f"round {i}")
            if i % 2:
                ws.abort()  # TCP close, no closing handshake
            else:
                ws.close()
        wait_until(lambda: valve.status()["workers"][0]["in_flight"] == 0, 10,
                   message="the worker is free")
        self.assertEqual(valve.get("/hello").status, 200)

    def test_dying_worker_closes_the_client_and_is_replaced(self):
        valve = self.start("-n", "1")
        ws = self.connect(valve)
        ws.send_text("pid")
        pid = int(ws.recv_text())
        ws.send_text("die")
        self.assertTrue(ws.wait_eof(10), "the client sees its connection close")
        self.assertTrue(valve.running())
        response = valve.wait_ready("/pid", timeout=30)
        self.assertNotEqual(response.json()["pid"], [pid])
        fresh = self.connect(valve)
        fresh.send_text("hello again")
        self.assertEqual(fresh.recv_text(), "hello again")

    def test_shutdown_gives_open_sockets_graceful_timeout(self):
        valve = self.start("-n", "1", "--graceful-timeout", "2")
        ws = self.connect(valve)
        valve.send_signal(signal.SIGTERM)
        valve.wait_log("waiting up to 2 s for 1 requests in progress")
        ws.send_text("during shutdown")
        self.assertEqual(ws.recv_text(), "during shutdown")
        started = time.monotonic()
        self.assertTrue(ws.wait_eof(15), "cut at the graceful timeout")
        self.assertGreater(time.monotonic() - started, 0.5)
        self.assertEqual(valve.wait_exit(15), 0)

    def test_reload_drains_a_worker_with_open_sockets_until_graceful_timeout(self):
        valve = self.start("-n", "1", "--graceful-timeout", "3")
        ws = self.connect(valve)
        ws.send_text("pid")
        old = int(ws.recv_text())
        response = valve.admin("POST", "/reload", timeout=120)
        self.assertEqual(response.status, 200, response.text())
        states = {w["pid"]: w["state"] for w in valve.status()["workers"]}
        self.assertEqual(states.get(old), "draining")
        ws.send_text("pid")
        self.assertEqual(int(ws.recv_text()), old, "the tunnel stays on its worker")
        self.assertNotEqual(valve.get("/pid").json()["pid"], [old], "new requests go to the new one")
        self.assertTrue(ws.wait_eof(15), "closed at graceful-timeout")
        valve.wait_log(r"closing 1 WebSocket still open 3 s after the worker began draining")
        wait_until(lambda: old not in valve.worker_pids(), 15, message="the old worker exits")

    # -- bounded tunnels

    def closed_by(self, valve, reason):
        return valve.metric(f'valve_tunnels_closed_total{{reason="{reason}"}}')

    def test_idle_socket_is_closed_at_its_limit_and_its_worker_serves_the_next_request(self):
        valve = self.start("-n", "1", "--tunnel-idle-timeout", "1.5", "--queue-timeout", "20")
        ws = self.connect(valve)
        ws.send_text("pid")
        pid = int(ws.recv_text())
        quiet_since = time.monotonic()
        # A plain request waits for the only worker, which the socket holds.
        waiting = threading.Thread(target=lambda: setattr(self, "waited", valve.get("/pid", timeout=20)))
        waiting.start()
        self.assertEqual(ws.recv(), (wsclient.OP_CLOSE, 1001), "a Close frame, going away")
        closed_after = time.monotonic() - quiet_since
        self.assertGreater(closed_after, 1.3)
        self.assertLess(closed_after, 5)
        self.assertTrue(ws.wait_eof(10), "then valve closes the connection")
        waiting.join(20)
        self.assertEqual(self.waited.status, 200)
        self.assertEqual(self.waited.json()["pid"], [pid], "the same worker, freed, not replaced")
        self.assertGreater(self.waited.elapsed, 1.0, "it waited for the socket's limit")
        valve.wait_log(r"closing its WebSocket to worker \d+: no data for 1.5 s "
                       r"\(tunnel-idle-timeout\)")
        self.assertEqual(self.closed_by(valve, "idle"), 1)
        self.assertEqual(self.closed_by(valve, "client"), 0)
        self.assertEqual(valve.status()["totals"]["websockets_open"], 0)
        self.assertEqual(valve.worker_pids(), [pid])
        again = self.connect(valve)  # and it takes a WebSocket again
        again.send_text("pid")
        self.assertEqual(int(again.recv_text()), pid)

    def test_active_socket_outlives_the_idle_timeout(self):
        valve = self.start("-n", "1", "--tunnel-idle-timeout", "1.5")
        ws = self.connect(valve)
        started = time.monotonic()
        sent = 0
        # Over two idle timeouts, a message every 0.25 s; the echoes are read afterwards, so that a
        # slow worker (R's first message, a loaded machine) cannot make the client look idle.
        while time.monotonic() - started < 4:
            ws.send_text(f"still here {sent}")
            sent += 1
            time.sleep(0.25)
        self.assertEqual([ws.recv_text() for _ in range(sent)],
                         [f"still here {i}" for i in range(sent)])
        self.assertEqual(valve.status()["totals"]["websockets_open"], 1)
        self.assertEqual(valve.metric("valve_tunnels_closed_total{reason=\"idle\"}"), 0)
        ws.close()

    def test_lifetime_closes_even_a_busy_socket(self):
        valve = self.start("-n", "1", "--tunnel-max-lifetime", "2")
        ws = self.connect(valve)
        opened = time.monotonic()
        code = None
        while time.monotonic() - opened < 10:
            ws.send_text("busy")
            opcode, data = ws.recv()
            if opcode == wsclient.OP_CLOSE:
                code = data
                break
            self.assertEqual(data, "busy")
            time.sleep(0.05)
        self.assertEqual(code, 1001)
        self.assertGreater(time.monotonic() - opened, 1.8)
        self.assertTrue(ws.wait_eof(10))
        self.assertEqual(self.closed_by(valve, "lifetime"), 1)
        self.assertEqual(valve.get("/hello").status, 200)

    def test_pings_keep_a_quiet_socket_whose_client_answers(self):
        valve = self.start("-n", "1", "--tunnel-idle-timeout", "0", "--tunnel-ping-interval", "0.3")
        ws = self.connect(valve)
        pings = 0
        deadline = time.monotonic() + 2.5
        ws.settimeout(0.1)
        while time.monotonic() < deadline:  # reads and answers pings, sends nothing else
            try:
                fin, opcode, payload = ws.recv_frame()
            except TimeoutError:
                continue
            self.assertEqual((fin, opcode, payload), (True, wsclient.OP_PING, b"valve"))
            ws.send_frame(wsclient.OP_PONG, payload)  # passed on to the worker, which ignores it
            pings += 1
        ws.settimeout(15)
        self.assertGreaterEqual(pings, 4)
        ws.send_text("after the pings")
        self.assertEqual(ws.recv_text(), "after the pings")
        self.assertEqual(self.closed_by(valve, "ping"), 0)

    def test_client_that_answers_no_ping_is_closed_and_its_worker_freed(self):
        valve = self.start("-n", "1", "--tunnel-idle-timeout", "0", "--tunnel-ping-interval", "0.5")
        ws = self.connect(valve)
        ws.send_text("pid")
        pid = int(ws.recv_text())
        silent_since = time.monotonic()  # neither reads nor answers from now on
        wait_until(lambda: self.closed_by(valve, "ping") == 1, 10, message="closed for no pong")
        self.assertGreater(time.monotonic() - silent_since, 0.9, "a ping, then as long for its pong")
        valve.wait_log(r"no answer to a ping within 0.5 s \(tunnel-ping-interval\)")
        self.assertEqual(valve.get("/pid").json()["pid"], [pid])
        self.assertEqual(valve.status()["totals"]["websockets_open"], 0)
        ws.settimeout(5)
        frames = []
        with self.assertRaises((wsclient.Closed, ConnectionResetError)):
            while True:
                frames.append(ws.recv_frame()[1])
        self.assertEqual(frames, [wsclient.OP_PING], "the unanswered ping, then the end")

    def test_sockets_hold_at_most_tunnel_workers_max_workers(self):
        # n-max 2: WebSockets may hold one worker, the other is kept for plain requests.
        valve = self.start("-n", "2", "--queue-timeout", "20")
        ws = self.connect(valve)
        ws.send_text("pid")
        held = int(ws.recv_text())
        refused = wsclient.handshake(valve.host, valve.port, "/ws")
        self.close_before_stop(refused.sock.close)
        self.assertEqual(refused.status, 503)
        self.assertIsNotNone(refused.header("Retry-After"))
        self.assertEqual(refused.header("Content-Type"), "application/json")
        body = refused.rest
        while len(body) < int(refused.header("Content-Length")):
            body += refused.sock.recv(65536)
        self.assertIn("tunnel-workers-max", json.loads(body)["error"])
        self.assertEqual(valve.metric("valve_tunnels_refused_total"), 1)
        plain = valve.get("/pid", timeout=30)
        self.assertEqual(plain.status, 200, "a plain request gets the other worker")
        self.assertNotEqual(plain.json()["pid"], [held])
        ws.close()
        wait_until(lambda: valve.status()["totals"]["websockets_open"] == 0, 10,
                   message="the socket is gone")
        again = self.connect(valve)
        again.send_text("echo")
        self.assertEqual(again.recv_text(), "echo")


class OtherUpgrades(ValveTestCase):
    """The native backend answers an upgrade request as a plain one, then closes."""

    def test_refused_websocket_is_an_ordinary_response(self):
        valve = self.start_backend_valve("-n", "1")
        hs = wsclient.handshake(valve.host, valve.port, "/echo")
        self.close_before_stop(hs.sock.close)
        self.assertEqual(hs.status, 200)
        body = hs.rest
        length = int(hs.header("Content-Length") or 0)
        while len(body) < length:
            body += hs.sock.recv(65536)
        headers = {k.lower(): v for k, v in json.loads(body[:length])["headers"]}
        self.assertEqual(headers.get("upgrade"), "websocket", "the worker was asked to upgrade")
        self.assertIn("sec-websocket-key", headers)

    def test_h2c_upgrade_is_served_as_http_1_1(self):
        valve = self.start_backend_valve("-n", "1")
        with valve.raw() as conn:
            for _ in range(2):  # the connection stays usable for plain HTTP
                response = conn.request("GET", "/echo", [("Connection", "Upgrade, HTTP2-Settings"),
                                                         ("Upgrade", "h2c"),
                                                         ("HTTP2-Settings", "AAMAAABkAAQAoAAA")])
                self.assertEqual(response.status, 200)
                names = {k.lower() for k, _ in response.json()["headers"]}
                self.assertFalse(names & {"upgrade", "http2-settings", "connection"}, names)

    def test_websocket_post_with_a_body_is_served_plainly(self):
        valve = self.start_backend_valve("-n", "1")
        with valve.raw() as conn:
            response = conn.request("POST", "/echo", [("Connection", "Upgrade"),
                                                      ("Upgrade", "websocket")], body=b"abc")
            self.assertEqual(response.status, 200)
            self.assertEqual(response.json()["method"], "POST")
            self.assertEqual(conn.request("GET", "/hello").status, 200)


if __name__ == "__main__":
    unittest.main(verbosity=2)
