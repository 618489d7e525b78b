#!/usr/bin/python3
"""The shared library exports exactly the functions valve.h declares: nothing internal leaks out,
and nothing declared is missing. Usage: check_symbols.py LIBRARY HEADER"""

import re
import subprocess
import sys

library, header = sys.argv[1], sys.argv[2]
with open(header) as f:
    declared = set(re.findall(r"VALVE_API\s+[^;(]*?\b(valve_\w+)\s*\(", f.read()))
out = subprocess.run(["nm", "-D", "--defined-only", library], check=True, capture_output=True,
                     text=True).stdout
exported = {line.split()[-1].split("@")[0] for line in out.splitlines() if line.split()[1:2] in (["T"], ["W"])}
missing = sorted(declared - exported)
extra = sorted(exported - declared)
print(f"{len(declared)} declared, {len(exported)} exported")
if missing:
    print("declared in valve.h but not exported:", " ".join(missing))
if extra:
    print("exported but not in valve.h:", " ".join(extra))
if not declared or missing or extra:
    sys.exit(1)
