"""valvectl's command line: --help, --version, flag forms, and bad values (exit 2, one line)."""

import os
import re
import socket
import unittest

from harness import LOOPBACK, ValveTestCase, app_path, backend_cmd, run_valvectl


class HelpAndVersion(ValveTestCase):
    def test_help_lists_the_flags(self):
        code, out, err, elapsed, left = run_valvectl(["--help"], timeout=10)
        self.assertEqual(code, 0, err)
        self.assertEqual(left, [])
        text = out + err
        for flag in ("--host", "--port", "--n-max", "--n-min", "--workers", "--file", "--cmd",
                     "--check-unused", "--max-age", "--startup-timeout", "--graceful-timeout",
                     "--kill-timeout", "--worker-concurrency", "--queue-max", "--queue-timeout",
                     "--timeout", "--header-timeout", "--keepalive-timeout", "--max-header-size",
                     "--max-body-size", "--log-level", "--rscript", "--version"):
            self.assertIn(flag, text, f"--help does not mention {flag}")
        for short in ("-h", "-p", "-n", "-w", "-f"):
            self.assertRegex(text, rf"(^|[\s,]){short}[\s,]", f"--help does not mention {short}")

    def test_version(self):
        code, out, err, elapsed, left = run_valvectl(["--version"], timeout=10)
        self.assertEqual(code, 0, err)
        self.assertRegex(out + err, r"\b\d+\.\d+\.\d+\b")


class FlagForms(ValveTestCase):
    def test_short_flags_and_equals_forms_are_accepted(self):
        # -n, -w and --flag=value forms; fractions of seconds; a byte size with a suffix.
        valve = self.start_valve("-n", "2", "-w", "4", "--n-min=1", f"--cmd={backend_cmd()}",
                                 "--timeout=2.5", "--queue-timeout", "0.5", "--max-body-size=2k",
                                 "--check-unused=0.25", "--max-age", "1.5", "--log-level=debug")
        self.assertEqual(valve.get("/hello").body, b"hello\n")
        # --max-body-size=2k took effect: 2048 bytes pass, 2049 do not.
        self.assertEqual(valve.post("/upload", b"x" * 2048).status, 200)
        self.assertEqual(valve.post("/upload", b"x" * 2049).status, 413)

    def test_short_host_and_port(self):
        # -h is the host (as in valve-rs), -p the port.
        valve = self.start_valve("-h", LOOPBACK, "-p", "0", "--cmd", backend_cmd(), port=None,
                                 host=None)
        self.assertEqual(valve.host, LOOPBACK)
        self.assertNotEqual(valve.port, 0)
        self.assertEqual(valve.get("/hello").status, 200)


class BadValues(ValveTestCase):
    """Each bad flag or value: exit 2 within seconds, one stderr line naming the flag and value,
    and no process started."""

    def check_usage_error(self, args, flag_pattern, value, cwd=None):
        code, out, err, elapsed, left = run_valvectl(args, timeout=15, cwd=cwd or self.tmpdir)
        self.assertEqual(code, 2, f"args {args}: exit {code}, stderr {err!r}")
        self.assertLess(elapsed, 10, f"args {args} took {elapsed:.1f} s to fail")
        self.assertEqual(left, [], f"args {args} left processes behind")
        lines = [line for line in err.splitlines() if line.strip()]
        self.assertTrue(lines, f"args {args}: nothing on stderr")
        # One line says it all; a hint such as "Run with --help" may follow.
        self.assertLessEqual(len(lines), 2, f"args {args}: stderr is not one line: {err!r}")
        naming = [line for line in lines
                  if re.search(flag_pattern, line) and value in line]
        self.assertTrue(naming, f"args {args}: no stderr line names {flag_pattern} and {value!r}: "
                                f"{err!r}")
        return lines

    def test_n_min_above_n_max(self):
        self.check_usage_error(["--n-min", "5", "-n", "2", "--cmd", backend_cmd()],
                               r"--n-min", "5")

    def test_missing_file(self):
        missing = os.path.join(self.tmpdir, "no-such-plumber.R")
        self.check_usage_error(["-f", missing], r"--file|-f\b", missing)

    def test_default_file_missing(self):
        # No --file and no plumber.R in the working directory.
        self.check_usage_error([], r"--file|-f\b", "plumber.R", cwd=self.tmpdir)

    def test_port_in_use(self):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
            holder.bind((LOOPBACK, 0))
            holder.listen(1)
            port = holder.getsockname()[1]
            self.check_usage_error(["--host", LOOPBACK, "--port", str(port), "--cmd",
                                    backend_cmd()], r"--port|-p\b|port", str(port))

    def test_bad_numbers(self):
        cases = [
            (["-n", "many"], r"--n-max|-n\b", "many"),
            (["--n-min", "two"], r"--n-min", "two"),
            (["--timeout", "abc"], r"--timeout", "abc"),
            (["--queue-timeout", "1.2.3"], r"--queue-timeout", "1.2.3"),
            (["--max-body-size", "12q"], r"--max-body-size", "12q"),
            (["--max-header-size", "huge"], r"--max-header-size", "huge"),
            (["--port", "70000"], r"--port|-p\b", "70000"),
            (["--queue-max", "1e9x"], r"--queue-max", "1e9x"),
            (["--log-level", "chatty"], r"--log-level", "chatty"),
        ]
        for extra, flag, value in cases:
            with self.subTest(args=extra):
                self.check_usage_error(["--cmd", backend_cmd()] + extra, flag, value)

    def test_an_admin_address_beyond_loopback_needs_a_token(self):
        for admin in ("0.0.0.0:9000", "[::]:0", "10.1.2.3:9000"):
            with self.subTest(admin=admin):
                lines = self.check_usage_error(["--cmd", backend_cmd(), "--admin", admin],
                                               r"--admin ", admin)
                self.assertIn(f"valvectl: --admin {admin}: beyond loopback the admin interface "
                              f"needs a bearer token: set admin-token-file", lines[0])
        # From the environment, the variable is named.
        code, out, err, elapsed, left = run_valvectl(
            ["--port", "0", "--cmd", backend_cmd()], env={"VALVECTL_ADMIN": "0.0.0.0:9000"})
        self.assertEqual(code, 2, err)
        self.assertIn("valvectl: VALVECTL_ADMIN=0.0.0.0:9000: beyond loopback", err)
        self.assertEqual(left, [])

    def test_unknown_flag(self):
        self.check_usage_error(["--cmd", backend_cmd(), "--no-such-flag"], r"--no-such-flag",
                               "--no-such-flag")

    def test_rscript_not_found(self):
        missing = os.path.join(self.tmpdir, "no-such-Rscript")
        self.check_usage_error(["-f", app_path("api.R"), "--rscript", missing], r"--rscript",
                               missing)

    def test_plumber_not_installed(self):
        # R runs, but cannot find plumber: a configuration error (exit 2), found in bounded time.
        empty = os.path.join(self.tmpdir, "empty-library")
        os.mkdir(empty)
        code, out, err, elapsed, left = run_valvectl(
            ["--port", "0", "-f", app_path("api.R")], timeout=30, cwd=self.tmpdir,
            env={"R_LIBS_SITE": empty, "R_LIBS_USER": empty})
        self.assertEqual(code, 2, err)
        self.assertLess(elapsed, 20)
        self.assertRegex(err, r"valvectl: .*plumber", err)
        self.assertEqual(left, [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
