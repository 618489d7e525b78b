"""examples/kubernetes: every manifest passes the Kubernetes API schemas (kubernetes-models from
the npm registry, pinned in tests/kubernetes and installed by scripts/install-deps; no network at
test time), and the fields valve relies on agree with valvectl: the probes hit the admin
interface's /readyz and /healthz, the grace period covers preStop + drain + kill, the Service
leaves the admin port out, the admin token comes from a Secret no other user can read, and the
HPA's metric is one valve exports. Then the Deployment's own args and env serve examples/model
here: its probes answer without the token, its metrics with it only."""

import glob
import os
import re
import shutil
import subprocess
import unittest

import yaml

from harness import SRC, ValveTestCase, example_path

MANIFESTS = sorted(glob.glob(os.path.join(SRC, "examples", "kubernetes", "*.yaml")))
CHECKER = os.path.join(SRC, "tests", "kubernetes")


def load(name):
    with open(os.path.join(SRC, "examples", "kubernetes", name)) as f:
        return list(yaml.safe_load_all(f))


def validate(*files):
    if not os.path.isdir(os.path.join(CHECKER, "node_modules", "kubernetes-models")):
        raise AssertionError("tests/kubernetes/node_modules is missing: run scripts/install-deps")
    node = shutil.which("node")
    if node is None:
        raise AssertionError("node (Node.js) not found: the schema check needs it")
    return subprocess.run([node, os.path.join(CHECKER, "validate.mjs"), *files],
                          capture_output=True, text=True, timeout=60)


def flag_values(args):
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


class Schemas(ValveTestCase):
    def test_every_manifest_passes_the_api_schemas(self):
        self.assertGreaterEqual(len(MANIFESTS), 4)
        run = validate(*MANIFESTS)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        kinds = re.findall(r"^ok \S+ (\w+)/", run.stdout, re.M)
        self.assertEqual(sorted(kinds),
                         ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Service"])

    def test_the_checker_rejects_a_broken_manifest(self):
        with open(os.path.join(SRC, "examples", "kubernetes", "deployment.yaml")) as f:
            text = f.read()
        broken = os.path.join(self.tmpdir, "broken.yaml")
        for old, new, why in [("replicas: 2", "replicas: two", "must be integer"),
                              ("apiVersion: apps/v1", "apiVersion: apps/v9", "unknown apiVersion"),
                              ("periodSeconds: 5", "periodSeconds: [5]", "must be integer")]:
            with self.subTest(change=new):
                with open(broken, "w") as f:
                    f.write(text.replace(old, new, 1))
                run = validate(broken)
                self.assertEqual(run.returncode, 1, run.stdout)
                self.assertIn(why, run.stdout)


class Settings(ValveTestCase):
    def setUp(self):
        super().setUp()
        (self.deployment,) = load("deployment.yaml")
        self.pod = self.deployment["spec"]["template"]
        (self.container,) = self.pod["spec"]["containers"]
        self.flags = flag_values(self.container["args"])
        self.env = {e["name"]: e["value"] for e in self.container["env"]}
        self.ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}

    def test_probes_use_the_admin_interface(self):
        admin_port = int(self.env["VALVECTL_ADMIN"].rsplit(":", 1)[1])
        self.assertEqual(self.ports["admin"], admin_port)
        self.assertEqual(self.ports["http"], 8000, "the image's VALVECTL_PORT")
        for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"),
                            ("startupProbe", "/readyz")]:
            with self.subTest(probe=probe):
                self.assertEqual(self.container[probe]["httpGet"], {"path": path, "port": "admin"})
        annotations = self.pod["metadata"]["annotations"]
        self.assertEqual(int(annotations["prometheus.io/port"]), admin_port)
        self.assertEqual(annotations["prometheus.io/path"], "/metrics")

    def test_the_admin_token_comes_from_a_secret(self):
        token_file = self.env["VALVECTL_ADMIN_TOKEN_FILE"]
        (mount,) = self.container["volumeMounts"]
        self.assertEqual(os.path.dirname(token_file), mount["mountPath"])
        self.assertTrue(mount["readOnly"])
        (volume,) = [v for v in self.pod["spec"]["volumes"] if v["name"] == mount["name"]]
        secret = volume["secret"]
        self.assertEqual(secret["secretName"], "valve-admin-token")
        self.assertNotIn("items", secret, "the key is the file's name: token")
        self.assertEqual(os.path.basename(token_file), "token")
        # Readable by the pod's fsGroup, not by every user (valve would warn).
        self.assertEqual(secret["defaultMode"] & 0o007, 0)
        self.assertEqual(secret["defaultMode"] & 0o040, 0o040)
        self.assertIsInstance(self.pod["spec"]["securityContext"]["fsGroup"], int)
        # The probes need no token: they send no header.
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            self.assertNotIn("httpHeaders", self.container[probe]["httpGet"])

    def test_grace_period_covers_prestop_drain_and_kill(self):
        command = self.container["lifecycle"]["preStop"]["exec"]["command"]
        self.assertEqual(command[0], "sleep")
        needed = (float(command[1]) + float(self.flags["graceful-timeout"])
                  + float(self.flags["kill-timeout"]))
        self.assertGreater(self.pod["spec"]["terminationGracePeriodSeconds"], needed)

    def test_service_and_autoscaler(self):
        (service,) = load("service.yaml")
        self.assertEqual([p["targetPort"] for p in service["spec"]["ports"]], ["http"])
        self.assertEqual(service["spec"]["selector"], self.deployment["spec"]["selector"]["matchLabels"])
        (hpa,) = load("hpa.yaml")
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], self.deployment["metadata"]["name"])
        (metric,) = hpa["spec"]["metrics"]
        self.assertEqual(metric["type"], "Pods")
        self.assertEqual(metric["pods"]["metric"]["name"], "valve_queue_depth")
        (adapter,) = load("prometheus-adapter.yaml")
        (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
        self.assertEqual(rule["name"]["as"], "valve_queue_depth")
        self.assertTrue(rule["seriesQuery"].startswith("valve_queue_depth{"))

    def test_the_pod_command_line_serves_and_its_probes_answer(self):
        """The Deployment's args and env, with the image's /srv/app moved to examples/model, the
        admin interface on loopback and the Secret's file in the test's directory, mode 0440."""
        token = os.urandom(32).hex()
        token_file = os.path.join(self.tmpdir, "token")
        with open(token_file, "w") as f:
            f.write(token)
        os.chmod(token_file, 0o440)
        env = dict(self.env, VALVECTL_ADMIN="127.0.0.1:0", VALVECTL_ADMIN_TOKEN_FILE=token_file)
        valve = self.start_valve(*self.container["args"], "--file", example_path("model", "plumber.R"),
                                 env=env, ready="/health", ready_timeout=90)
        self.assertEqual(valve.admin("GET", "/readyz").status, 200)
        self.assertEqual(valve.admin("GET", "/healthz").status, 200)
        self.assertEqual(valve.admin("GET", "/metrics").status, 401)
        self.assertNotIn("admin-token-file", valve.log(), "no warning about the token file")
        valve.admin_token = token
        metrics = valve.admin("GET", "/metrics").text()
        self.assertRegex(metrics, r'(?m)^valve_queue_depth\{app="default"\} 0$')
        self.assertEqual(len(valve.workers()), int(self.flags["n-min"]))
        answer = valve.post("/predict", '{"wt": 2.62, "hp": 110, "am": 1}',
                            headers={"Content-Type": "application/json"})
        self.assertEqual(answer.status, 200, answer)
        self.assertRegex(valve.stdout(), r'"status":200', "--access-log=- in JSON")


if __name__ == "__main__":
    unittest.main(verbosity=2)
