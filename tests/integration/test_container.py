"""The Dockerfile, without a Docker engine: its steps live in scripts/container, and this test runs
them here. The image is Debian bookworm, the packages exist (they are installed on this machine),
the install step puts valvectl, libvalve and the man page under a prefix, every library the
installed valvectl loads comes from a package of the runtime stage, and the image's own
ENTRYPOINT + CMD (exec form) and ENV, run as PID 1 of a new PID namespace, serve examples/hello
and stop cleanly on SIGTERM, as `docker stop` sends it."""

import glob
import http.client
import json
import os
import re
import signal
import subprocess
import time
import unittest

from harness import (LISTENING_RE, SRC, TAG_VARIABLE, VALVECTL, ValveTestCase, children,
                     tagged_processes, wait_until)

DOCKERFILE = os.path.join(SRC, "Dockerfile")
CONTAINER = os.path.join(SRC, "scripts", "container")
BUILD_DIR = os.path.dirname(os.path.dirname(VALVECTL))  # BUILD/cli/valvectl


def instructions():
    """(INSTRUCTION, arguments) for each Dockerfile line, continuations joined, comments dropped."""
    with open(DOCKERFILE) as f:
        lines = [line for line in f.read().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def packages(stage):
    run = subprocess.run([CONTAINER, "packages", stage], capture_output=True, text=True,
                         timeout=10, check=True)
    return run.stdout.split()


def owner_package(path):
    """The Debian package that installed a file (following /lib -> /usr/lib)."""
    for candidate in (path, os.path.realpath(path), path.replace("/usr/lib/", "/lib/", 1)):
        run = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True, timeout=30)
        if run.returncode == 0:
            return run.stdout.split(":")[0]
    raise AssertionError(f"no package owns {path}")


class Dockerfile(ValveTestCase):
    def test_image_shape(self):
        steps = instructions()
        froms = [args for word, args in steps if word == "FROM"]
        self.assertEqual(len(froms), 2, "a build stage and a runtime stage")
        for base in froms:
            self.assertRegex(base, r"^debian:bookworm(-slim)?\b")
        # Exec form (a JSON array): valvectl itself is PID 1 and gets docker stop's SIGTERM.
        entrypoint = json.loads(dict(steps)["ENTRYPOINT"])
        self.assertEqual(entrypoint, ["/usr/local/bin/valvectl"])
        self.assertIsInstance(json.loads(dict(steps)["CMD"]), list)
        self.assertEqual(dict(steps)["STOPSIGNAL"], "SIGTERM")
        runs = [args for word, args in steps if word == "RUN"]
        self.assertIn("/src/scripts/container install-packages build", runs)
        self.assertIn("/src/scripts/container build /src /tmp/build /staging", runs)
        self.assertTrue(any(r.startswith("/usr/local/share/valve/container install-packages "
                                         "runtime") for r in runs), runs)

    def test_packages_exist(self):
        for stage in ("build", "runtime"):
            for package in packages(stage):
                with self.subTest(package=package):
                    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                                            capture_output=True, text=True, timeout=30).stdout
                    self.assertEqual(status, "install ok installed")

    def test_build_stage_has_every_required_dependency(self):
        # Each dependency('NAME') the release build requires (those with required: false have a
        # fallback) comes from a package of the build stage: its pkg-config file's owner. (The
        # real image build found libtomlplusplus-dev missing from it.)
        names = set()
        for build_file in ("meson.build", "libvalve/meson.build", "cli/meson.build"):
            with open(os.path.join(SRC, build_file)) as f:
                for name, rest in re.findall(r"\bdependency\('([^']+)'([^)]*)\)", f.read()):
                    if "required: false" not in rest and name != "threads":
                        names.add(name)
        self.assertIn("tomlplusplus", names)
        build = set(packages("build"))
        for name in sorted(names):
            with self.subTest(dependency=name):
                pc = subprocess.run(["pkg-config", "--path", name], capture_output=True,
                                    text=True, timeout=30)
                self.assertEqual(pc.returncode, 0, pc.stderr)
                self.assertIn(owner_package(pc.stdout.strip()), build)

    def test_install_then_run_as_the_container_does(self):
        destdir = os.path.join(self.tmpdir, "staging")
        run = subprocess.run([CONTAINER, "build", SRC, BUILD_DIR, destdir], capture_output=True,
                             text=True, timeout=120, stdin=subprocess.DEVNULL)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        valvectl = os.path.join(destdir, "usr", "local", "bin", "valvectl")
        self.assertTrue(os.access(valvectl, os.X_OK))
        self.assertTrue(os.path.exists(os.path.join(destdir, "usr/local/share/man/man1/valvectl.1")))
        self.assertTrue(os.path.exists(os.path.join(destdir, "usr/local/include/valve/valve.h")))
        libs = glob.glob(os.path.join(destdir, "usr/local/lib*/**/libvalve.so.0"), recursive=True)
        self.assertEqual(len(libs), 1, libs)
        libdir = os.path.dirname(libs[0])  # the image runs ldconfig; here, LD_LIBRARY_PATH

        # Every library the installed valvectl loads is the image's own or a runtime package's.
        ldd = subprocess.run(["ldd", valvectl], capture_output=True, text=True, timeout=30,
                             env=dict(os.environ, LD_LIBRARY_PATH=libdir))
        self.assertEqual(ldd.returncode, 0, ldd.stderr)
        self.assertNotIn("not found", ldd.stdout)
        runtime = set(packages("runtime"))
        for path in re.findall(r"=> (/\S+)", ldd.stdout):
            if path.startswith(destdir) or "libasan" in path or "libubsan" in path:
                continue  # installed by the image itself; sanitizer builds only
            with self.subTest(library=path):
                self.assertIn(owner_package(path), runtime)

        # The image's ENV, ENTRYPOINT and CMD, with its paths moved here and loopback only.
        steps = instructions()
        env_line = dict(steps)["ENV"]
        image_env = dict(re.findall(r"(\w+)=(\S+)", env_line))
        app_src, app_dir = next(args.split() for word, args in steps
                                if word == "COPY" and args.split()[-1] == "/srv/app")
        app_src = os.path.join(SRC, app_src)
        env = dict(os.environ, LD_LIBRARY_PATH=libdir)
        for key, value in image_env.items():
            env[key] = value.replace(app_dir, app_src)
        self.assertEqual(env["VALVECTL_HOST"], "0.0.0.0")
        env["VALVECTL_HOST"] = "127.0.0.1"   # loopback only in tests
        env["VALVECTL_PORT"] = "0"
        env["VALVECTL_ADMIN"] = "127.0.0.1:0"
        tag = os.urandom(8).hex()
        env[TAG_VARIABLE] = tag
        env["VALVECTL_ENV"] = TAG_VARIABLE  # workers get an explicit environment: keep the tag
        if os.geteuid() == 0:
            # The image runs as its user valve; the test, as root, stands in for it.
            env["VALVECTL_ALLOW_ROOT"] = "true"
        argv = ([a.replace("/usr/local/", destdir + "/usr/local/")
                 for a in json.loads(dict(steps)["ENTRYPOINT"])] + json.loads(dict(steps)["CMD"]))

        # PID 1 of a new PID namespace, as in a container, where the machine allows it.
        as_pid1 = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "true"],
                                 capture_output=True, timeout=10).returncode == 0
        prefix = ["unshare", "--pid", "--fork", "--kill-child", "--"] if as_pid1 else []
        if not as_pid1:
            print("\nunshare --pid is not permitted here: running valvectl without a PID namespace")
        log_path = os.path.join(self.tmpdir, "container.log")
        with open(log_path, "wb") as log:
            proc = self.track_process(subprocess.Popen(
                prefix + argv, cwd=app_src, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT))
        self.addCleanup(self.kill_tagged, tag)

        def log_text():
            with open(log_path, "rb") as f:
                return f.read().decode(errors="replace")

        match = wait_until(lambda: LISTENING_RE.search(log_text()) or proc.poll() is not None, 60,
                           message="valvectl listening")
        self.assertIsNone(proc.poll(), log_text())
        port = int(match.group(2))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/echo?msg=container")
        answer = conn.getresponse()
        self.assertEqual((answer.status, json.loads(answer.read())), (200, {"msg": "container"}))
        conn.close()
        self.assertIn("valvectl", open(f"/proc/{self.valvectl_pid(proc, as_pid1)}/comm").read())
        # The image's workers run nicer than valvectl (VALVECTL_WORKER_NICE).
        vpid = self.valvectl_pid(proc, as_pid1)
        workers = [c.pid for c in children(vpid)]
        self.assertTrue(workers, "a worker")
        nicer = int(image_env["VALVECTL_WORKER_NICE"])
        for pid in workers:
            self.assertEqual(os.getpriority(os.PRIO_PROCESS, pid),
                             min(19, os.getpriority(os.PRIO_PROCESS, vpid) + nicer))
        if as_pid1:
            with open(f"/proc/{self.valvectl_pid(proc, as_pid1)}/status") as f:
                self.assertRegex(f.read(), r"NSpid:\s+\d+\s+1\n", "valvectl is PID 1 inside")

        # docker stop: SIGTERM to PID 1, which drains and exits 0; nothing is left behind.
        os.kill(self.valvectl_pid(proc, as_pid1), signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=40), 0, log_text())
        self.assertRegex(log_text(), r"SIGTERM: shutting down gracefully")
        left = wait_until(lambda: not tagged_processes(tag), 10, message="no leftovers")
        self.assertTrue(left)

    def valvectl_pid(self, proc, as_pid1):
        if not as_pid1:
            return proc.pid
        kids = wait_until(lambda: children(proc.pid), 10, message="unshare's child")
        return kids[0].pid

    @staticmethod
    def kill_tagged(tag):
        for pid in tagged_processes(tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    unittest.main(verbosity=2)
