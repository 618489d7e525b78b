"""Slow and excess clients: 2,000 connections dribbling a request head byte by byte neither slow a
normal client nor outlive --header-timeout; past --max-connections a new connection gets a clear
503 and is closed."""

import resource
import socket
import statistics
import threading
import time
import unittest

from harness import ValveTestCase, wait_until

SLOW = 2000


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        raise AssertionError(f"need {need} open files, the hard limit is {hard}")


class SlowClients(ValveTestCase):
    def connect_many(self, valve, n):
        socks = []
        for _ in range(n):
            s = socket.create_connection((valve.host, valve.port), timeout=10)
            socks.append(s)
        return socks

    def test_two_thousand_slow_heads_do_not_slow_a_normal_client(self):
        raise_fd_limit(SLOW + 200)
        valve = self.start_backend_valve("-n", "2", "--header-timeout", "3")
        socks = self.connect_many(valve, SLOW)
        stop = threading.Event()

        def dribble():  # one byte of a head on each connection, every second
            head = b"GET /hello HTTP/1.1\r\nHost: a\r\n"
            i = 0
            while not stop.is_set() and i < len(head):
                for s in socks:
                    try:
                        s.send(head[i:i + 1])
                    except OSError:
                        pass
                i += 1
                stop.wait(1.0)

        dribbler = threading.Thread(target=dribble, daemon=True)
        dribbler.start()
        try:
            latencies = []
            for _ in range(40):
                response = valve.get("/hello", timeout=10)
                self.assertEqual(response.status, 200)
                latencies.append(response.elapsed)
                time.sleep(0.02)
            # Loose sanity bounds: a served request is not held up behind the slow heads.
            self.assertLess(statistics.median(latencies), 0.2, latencies)
            self.assertLess(max(latencies), 2.0, latencies)
        finally:
            stop.set()
            dribbler.join(10)

        # Each slow connection gets 408 at --header-timeout and is closed.
        def answered_and_closed(s):
            data = b""
            s.settimeout(10)
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        return data
                    data += chunk
            except ConnectionResetError:
                return data

        sample = socks[:: SLOW // 50]
        for s in sample:
            data = answered_and_closed(s)
            self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data[:200])
        for s in socks:
            s.close()
        self.assertEqual(valve.get("/hello").status, 200)

    def test_past_max_connections_a_new_connection_gets_503(self):
        valve = self.start_backend_valve("-n", "1", "--max-connections", "50",
                                         "--header-timeout", "30")
        held = self.connect_many(valve, 50)
        time.sleep(0.3)  # accepted and counted
        try:
            with valve.raw(timeout=10) as conn:
                response = conn.read_response()
                self.assertValveError(response, 503)
                self.assertIn("too many connections: 50 are open (max-connections)",
                              response.json()["error"])
                self.assertTrue(conn.wait_closed(5))
        finally:
            for s in held:
                s.close()
        wait_until(lambda: valve.get("/hello", timeout=5).status == 200, 10,
                   message="served again once the held connections closed")


if __name__ == "__main__":
    unittest.main()
