"""The examples a newcomer runs first: examples/model (a base-R lm served at /predict, validated
input, the training script, the load script) and examples/hello's endpoints through valvectl.
(test_plumber.py covers examples/hello's /sum in depth; test_seed.py its /sleep demo.)"""

import json
import os
import re
import subprocess
import unittest

from harness import SRC, VALVECTL, ValveTestCase, example_path

MODEL = example_path("model", "plumber.R")
JSON = {"Content-Type": "application/json"}
# predict(lm(mpg ~ wt + hp + am, mtcars)) for the Mazda RX4 (wt 2.62, hp 110, am 1) and the
# Camaro Z28 (wt 3.84, hp 245, am 0), from R itself.
RX4 = {"wt": 2.62, "hp": 110, "am": 1}
Z28 = {"wt": 3.84, "hp": 245, "am": 0}


class Model(ValveTestCase):
    def start_model(self, *args):
        return self.start_valve("-f", MODEL, "--health-path", "/health", *args, ready="/health",
                                ready_timeout=60)

    def predict(self, valve, body):
        data = body if isinstance(body, str) else json.dumps(body)
        return valve.post("/predict", data, headers=JSON)

    def test_predicts_one_car_and_several(self):
        valve = self.start_model("-n", "2")
        one = self.predict(valve, RX4)
        self.assertEqual(one.status, 200, one)
        self.assertTrue(one.header("Content-Type", "").startswith("application/json"), one)
        self.assertEqual(len(one.json()["mpg"]), 1)
        self.assertAlmostEqual(one.json()["mpg"][0], 24.422, places=3)

        both = self.predict(valve, [RX4, Z28])
        self.assertEqual(both.status, 200, both)
        mpg = both.json()["mpg"]
        self.assertEqual(len(mpg), 2)
        self.assertAlmostEqual(mpg[0], 24.422, places=3)
        self.assertLess(mpg[1], mpg[0], "a heavier, stronger automatic uses more fuel")

        health = valve.get("/health")
        self.assertEqual(health.json(), {"status": "ok", "model": "mpg ~ wt + hp + am"})

    def test_bad_input_gets_422_or_400_with_a_message_not_500(self):
        valve = self.start_model("-n", "1")
        # A query parameter of a declared type (/refit's @param resamples:int): valve refuses it
        # before R, 422 naming the parameter. /predict's body is read by its own parser (json_text),
        # which valve leaves to R, as plumber would: R's own checks answer 400 below.
        answer = valve.post("/refit?resamples=lots", b"")
        self.assertEqual(answer.status, 422, answer)
        self.assertEqual([(d["loc"], d["type"]) for d in answer.json()["detail"]],
                         [(["query", "resamples"], "int_parsing")])
        cases = [
            ({"wt": "heavy", "hp": 110, "am": 1}, r"wt must be a number, got a string"),
            ({"wt": 2.62, "hp": None, "am": 1}, r"hp must be a number, got null"),
            ({"wt": 2.62, "hp": 110, "am": True}, r"am must be a number, got true/false"),
            ({"wt": "2.62", "hp": 110, "am": 1}, r"wt must be a number, got a string"),
            ({"wt": 2.62, "hp": [110, 120], "am": 1}, r"hp must be a number"),
            ({"wt": 2.62}, r"missing hp, am"),
            ({"wt": 2.62, "hp": 110, "am": 2}, r"am must be 0 \(automatic\) or 1 \(manual\)"),
            ({"wt": -1, "hp": 110, "am": 1}, r"more than 0"),
            ([RX4, {"wt": 3}], r"car 2 is missing hp, am"),
            ([], r"non-empty array"),
            ([1, 2], r"car 1 must be an object"),
            ("not json", r"not valid JSON"),
            ("", r"send a JSON body"),
        ]
        for body, message in cases:
            with self.subTest(body=body):
                answer = self.predict(valve, body)
                self.assertEqual(answer.status, 400, answer)
                self.assertRegex(answer.json()["error"], message)
                self.assertEqual(answer.json()["status"], 400)
        self.assertEqual(self.predict(valve, RX4).status, 200, "the worker still serves")

    def test_train_script_rebuilds_the_served_model(self):
        out = os.path.join(self.tmpdir, "model.rds")
        run = subprocess.run(["Rscript", example_path("model", "train.R"), out],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertRegex(run.stdout, r"wrote .*model\.rds: mpg ~ wt \+ hp \+ am")
        check = subprocess.run(
            ["Rscript", "-e", "a <- readRDS(commandArgs(TRUE)[1]); b <- readRDS(commandArgs(TRUE)[2]);"
             "stopifnot(isTRUE(all.equal(coef(a), coef(b)))); cat('same\\n')",
             out, example_path("model", "model.rds")],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(check.stdout.strip(), "same", check.stderr)

    def test_load_script_compares_one_and_four_workers(self):
        env = dict(os.environ, VALVECTL=VALVECTL)
        run = subprocess.run([example_path("model", "load"), "2", "4"], capture_output=True,
                             text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        rows = re.findall(r"^([14])\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)$", run.stdout, re.M)
        self.assertEqual([r[0] for r in rows], ["1", "4"], run.stdout)
        for workers, rate, p50, p99, failed in rows:
            self.assertGreater(float(rate), 1, run.stdout)  # a shared, sanitized run is slow
            self.assertEqual(failed, "0", run.stdout)


class ModelVersions(ValveTestCase):
    """examples/model/valve.toml: model.rds and model-v2.rds behind one valve, 90/10 by user."""

    def test_two_versions_split_by_user_and_each_user_keeps_one(self):
        valve = self.start_valve("--config", example_path("model", "valve.toml"), ready="/health",
                                 ready_timeout=90)
        formulas = {"model-v1": "mpg ~ wt + hp + am", "model-v2": "mpg ~ wt * am + hp"}
        served = {}
        for i in range(200):
            user = {"X-User-Id": f"user-{i}"}
            health = valve.get("/health", headers=user)
            self.assertEqual(health.status, 200, health)
            app = health.header("Valve-App")
            self.assertEqual(health.json()["model"], formulas[app], "the app serves its model")
            served[i] = app
        v2 = sum(1 for app in served.values() if app == "model-v2")
        self.assertTrue(5 <= v2 <= 40, f"{v2} of 200 users on model-v2, about 20 expected")
        for i in range(0, 200, 10):
            answer = valve.post("/predict", json.dumps(RX4),
                                headers=dict(JSON, **{"X-User-Id": f"user-{i}"}))
            self.assertEqual(answer.status, 200, answer)
            self.assertEqual(answer.header("Valve-App"), served[i], "a user keeps their version")
        # The versions answer differently for the same car: the canary is a different model.
        v1_user = next(i for i, app in served.items() if app == "model-v1")
        v2_user = next(i for i, app in served.items() if app == "model-v2")
        mpg = [valve.post("/predict", json.dumps(RX4),
                          headers=dict(JSON, **{"X-User-Id": f"user-{i}"})).json()["mpg"][0]
               for i in (v1_user, v2_user)]
        self.assertAlmostEqual(mpg[0], 24.422, places=3)
        self.assertNotAlmostEqual(mpg[0], mpg[1], places=2)
        check = subprocess.run([VALVECTL, "check", example_path("model", "valve.toml")],
                               capture_output=True, text=True, timeout=30)
        if os.geteuid() == 0:  # as root it rightly asks for --allow-root or a user
            self.assertEqual(check.returncode, 2, check)
            self.assertIn("app model-v1: user \"\": valve runs as root", check.stderr)
        else:
            self.assertEqual((check.returncode, check.stderr), (0, ""), check)


class Hello(ValveTestCase):
    def test_echo_and_sleep(self):
        valve = self.start_valve("-f", example_path("hello", "plumber.R"), "-n", "2",
                                 ready="/echo?msg=ready", ready_timeout=60)
        self.assertEqual(valve.get("/echo?msg=hi").json(), {"msg": "hi"})
        slept = valve.get("/sleep?zzz=0.1")
        self.assertEqual(slept.status, 200, slept)
        self.assertEqual(slept.json()["slept"], 0.1)
        self.assertIn(slept.json()["pid"], valve.worker_pids())


if __name__ == "__main__":
    unittest.main(verbosity=2)
