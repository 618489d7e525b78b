"""valve: a supervisor and reverse proxy for pools of R plumber workers, from Python.

A thin ctypes binding over libvalve's C ABI (valve/valve.h)::

    import urllib.request, valve

    with valve.Server("plumber.R", port=0, n_max=4) as server:
        print(urllib.request.urlopen(server.url + "/echo?msg=hi").read())

The library is loaded from $VALVE_LIBRARY if set, else found as "valve" on the system.
"""

import _thread
import atexit
import ctypes
import json
import os
import sys
import threading
import traceback
import weakref

from . import _lib
from ._lib import lib

__all__ = ["Server", "ValveError", "version", "version_number", "config_keys", "describe"]


def _text(raw):
    return raw.decode("utf-8", "replace") if raw is not None else ""


class ValveError(Exception):
    """A libvalve call failed. ``code`` is the negative error code (libuv's codes pass through),
    ``name`` its symbolic name ("VALVE_EINVALID", "EADDRINUSE"), ``message`` the library's own
    message (it names the option and value at fault), or the code's description."""

    def __init__(self, code, message=""):
        self.code = code
        self.name = _text(lib.valve_err_name(code))
        self.message = message or _text(lib.valve_strerror(code))
        super().__init__(self.message)

    def __repr__(self):
        return f"ValveError({self.name}: {self.message!r})"


def version():
    """The runtime library's version, "MAJOR.MINOR.PATCH"."""
    return _text(lib.valve_version_string())


def version_number():
    """The runtime library's version as MAJOR*10000 + MINOR*100 + PATCH."""
    return lib.valve_version()


def config_keys():
    """Every option's name, as valve spells it ("n-max"), in documentation order."""
    keys = []
    while (key := lib.valve_config_key(len(keys))) is not None:
        keys.append(key.decode())
    return keys


def describe(key):
    """One line describing an option and its default; None if the key is unknown."""
    text = lib.valve_config_describe(key.replace("_", "-").encode())
    return None if text is None else _text(text)


def _option_value(value):
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _report_callback_error(what):
    # An exception must not unwind into C: show it, as Python does for unraisable errors.
    try:
        print(f"valve: exception in {what} callback (ignored):", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
    except BaseException:  # noqa: BLE001 - stderr itself may be gone at shutdown
        pass


_live_servers = weakref.WeakSet()


class Server:
    """A pool of R plumber workers (or any HTTP workers, with ``cmd``) behind one listener.

    Keyword arguments are valve's options with "-" written "_" (``n_max=4``,
    ``graceful_timeout=5``); see :func:`config_keys` and :func:`describe`. Values are passed as
    strings (True/False as "true"/"false"); None leaves an option at its default. A list option
    takes a list (``env=["TZ", "MODE=prod"]``) or a dict (``env={"MODE": "prod"}``).

    ``on_event(dict)`` receives each pool event (worker_launched, worker_ready, worker_exited,
    request_completed, reload); ``on_log(level, line)`` receives each log line (level 0 debug ..
    3 error), which otherwise go to stderr. Both run on valve's loop thread: keep them quick.
    From them, :meth:`stop` only asks for the stop and :meth:`reload` only starts the reload.
    Exceptions they raise are printed to stderr and ignored.

    Raises :class:`ValveError` if the configuration is invalid or the file does not exist, and
    :class:`TypeError` for an unknown option.
    """

    def __init__(self, file="plumber.R", *, host=None, port=None, n_min=None, n_max=None,
                 cmd=None, on_event=None, on_log=None, **options):
        self._handle = None
        self._callbacks = []  # ctypes callback objects: alive until the handle is freed
        self._loop_ident = None  # the thread callbacks arrive on
        self._run_lock = threading.Lock()  # held while run() serves on some thread
        self._run_ident = None

        options = dict(file=file, host=host, port=port, n_min=n_min, n_max=n_max, cmd=cmd,
                       **options)
        known = set(config_keys())
        for name in options:
            if name.replace("_", "-") not in known:
                names = ", ".join(sorted(k.replace("-", "_") for k in known))
                raise TypeError(f"Server() got an unexpected keyword argument {name!r} "
                                f"(valve's options: {names})")

        cfg = _lib.config_p()
        _check(lib.valve_config_new(ctypes.byref(cfg)))
        try:
            for name, value in options.items():
                if value is None:
                    continue
                # A list option takes each item in turn; a dict's items as NAME=VALUE (env).
                if isinstance(value, dict):
                    values = [f"{k}={v}" for k, v in value.items()]
                elif isinstance(value, (list, tuple)):
                    values = value
                else:
                    values = [value]
                for item in values:
                    if lib.valve_config_set(cfg, name.replace("_", "-").encode(),
                                            _option_value(item)) != 0:
                        raise _config_error(cfg, _lib.VALVE_EINVALID)
            if on_log is not None:
                cb = _lib.LOG_CB(self._log_trampoline(on_log))
                self._callbacks.append(cb)
                _check_config(cfg, lib.valve_config_set_log_callback(cfg, cb, None,
                                                                     _lib.DESTROY_CB()))
            if on_event is not None:
                cb = _lib.EVENT_CB(self._event_trampoline(on_event))
                self._callbacks.append(cb)
                _check_config(cfg, lib.valve_config_set_event_callback(cfg, cb, None,
                                                                       _lib.DESTROY_CB()))
            handle = _lib.server_p()
            _check_config(cfg, lib.valve_server_new(ctypes.byref(handle), cfg))
            self._handle = handle
        finally:
            lib.valve_config_free(cfg)
        _live_servers.add(self)

    # Callbacks hold only a weak reference to the server, so a dropped server is still collected.
    def _log_trampoline(self, on_log):
        this = weakref.ref(self)

        def trampoline(_user_data, level, line):
            _note_loop_thread(this)
            try:
                on_log(level, _text(line))
            except BaseException:  # noqa: BLE001 - nothing may propagate into C
                _report_callback_error("on_log")

        return trampoline

    def _event_trampoline(self, on_event):
        this = weakref.ref(self)

        def trampoline(_user_data, event_json):
            _note_loop_thread(this)
            try:
                on_event(json.loads(_text(event_json)))
            except BaseException:  # noqa: BLE001 - nothing may propagate into C
                _report_callback_error("on_event")

        return trampoline

    def _h(self):
        if self._handle is None:
            raise ValueError("valve.Server: operation on a closed server")
        return self._handle

    def _raise(self, code):
        raise ValveError(code, _text(lib.valve_server_last_error(self._h())))

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self):
        """Starts serving on a background thread; returns once the server listens and its first
        worker is ready. Raises ValveError if start-up fails (port in use, no worker ready, R or
        plumber missing)."""
        rc = lib.valve_server_start(self._h())
        if rc != 0:
            self._raise(rc)
        return self

    def run(self):
        """Serves on the calling thread until the server is stopped (by :meth:`stop` from
        another thread or a callback, or by SIGINT/SIGTERM with ``handle_signals=True``)."""
        with self._run_lock:
            self._run_ident = threading.get_ident()
            try:
                rc = lib.valve_server_run(self._h())
            finally:
                self._run_ident = None
        if rc != 0:
            self._raise(rc)

    def stop(self, deadline=None):
        """Stops gracefully: stops accepting, lets requests in flight finish for up to
        ``deadline`` seconds (None: the configured graceful_timeout), ends the workers, and
        returns once the server has stopped. From a callback it only asks for the stop."""
        h = self._h()
        lib.valve_server_stop(h, -1.0 if deadline is None else float(deadline))
        if threading.get_ident() == self._loop_ident:
            return
        self.wait()

    def wait(self):
        """Waits until the server has stopped; raises ValveError if it ended with an error."""
        # valve_server_wait() waits for start()'s thread only; a run() elsewhere is waited here.
        if self._run_ident is not None and self._run_ident != threading.get_ident():
            with self._run_lock:
                pass
        rc = lib.valve_server_wait(self._h())
        if rc != 0:
            self._raise(rc)

    def close(self):
        """Stops the server at once if it still runs and frees it. Idempotent."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        _live_servers.discard(self)
        callbacks, self._callbacks = self._callbacks, []
        if threading.get_ident() == self._loop_ident:
            # valve_server_free() joins the loop thread: never from the loop thread itself. (Not
            # threading.Thread: it would register the loop thread with threading for good.)
            _thread.start_new_thread(_free, (handle, callbacks))
        else:
            _free(handle, callbacks)

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.stop()
            else:
                try:
                    self.stop()
                except ValveError:
                    pass  # the exception already unwinding says more
        finally:
            self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ---- control -----------------------------------------------------------------------------

    def reload(self):
        """Reloads without dropping a request: starts a new generation of workers (re-reading the
        API file), moves traffic to it once it is ready and drains the old one. Returns once the
        new generation serves. Raises ValveError: VALVE_ESTARTUP if it failed to start (the
        message holds the reason and the failing worker's last output; the old generation keeps
        serving), VALVE_ESTATE if the server is not running. From a callback it only starts the
        reload; a "reload" event reports the outcome."""
        rc = lib.valve_server_reload(self._h())
        if rc != 0:
            self._raise(rc)

    def scale(self, n_min, n_max):
        """Sets the running pool's n-min and n-max: workers above n_max drain and stop, workers up
        to n_min are launched. Raises ValveError: VALVE_EINVALID if n_min > n_max or n_max is 0
        (``n-min 3: must be at most n-max (2)``), VALVE_ESTATE if the server is not running."""
        h = self._h()
        rc = lib.valve_server_scale(h, _count("n-min", n_min), _count("n-max", n_max))
        if rc != 0:
            self._raise(rc)

    # ---- inspection --------------------------------------------------------------------------

    def status(self):
        """A snapshot of the server as a dict: state, address, workers, queue, configuration.
        Call it once the server was started: libvalve answers from its loop thread."""
        out = ctypes.c_void_p()
        rc = lib.valve_server_status(self._h(), ctypes.byref(out))
        if rc != 0:
            self._raise(rc)
        try:
            return json.loads(_text(ctypes.string_at(out.value)))
        finally:
            lib.valve_free(out)

    @property
    def address(self):
        """The address the server listens on, "host:port" (the real port when port 0 was asked).
        Raises ValveError (VALVE_ESTATE) before the server listens."""
        buf = ctypes.create_string_buffer(512)
        rc = lib.valve_server_address(self._h(), buf, len(buf))
        if rc != 0:
            self._raise(rc)
        return _text(buf.value)

    @property
    def url(self):
        """The server's base URL, "http://host:port"."""
        return f"http://{self.address}"

    @property
    def closed(self):
        return self._handle is None

    def __repr__(self):
        state = "closed" if self._handle is None else "open"
        return f"<valve.Server {state} at {id(self):#x}>"


def _check(rc):
    if rc != 0:
        raise ValveError(rc)


def _count(key, value):
    # A worker count as valve_server_scale() takes it (a C unsigned): refused here rather than
    # wrapped around by ctypes.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValveError(_lib.VALVE_EINVALID, f"{key} {value}: expected a whole number")
    if value > 0xFFFFFFFF:
        raise ValveError(_lib.VALVE_EINVALID, f"{key} {value}: must be at most 4294967295")
    return value


def _config_error(cfg, rc):
    return ValveError(rc, _text(lib.valve_config_last_error(cfg)))


def _check_config(cfg, rc):
    if rc != 0:
        raise _config_error(cfg, rc)


def _note_loop_thread(server_ref):
    server = server_ref()
    if server is not None:
        server._loop_ident = threading.get_ident()


def _free(handle, callbacks):
    lib.valve_server_free(handle)
    del callbacks  # only now may the callback objects go


def _close_all():
    # Before the interpreter finalizes: no callback may arrive into a dying interpreter.
    for server in list(_live_servers):
        try:
            server.close()
        except Exception:  # noqa: BLE001
            pass


atexit.register(_close_all)
