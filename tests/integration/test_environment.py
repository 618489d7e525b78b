"""Environment variables for flags: VALVECTL_<KEY> sets an option when its flag is absent, a flag
wins, a bad value names the variable and exits 2, and no worker inherits any VALVECTL_*."""

import os
import unittest

from harness import ValveTestCase, backend_cmd, free_port, run_valvectl, VALVECTL
import subprocess


def environ_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return [e.decode(errors="replace") for e in f.read().split(b"\0") if e]


class Environment(ValveTestCase):
    def test_bad_values_name_the_variable_and_exit_2(self):
        cases = [
            ({"VALVECTL_N_MAX": "abc"}, [], "valvectl: VALVECTL_N_MAX=abc: expected a whole number"),
            ({"VALVECTL_TIMEOUT": "soon"}, [], "valvectl: VALVECTL_TIMEOUT=soon:"),
            ({"VALVECTL_N_MIN": "5"}, ["-n", "2"], "valvectl: VALVECTL_N_MIN=5: must be at most n-max (2)"),
            # The flag wins, so the message names the flag.
            ({"VALVECTL_N_MIN": "1"}, ["--n-min", "4", "-n", "2"], "valvectl: --n-min 4:"),
        ]
        for env, args, message in cases:
            with self.subTest(env=env, args=args):
                code, out, err, _, left = run_valvectl(["--cmd", backend_cmd()] + args, env=env)
                self.assertEqual(code, 2, err)
                self.assertEqual(left, [])
                self.assertTrue(err.startswith(message), err)
                self.assertEqual(len(err.strip().splitlines()), 1, err)

    def test_variables_set_options_flags_win_and_workers_do_not_inherit(self):
        admin_port = free_port()
        env = {"VALVECTL_CMD": backend_cmd(), "VALVECTL_N_MIN": "2", "VALVECTL_N_MAX": "5",
               "VALVECTL_ADMIN": f"127.0.0.1:{admin_port}", "VALVECTL_UNKNOWN_THING": "x"}
        valve = self.start_valve("-n", "3", env=env)
        config = valve.status()["config"]
        self.assertEqual(config["n-min"], 2)
        self.assertEqual(config["n-max"], 3, "the flag wins over VALVECTL_N_MAX")
        self.assertEqual(config["admin"], f"127.0.0.1:{admin_port}")
        workers = [w["pid"] for w in valve.status()["workers"]]
        self.assertEqual(len(workers), 2)
        for pid in workers:
            inherited = [e for e in environ_of(pid) if e.startswith("VALVECTL_")]
            self.assertEqual(inherited, [], pid)
        # valvectl status finds the server through the same variable.
        run = subprocess.run([VALVECTL, "status", "--json"], capture_output=True, text=True,
                             timeout=20, env=dict(os.environ, **env))
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn('"n-min":2', run.stdout.replace(" ", ""))


if __name__ == "__main__":
    unittest.main(verbosity=2)
