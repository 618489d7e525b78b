"""A test client: serve a plumber file with real R workers for the length of a test.

    from valve.testing import local_valve

    def test_echo():
        with local_valve("plumber.R") as url:       # "http://127.0.0.1:41235"
            with urllib.request.urlopen(url + "/echo?msg=hi") as resp:
                assert json.load(resp) == {"msg": "hi"}

With pytest, name this module as a plugin (``pytest_plugins = ["valve.testing"]`` in conftest.py)
and ask for the ``valve_serve`` fixture: ``url = valve_serve("plumber.R", n_min=2)``; every server
it started stops when the test ends.
"""

import contextlib
import os
import time

from . import Server

__all__ = ["local_valve", "valve_serve"]


@contextlib.contextmanager
def local_valve(file="plumber.R", *, n_min=1, n_max=2, graceful_timeout=5, ready_timeout=60,
                **options):
    """Serves ``file`` on a free port of 127.0.0.1 and yields its base URL once ``n_min`` workers
    are ready; stops the server, ending its workers, when the block ends. Other keyword arguments
    are :class:`valve.Server`'s. Workers may run as root when the test itself does (a CI
    container): they run the caller's own code. valve logs warnings and errors only, unless
    ``log_level`` says otherwise."""
    if os.geteuid() == 0:
        options.setdefault("allow_root", True)
    options.setdefault("log_level", "warn")
    server = Server(file, host="127.0.0.1", port=0, n_min=n_min, n_max=n_max,
                    graceful_timeout=graceful_timeout, **options)
    with server:  # starts it; stops and frees it on the way out, on errors too
        deadline = time.monotonic() + ready_timeout
        while True:
            ready = sum(w["state"] == "ready" for w in server.status()["workers"])
            if ready >= n_min:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"local_valve: {ready} of n_min={n_min} workers ready after "
                                   f"{ready_timeout} s")
            time.sleep(0.05)
        yield server.url


try:
    import pytest
except ImportError:  # the context manager works without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture
    def valve_serve():
        """A function that serves a plumber file as :func:`local_valve` does and returns its URL;
        every server it started stops when the test ends."""
        with contextlib.ExitStack() as stack:
            yield lambda file="plumber.R", **options: stack.enter_context(
                local_valve(file, **options))
