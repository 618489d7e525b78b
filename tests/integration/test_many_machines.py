"""Many machines: two valvectl instances (two loopback ports standing in for two hosts) behind a
real nginx. One valvectl is killed with SIGKILL under load; nginx's proxy_next_upstream moves the
requests it had to the other, and every request through nginx still succeeds. The nginx
configuration is the one docs/deployment.md shows."""

import http.client
import json
import os
import signal
import subprocess
import time
import unittest

from harness import LOOPBACK, SteadyLoad, ValveTestCase, example_path, free_port, nginx_conf, \
    wait_until

NGINX_HTTP = """\
  upstream valve {{
    server 127.0.0.1:{port_a} max_fails=1 fail_timeout=10s;
    server 127.0.0.1:{port_b} max_fails=1 fail_timeout=10s;
    keepalive 16;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://valve;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_connect_timeout 2s;
      proxy_read_timeout 60s;
      # A host that is down, or answers 502/503/504, is skipped: the request goes to the next.
      proxy_next_upstream error timeout http_502 http_503 http_504;
      proxy_next_upstream_tries 2;
    }}
  }}
"""


class Endpoint:
    """GET through nginx, shaped like harness.Valve for SteadyLoad."""

    def __init__(self, port):
        self.port = port

    def get(self, path, timeout=30.0):
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.body = resp.read()
            return resp
        finally:
            conn.close()


class BehindNginx(ValveTestCase):
    def start_nginx(self, port_a, port_b):
        port = free_port()
        conf = os.path.join(self.tmpdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(self.tmpdir, NGINX_HTTP.format(port=port, port_a=port_a, port_b=port_b)))
        nginx = self.track_process(subprocess.Popen(
            ["nginx", "-p", self.tmpdir, "-c", conf, "-e", os.path.join(self.tmpdir, "stderr.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        endpoint = Endpoint(port)

        def answers():
            if nginx.poll() is not None:
                raise AssertionError(f"nginx exited: {nginx.stderr.read().decode()}")
            try:
                return endpoint.get("/echo?msg=up", timeout=5).status == 200
            except OSError:
                return False
        wait_until(answers, 30, message="nginx answering")
        return endpoint

    def test_requests_survive_a_killed_instance(self):
        hello = example_path("hello", "plumber.R")
        a = self.start_valve("-f", hello, "-n", "2", "--n-min", "2", ready="/echo?msg=a",
                             ready_timeout=60)
        b = self.start_valve("-f", hello, "-n", "2", "--n-min", "2", ready="/echo?msg=b",
                             ready_timeout=60)
        nginx = self.start_nginx(a.port, b.port)

        # Both instances serve through nginx.
        served_by = set()
        for _ in range(20):
            pid = json.loads(nginx.get("/sleep?zzz=0").body)["pid"]
            served_by.add("a" if pid in a.worker_pids() else "b" if pid in b.worker_pids() else pid)
        self.assertEqual(served_by, {"a", "b"})

        # Steady load with requests in flight, then instance a dies with SIGKILL.
        load = SteadyLoad(nginx, "/sleep?zzz=0.05", seconds=5, clients=4)
        time.sleep(1.5)
        a_workers = a.worker_pids()
        os.kill(a.pid, signal.SIGKILL)
        self.assertIsNotNone(a.wait_exit(10))
        statuses = load.join(60)
        self.assertGreater(len(statuses), 40, "the load ran")
        failures = [s for s in statuses if s != 200]
        self.assertEqual(failures, [], f"{len(failures)} of {len(statuses)} requests failed")

        # Afterwards only b answers, and a's workers died with it (PR_SET_PDEATHSIG).
        pids = {json.loads(nginx.get("/sleep?zzz=0").body)["pid"] for _ in range(10)}
        self.assertTrue(pids <= set(b.worker_pids()), pids)
        wait_until(lambda: not any(os.path.exists(f"/proc/{p}") and
                                   open(f"/proc/{p}/stat").read().split()[2] != "Z"
                                   for p in a_workers), 10, message="a's workers gone")


if __name__ == "__main__":
    unittest.main(verbosity=2)
