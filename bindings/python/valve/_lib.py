"""ctypes declarations for libvalve's C ABI (valve/valve.h), one per exported function."""

import ctypes
import ctypes.util
import os

c_int, c_uint, c_double, c_size_t = ctypes.c_int, ctypes.c_uint, ctypes.c_double, ctypes.c_size_t
c_char_p, c_void_p = ctypes.c_char_p, ctypes.c_void_p


class Config(ctypes.Structure):
    """valve_config_t: opaque."""


class ServerHandle(ctypes.Structure):
    """valve_server_t: opaque."""


config_p = ctypes.POINTER(Config)
server_p = ctypes.POINTER(ServerHandle)

# typedef void (*valve_log_cb)(void *user_data, int level, const char *line);
LOG_CB = ctypes.CFUNCTYPE(None, c_void_p, c_int, c_char_p)
# typedef void (*valve_event_cb)(void *user_data, const char *event_json);
EVENT_CB = ctypes.CFUNCTYPE(None, c_void_p, c_char_p)
# void (*destroy)(void *user_data)
DESTROY_CB = ctypes.CFUNCTYPE(None, c_void_p)


def _load():
    path = os.environ.get("VALVE_LIBRARY")
    name = path or ctypes.util.find_library("valve") or "libvalve.so.0"
    try:
        # CDLL (not PyDLL): every call releases the GIL, so blocking calls (start, wait, run) and
        # callbacks arriving on valve's loop thread never deadlock against the calling thread.
        return ctypes.CDLL(name)
    except OSError as e:
        raise ImportError(
            f"valve: cannot load libvalve ({name}): {e}; set VALVE_LIBRARY to the library's path"
        ) from e


lib = _load()

_DECLARATIONS = {
    # name: (restype, argtypes)
    "valve_err_name": (c_char_p, [c_int]),
    "valve_strerror": (c_char_p, [c_int]),
    "valve_version_string": (c_char_p, []),
    "valve_version": (c_uint, []),
    "valve_config_new": (c_int, [ctypes.POINTER(config_p)]),
    "valve_config_free": (None, [config_p]),
    "valve_config_set": (c_int, [config_p, c_char_p, c_char_p]),
    "valve_config_get": (c_char_p, [config_p, c_char_p]),
    "valve_config_key": (c_char_p, [c_size_t]),
    "valve_config_describe": (c_char_p, [c_char_p]),
    "valve_config_last_error": (c_char_p, [config_p]),
    "valve_config_set_log_callback": (c_int, [config_p, LOG_CB, c_void_p, DESTROY_CB]),
    "valve_config_set_event_callback": (c_int, [config_p, EVENT_CB, c_void_p, DESTROY_CB]),
    "valve_server_new": (c_int, [ctypes.POINTER(server_p), config_p]),
    "valve_server_free": (None, [server_p]),
    "valve_server_run": (c_int, [server_p]),
    "valve_server_start": (c_int, [server_p]),
    "valve_server_stop": (c_int, [server_p, c_double]),
    "valve_server_wait": (c_int, [server_p]),
    "valve_server_reload": (c_int, [server_p]),
    "valve_server_scale": (c_int, [server_p, c_uint, c_uint]),
    # char **json_out: a void pointer, so ctypes hands back the address that valve_free() needs.
    "valve_server_status": (c_int, [server_p, ctypes.POINTER(c_void_p)]),
    "valve_server_address": (c_int, [server_p, c_char_p, c_size_t]),
    "valve_server_last_error": (c_char_p, [server_p]),
    "valve_free": (None, [c_void_p]),
}

for _name, (_restype, _argtypes) in _DECLARATIONS.items():
    _fn = getattr(lib, _name)
    _fn.restype = _restype
    _fn.argtypes = _argtypes

VALVE_EINVALID = -10001
VALVE_ESTATE = -10002
VALVE_ESTARTUP = -10003
VALVE_ENOMEM = -10004
VALVE_EINTERNAL = -10005
VALVE_ECONFIG = -10006
