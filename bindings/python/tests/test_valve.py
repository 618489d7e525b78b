"""Tests for the Python binding, against the libvalve in $VALVE_LIBRARY.

$VALVE_SRC is the repository root (for examples/hello/plumber.R); $VALVE_BACKEND the native test
worker. Every server listens on loopback, every wait is bounded, and children are checked by PID.
"""

import json
import os
import shutil
import signal
import threading
import time
import urllib.request

import pytest

import valve

SRC = os.environ.get("VALVE_SRC", os.path.join(os.path.dirname(__file__), "..", "..", ".."))
HELLO = os.path.join(SRC, "examples", "hello", "plumber.R")
BACKEND = os.environ.get("VALVE_BACKEND")
HTTP_TIMEOUT = 30


def children():
    """PIDs whose parent is this process (zombies included)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # The command name may hold spaces and parentheses: fields after the last ")" are fixed.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == me:
            found.append(int(entry))
    return found


def kill_children():
    for pid in children():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tasks():
    return len(os.listdir("/proc/self/task"))


def get(url):
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
        return resp.status, resp.read()


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(autouse=True)
def no_leftover_children():
    assert children() == [], "a child process was left over before this test"
    yield
    leftover = children()
    kill_children()  # so one failure does not cascade into the next tests
    assert leftover == [], f"child processes left over: {leftover}"


requires_r = pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not found")
requires_backend = pytest.mark.skipif(not BACKEND, reason="VALVE_BACKEND not set")


def backend_cmd():
    return f"{BACKEND} --port {{port}}"


# ---- library and configuration -----------------------------------------------------------------


def test_version():
    text = valve.version()
    major, minor, patch = (int(p) for p in text.split("."))
    assert valve.version_number() == major * 10000 + minor * 100 + patch


def test_config_keys_and_describe():
    keys = valve.config_keys()
    assert {"host", "port", "n-min", "n-max", "file", "cmd", "graceful-timeout"} <= set(keys)
    assert "workers" in valve.describe("n_max")
    assert valve.describe("n-max") == valve.describe("n_max")
    assert valve.describe("no-such-option") is None


def test_cross_option_error_names_the_key():
    with pytest.raises(valve.ValveError) as info:
        valve.Server(HELLO, n_min=5, n_max=2)
    err = info.value
    assert isinstance(err, Exception)
    assert str(err).startswith("n-min 5"), str(err)
    assert err.code == -10001
    assert err.name == "VALVE_EINVALID"


def test_bad_value_names_the_key_and_value():
    with pytest.raises(valve.ValveError) as info:
        valve.Server(HELLO, port="eighty")
    assert str(info.value).startswith("port eighty"), str(info.value)
    with pytest.raises(valve.ValveError) as info:
        valve.Server(HELLO, graceful_timeout="soon")
    assert str(info.value).startswith("graceful-timeout soon"), str(info.value)


def test_values_are_converted():
    # bool -> "true"/"false", numbers -> str, os.PathLike -> path; all accepted by the library.
    import pathlib

    s = valve.Server(pathlib.Path(HELLO), port=0, reap_orphans=False, handle_signals=False,
                     graceful_timeout=0.5, max_body_size="64k")
    s.close()
    with pytest.raises(valve.ValveError) as info:
        valve.Server(HELLO, handle_signals="maybe")
    assert str(info.value).startswith("handle-signals maybe")


def test_unknown_keyword_raises_naming_it():
    with pytest.raises((TypeError, valve.ValveError)) as info:
        valve.Server(HELLO, n_maxx=3)
    assert "n_maxx" in str(info.value)


def test_missing_file_raises():
    missing = os.path.join(SRC, "no", "such", "plumber.R")
    with pytest.raises(valve.ValveError) as info:
        valve.Server(missing)
    assert missing in str(info.value)
    assert info.value.code == -10001


def test_close_is_idempotent_and_closed_server_refuses():
    s = valve.Server(HELLO, port=0)
    s.close()
    s.close()
    assert s.closed
    with pytest.raises(ValueError):
        s.start()


# ---- a real R plumber pool ----------------------------------------------------------------------


@requires_r
def test_hello_pool_through_python():
    events = []
    lines = []
    with valve.Server(HELLO, port=0, n_min=1, n_max=1, on_event=events.append,
                      on_log=lambda level, line: lines.append((level, line))) as server:
        host, port = server.address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert server.url == f"http://127.0.0.1:{port}"

        status, body = get(server.url + "/echo?msg=hi")
        assert status == 200
        assert json.loads(body) == {"msg": "hi"}

        st = server.status()
        assert st["state"] == "running"
        assert st["address"] == server.address
        assert [w["state"] for w in st["workers"]] == ["ready"]
        worker_pids = [w["pid"] for w in st["workers"]]
        assert worker_pids[0] in children()

        # The event may trail the response by a moment: it is emitted on valve's loop thread.
        assert wait_for(lambda: any(e["event"] == "request_completed" for e in events))

        server.stop(deadline=5)
        assert children() == []
    assert server.closed

    kinds = [e["event"] for e in events]
    assert "worker_launched" in kinds and "worker_ready" in kinds, kinds
    assert kinds.index("worker_launched") < kinds.index("worker_ready")
    done = [e for e in events if e["event"] == "request_completed"]
    assert len(done) == 1
    assert done[0]["status"] == 200 and done[0]["method"] == "GET"
    assert done[0]["target"] == "/echo?msg=hi"
    assert events[kinds.index("worker_ready")]["pid"] == worker_pids[0]
    assert all(isinstance(level, int) and 0 <= level <= 3 for level, _ in lines)
    assert any("listening on" in line for _, line in lines)


# ---- the native backend: fast, so cycles can repeat ------------------------------------------------


@requires_backend
def test_callback_exceptions_do_not_reach_c(capfd):
    def bad_event(event):
        raise RuntimeError("boom from on_event")

    def bad_log(level, line):
        raise KeyError("boom from on_log")

    with valve.Server(cmd=backend_cmd(), port=0, on_event=bad_event, on_log=bad_log) as server:
        assert get(server.url + "/hello")[0] == 200
    err = capfd.readouterr().err
    assert "boom from on_event" in err and "on_event" in err
    assert "boom from on_log" in err


@requires_backend
def test_start_failure_raises_with_library_message():
    with valve.Server(cmd=backend_cmd(), port=0) as first:
        port = first.address.rsplit(":", 1)[1]
        second = valve.Server(cmd=backend_cmd(), port=port)
        with pytest.raises(valve.ValveError) as info:
            with second:
                pass
        assert info.value.name == "EADDRINUSE"
        assert str(info.value).startswith(f"port {port}")
        assert second.closed


@requires_backend
def test_start_twice_is_a_state_error():
    with valve.Server(cmd=backend_cmd(), port=0) as server:
        with pytest.raises(valve.ValveError) as info:
            server.start()
        assert info.value.name == "VALVE_ESTATE"


@requires_backend
def test_run_blocks_until_stopped_from_another_thread():
    ready = threading.Event()
    server = valve.Server(cmd=backend_cmd(), port=0,
                          on_event=lambda e: e["event"] == "worker_ready" and ready.set())
    result = []

    def serve():
        try:
            server.run()
            result.append("returned")
        except BaseException as e:  # noqa: BLE001
            result.append(e)

    runner = threading.Thread(target=serve)
    runner.start()
    try:
        assert ready.wait(15)
        assert get(server.url + "/hello")[0] == 200
        assert runner.is_alive()
        server.stop(deadline=5)  # returns once run() has returned
        assert result == ["returned"]
    finally:
        runner.join(15)
        server.close()
    assert not runner.is_alive()


@requires_backend
def test_stop_from_a_callback():
    holder = {}

    def on_event(event):
        if event["event"] == "request_completed":
            holder["server"].stop(0)  # only asks; wait() below sees the end

    with valve.Server(cmd=backend_cmd(), port=0, on_event=on_event) as server:
        holder["server"] = server
        assert get(server.url + "/hello")[0] == 200
        server.wait()
        assert server.status()["state"] == "stopped"


@requires_backend
def test_twenty_start_stop_cycles_leave_no_child_and_no_thread():
    threads_before = threading.active_count()
    tasks_before = tasks()
    for i in range(20):
        events = []
        with valve.Server(cmd=backend_cmd(), port=0, n_min=1, n_max=2,
                          on_event=events.append, on_log=lambda level, line: None) as server:
            status, body = get(server.url + "/hello")
            assert status == 200, i
            assert tasks() > tasks_before  # valve's loop thread, while it serves
            assert len(server.status()["workers"]) >= 1
        assert children() == [], f"cycle {i}: children left over"
        assert tasks() == tasks_before, f"cycle {i}: {tasks()} threads, {tasks_before} before"
        assert "worker_ready" in [e["event"] for e in events]
    assert threading.active_count() == threads_before


@requires_backend
def test_dropped_server_is_freed_by_the_garbage_collector():
    import gc

    tasks_before = tasks()
    server = valve.Server(cmd=backend_cmd(), port=0).start()
    assert children() != []
    del server
    gc.collect()
    assert children() == []
    assert tasks() == tasks_before


@requires_backend
def test_server_dropped_on_its_own_loop_thread():
    # The last reference goes inside the server's own callback, so it is freed on valve's loop
    # thread, where valve_server_free() must not run (it joins that very thread).
    tasks_before = tasks()
    threads_before = threading.active_count()
    box = {}

    def on_event(event):
        if event["event"] == "request_completed":
            box.pop("server")

    box["server"] = valve.Server(cmd=backend_cmd(), port=0, on_event=on_event).start()
    url = box["server"].url
    assert get(url + "/hello")[0] == 200
    assert wait_for(lambda: "server" not in box)
    assert wait_for(lambda: children() == [] and tasks() == tasks_before
                    and threading.active_count() == threads_before)


def worker_pids(server, state="ready"):
    return sorted(w["pid"] for w in server.status()["workers"] if w["state"] == state)


@requires_backend
def test_reload_replaces_every_worker_and_scale_resizes_the_pool():
    events = []
    server = valve.Server(cmd=backend_cmd(), port=0, n_min=2, n_max=4, on_event=events.append,
                          on_log=lambda level, line: None)
    with pytest.raises(valve.ValveError) as info:
        server.reload()  # not started yet
    assert info.value.name == "VALVE_ESTATE"
    with server:
        assert wait_for(lambda: len(worker_pids(server)) == 2)
        before = worker_pids(server)
        assert server.status()["generation"] == 1

        assert server.reload() is None  # returns once the new generation serves
        st = server.status()
        assert st["generation"] == 2
        assert st["reload"]["state"] == "done" and st["reload"]["generation"] == 2
        # Every worker is new; the old generation drains and goes.
        assert wait_for(lambda: len(server.status()["workers"]) == 2
                        and not set(before) & {w["pid"] for w in server.status()["workers"]})
        assert all(w["generation"] == 2 for w in server.status()["workers"])
        assert get(server.url + "/hello")[0] == 200
        assert wait_for(lambda: any(e["event"] == "reload" for e in events))
        done = [e for e in events if e["event"] == "reload"]
        assert done[-1]["ok"] is True and done[-1]["generation"] == 2, done

        server.scale(3, 3)
        assert wait_for(lambda: len(worker_pids(server)) == 3)
        config = server.status()["config"]
        assert config["n-min"] == 3 and config["n-max"] == 3

        with pytest.raises(valve.ValveError) as info:
            server.scale(3, 2)
        assert str(info.value) == "n-min 3: must be at most n-max (2)"
        assert info.value.name == "VALVE_EINVALID"
        with pytest.raises(valve.ValveError) as info:
            server.scale(-1, 2)
        assert str(info.value).startswith("n-min -1")
        assert server.status()["config"]["n-min"] == 3  # unchanged by the failures

        server.stop(deadline=5)
        with pytest.raises(valve.ValveError) as info:
            server.reload()
        assert info.value.name == "VALVE_ESTATE"
        with pytest.raises(valve.ValveError) as info:
            server.scale(1, 1)
        assert info.value.name == "VALVE_ESTATE"
    assert children() == []


@requires_backend
def test_failed_reload_raises_with_the_workers_output_and_the_old_workers_serve(tmp_path):
    broken = tmp_path / "broken"
    cmd = f"if [ -e {broken} ]; then echo plumber.R is broken >&2; exit 3; fi; exec {backend_cmd()}"
    events = []
    with valve.Server(cmd=cmd, port=0, n_min=1, on_event=events.append,
                      on_log=lambda level, line: None) as server:
        before = worker_pids(server)
        broken.touch()
        with pytest.raises(valve.ValveError) as info:
            server.reload()
        assert info.value.name == "VALVE_ESTARTUP"
        assert "plumber.R is broken" in str(info.value), str(info.value)
        st = server.status()
        assert st["generation"] == 1 and st["reload"]["state"] == "failed"
        assert worker_pids(server) == before
        assert get(server.url + "/hello")[0] == 200
        assert wait_for(lambda: any(e["event"] == "reload" for e in events))
        assert [e["ok"] for e in events if e["event"] == "reload"] == [False]
