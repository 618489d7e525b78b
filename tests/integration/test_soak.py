"""A short soak, bench/soak's hour in brief: a minute of mixed traffic (bench/apps/soak.R's fast,
slow, failing and large answers and POST bodies, on kept-alive connections and on a new one each
request) through valvectl with real R workers recycled by --max-requests, a reload every 20 s
(SIGHUP and POST /reload in turn) and a random worker killed with SIGKILL every 10 s. No request is
lost: every one gets its endpoint's answer, or a 502 if it is a POST whose worker was killed under
it (valve retries GET and HEAD only: docs/operations.md). valvectl's descriptors stay flat, so do
the entries in its TMPDIR (no killed or recycled worker's temporary directory stays), and the pool
is whole after. bench/soak's Load, Churn, Sampler and verdict() do the work."""

import importlib.machinery
import importlib.util
import os
import time
import unittest

from harness import SRC, ValveTestCase, wait_until

SECONDS = 60
WARMUP = 10
WORKERS = 2


def load_soak():
    """bench/soak as a module (a script without the .py suffix)."""
    path = os.path.join(SRC, "bench", "soak")
    loader = importlib.machinery.SourceFileLoader("valve_soak", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("valve_soak", loader))
    loader.exec_module(module)
    return module


soak = load_soak()


class Soak(ValveTestCase):
    def test_churn_loses_no_request_and_leaks_no_descriptor(self):
        access_log = os.path.join(self.tmpdir, "access.log")
        valve = self.start_valve("-f", os.path.join(SRC, "bench", "apps", "soak.R"),
                                 "--admin", "127.0.0.1:0", "-n", str(WORKERS),
                                 "--n-min", str(WORKERS), "--max-requests", "25",
                                 "--max-requests-jitter", "5", "--access-log", access_log,
                                 "--access-log-format", "json", ready="/fast", ready_timeout=60)
        admin_port = int(valve.admin_address().rpartition(":")[2])
        target = soak.Target(valve.port, admin_port, valve.pid, access_log, tmp=valve.tmp)
        wait_until(lambda: soak.settled(target, WORKERS), 60, message="two ready workers")
        for _ in range(10):  # each worker's first requests, in which R compiles plumber's code
            valve.get("/fast?msg=warm")
        sampler = soak.Sampler(target, 0.5)
        idle_before = sampler.sample()
        load = soak.Load(target, rate=8, clients=4, timeout=60)
        churn = soak.Churn(target, kill_every=10, reload_every=20)
        try:
            time.sleep(SECONDS)
        finally:
            load.stop()
            churn.stop()
            all_done = load.join(70)
            sampler.stop()
        self.assertTrue(all_done, "a client still waits for its answer")
        wait_until(lambda: soak.settled(target, WORKERS), 60, message="the pool whole again")
        time.sleep(0.5)
        idle_after = sampler.sample()
        records = load.snapshot()
        result = soak.verdict(records, churn.events, access_log, sampler.samples, WARMUP)
        kills = [e for e in churn.events if e["event"] == "kill" and e.get("worker")]
        reloads = [e for e in churn.events if e["event"] == "reload"]
        recycles = soak.metric_sum(target.metrics(), "valve_worker_recycles_total")
        report = (f"{result['outcomes']}, statuses {result['statuses']}; {len(kills)} kills, "
                  f"{len(reloads)} reloads, {recycles:.0f} recycles; descriptors idle "
                  f"{idle_before['valvectl_fds']} -> {idle_after['valvectl_fds']}, "
                  f"{result['flat'].get('valvectl_fds')}; TMPDIR entries idle "
                  f"{idle_before['tmp_entries']} -> {idle_after['tmp_entries']}, "
                  f"{result['flat'].get('tmp_entries')}; problems {result['problems'][:5]}; "
                  f"churn errors {[e for e in churn.events if e['event'] == 'error']}")
        print(report)
        self.assertGreaterEqual(len(kills), SECONDS // 10 - 1, report)
        self.assertGreaterEqual(len(reloads), SECONDS // 20 - 1, report)
        self.assertGreater(recycles, 0, report)
        # POST /reload answers 200, or 502 when a kill hit a worker of the new generation before it
        # was ready: the reload is abandoned and the old generation serves on.
        for e in reloads:
            if "status" in e and e["status"] != 200:
                self.assertEqual(e["status"], 502, report)
                self.assertIn("SIGKILL", e["answer"], report)
        self.assertGreater(len(records), SECONDS * 4, report)
        self.assertEqual(result["outcomes"]["lost"], 0, report)
        self.assertEqual(result["outcomes"]["bad"], 0, report)
        self.assertEqual(result["not_in_access_log"], 0, report)
        self.assertTrue(result["flat"]["valvectl_fds"]["flat"], report)
        self.assertLessEqual(idle_after["valvectl_fds"], idle_before["valvectl_fds"] + WORKERS,
                             report)
        self.assertEqual(idle_after["zombies"], 0, report)
        self.assertTrue(result["flat"]["tmp_entries"]["flat"], report)
        self.assertLessEqual(idle_after["tmp_entries"], idle_before["tmp_entries"], report)


if __name__ == "__main__":
    unittest.main()
