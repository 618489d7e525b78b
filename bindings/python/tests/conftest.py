# Puts bindings/python on sys.path, so the tests import this checkout's binding, not an installed one.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import pytest  # noqa: E402

import valve  # noqa: E402

# The test client's fixture, valve_serve, as a user's conftest.py would name it.
pytest_plugins = ["valve.testing"]


@pytest.fixture(autouse=True)
def workers_may_run_as_root(monkeypatch):
    """CI runs the tests as root, and valve refuses root workers unless told: the tests tell it
    (a test of the refusal passes allow_root=False)."""
    init = valve.Server.__init__

    def allowing_root(self, *args, **kwargs):
        kwargs.setdefault("allow_root", True)
        init(self, *args, **kwargs)

    monkeypatch.setattr(valve.Server, "__init__", allowing_root)
