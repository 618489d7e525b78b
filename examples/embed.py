#!/usr/bin/python3
"""Embed valve in a Python program: start a pool of R plumber workers, send one request, stop.

    VALVE_LIBRARY=build/libvalve/libvalve.so PYTHONPATH=bindings/python python3 examples/embed.py

Without VALVE_LIBRARY the binding looks for an installed libvalve; without PYTHONPATH, for an
installed `valve` package.
"""

import json
import os
import sys
import urllib.request

try:
    import valve
except ImportError:  # run from a checkout: use the binding beside this example
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bindings",
                                    "python"))
    import valve

API = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hello", "plumber.R")


def main():
    # port=0 picks a free port; the with-block starts the pool (returning once a worker is ready)
    # and stops it gracefully at the end.
    # valve will not start workers as root unless told to (or given a user= to run them as).
    with valve.Server(API, port=0, n_max=2, log_level="warn",
                      allow_root=os.geteuid() == 0) as server:
        print(f"valve {valve.version()} serving {API} on {server.url}")
        with urllib.request.urlopen(server.url + "/echo?msg=hello%20from%20python",
                                    timeout=30) as resp:
            answer = json.load(resp)
        print(f"GET /echo -> {resp.status} {json.dumps(answer)}")
        workers = server.status()["workers"]
        print(f"{len(workers)} worker(s): " + ", ".join(f"pid {w['pid']} {w['state']}"
                                                       for w in workers))
    return 0 if answer == {"msg": "hello from python"} else 1


if __name__ == "__main__":
    sys.exit(main())
