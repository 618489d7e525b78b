"""The test client, valve.testing, against examples/hello with real plumber workers."""

import json
import os
import urllib.error
import urllib.request

import pytest

from valve.testing import local_valve
from test_valve import HELLO, HTTP_TIMEOUT, children


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, None


def test_local_valve_serves_until_the_block_ends():
    before = set(children())
    with local_valve(HELLO, n_min=2) as url:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        assert get(url + "/echo?msg=hi") == (200, {"msg": "hi"})
        assert get(url + "/no-such-route")[0] == 404
        assert len(set(children()) - before) == 2, "both workers were ready"
    assert set(children()) == before, "the workers ended with the block"
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/echo", timeout=5)


def test_local_valve_stops_on_an_error_in_the_block():
    before = set(children())
    with pytest.raises(RuntimeError, match="the test failed"):
        with local_valve(HELLO):
            raise RuntimeError("the test failed")
    assert set(children()) == before


def test_a_broken_api_fails_with_the_workers_error(tmp_path):
    api = tmp_path / "plumber.R"
    api.write_text("#* @get /x\nfunction() 1\nstop('broken on purpose')\n")
    with pytest.raises(Exception, match="broken on purpose"):
        with local_valve(str(api)):
            pass


def test_the_fixture_stops_every_server_it_started(valve_serve):
    first = valve_serve(HELLO)
    second = valve_serve(HELLO, n_max=1)
    assert first != second
    assert get(first + "/echo?msg=a") == (200, {"msg": "a"})
    assert get(second + "/echo?msg=b") == (200, {"msg": "b"})
