"""The reference cannot drift from the code: docs/configuration.md is `valvectl --help-markdown`
(regenerate with scripts/gen-docs), the man page meson builds is `valvectl --help-man` and renders
without a warning, and --help, the markdown and the man page name the same flags and variables."""

import glob
import os
import re
import subprocess
import unittest

from harness import SRC, VALVECTL, run_valvectl

CONFIGURATION_MD = os.path.join(SRC, "docs", "configuration.md")
MAN_PAGE = os.path.join(os.path.dirname(VALVECTL), "valvectl.1")


def generated(flag):
    code, out, err, _, left = run_valvectl([flag], timeout=10)
    assert code == 0 and not left, (code, err)
    return out


class Reference(unittest.TestCase):
    maxDiff = None

    def test_configuration_md_is_generated(self):
        with open(CONFIGURATION_MD) as f:
            committed = f.read()
        self.assertEqual(committed, generated("--help-markdown"),
                         "docs/configuration.md is stale: run scripts/gen-docs")

    def test_man_page_is_built_from_the_table_and_renders_cleanly(self):
        with open(MAN_PAGE) as f:
            built = f.read()
        self.assertEqual(built, generated("--help-man"))
        run = subprocess.run(["man", "--warnings", "-l", MAN_PAGE], capture_output=True,
                             text=True, timeout=30, env=dict(os.environ, MANWIDTH="80"))
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(run.stderr, "", "groff warnings")
        page = re.sub(r".\x08", "", run.stdout)  # drop the overstrike of bold and underline
        self.assertIn("VALVECTL_N_MAX", page)
        for section in ("SYNOPSIS", "OPTIONS", "COMMANDS", "ENVIRONMENT", "SIGNALS", "EXIT STATUS"):
            self.assertRegex(page, rf"(?m)^{section}$")

    def test_help_markdown_and_man_name_the_same_flags(self):
        code, help_text, err, _, _ = run_valvectl(["--help"], timeout=10)
        self.assertEqual(code, 0, err)
        flags = set(re.findall(r"(--[a-z][a-z-]+) (?:VALUE|\[true\|false\])", help_text))
        envs = set(re.findall(r"\[\$(VALVECTL_[A-Z_]+)\]", help_text))
        self.assertGreater(len(flags), 30)
        self.assertEqual(len(flags), len(envs))
        markdown = generated("--help-markdown")
        man = generated("--help-man").replace("\\-", "-")
        for flag in flags:
            self.assertIn(f"`{flag}`", markdown)
            self.assertIn(f"\\fB{flag}\\fR", man)
        for env in envs:
            self.assertIn(f"`{env}`", markdown)
            self.assertIn(env.replace("_", "_"), man)
        # The keys valvectl sets itself have no flag but are documented for embedders.
        for key in ("handle-signals", "reap-orphans", "notify"):
            self.assertNotIn(f"--{key}", flags)
            self.assertIn(f"| `{key}` | `false` |", markdown)

    def test_links_in_readme_and_docs_resolve(self):
        files = [os.path.join(SRC, "README.md")] + glob.glob(os.path.join(SRC, "docs", "*.md"))
        self.assertGreaterEqual(len(files), 6)
        for path in files:
            with open(path) as f:
                text = f.read()
            for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
                if not target.startswith(("http://", "https://")):
                    with self.subTest(file=os.path.relpath(path, SRC), link=target):
                        self.assertTrue(os.path.exists(os.path.join(os.path.dirname(path), target)))

    def test_hidden_generators_stay_out_of_help(self):
        code, help_text, err, _, _ = run_valvectl(["--help"], timeout=10)
        self.assertNotIn("--help-markdown", help_text)
        self.assertNotIn("--help-man", help_text)


if __name__ == "__main__":
    unittest.main(verbosity=2)
