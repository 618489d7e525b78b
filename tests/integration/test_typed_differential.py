"""The request check (--check-requests) against plumber itself, on generated requests.

tests/apps/typed_all.R declares every parameter type plumber 1.2.1 knows (bool/logical/boolean,
int/integer, dbl/double/numeric/number/float, chr/character/string/str, arrays of them, object,
df, file) as query, path and body parameters, with defaults and without, endpoints with their own
@parser and @serializer, and overlapping dynamic routes in both orders. Each endpoint converts its
typed arguments as R does and fails (plumber's 500) when R cannot, then echoes what it got.

A seeded generator (VALVE_TYPED_SEED; a fixed one by default, so that CI is reproducible) makes a
few hundred requests from edge cases: numbers R reads and does not, booleans in every spelling,
blanks, signs, hexadecimals, huge digits, unicode, percent-encoding, '+' for a space, repeated and
unknown keys, missing required ones, JSON numbers, strings, nulls, nested arrays and objects, forms,
multipart, content types with and without charset, wrong ones and none, empty bodies. Each goes
straight to a plumber process (a new connection each: plumber stalls on kept-alive ones) and
through valvectl (check on, one worker, one kept-alive connection) to the same file.

The rule: where valve refuses a request with its check status (422), plumber answered an error for
it too (4xx, or its 500 for an R error), unless every violation valve names is one of its
deliberate strictnesses (deliberate() below: a number written with a fraction, an exponent or in
hexadecimal for an int, which R would read, or truncate: 1.5 to 1; a JSON value of another JSON type, such
as true for a number); where valve passes a request on, both answers are the same, status and body.
Every divergence is printed with the request, both answers and the seed.
"""

import http.client
import json
import os
import random
import re
import subprocess
import sys
import time
import unittest
import urllib.parse

from harness import LOOPBACK, ValveTestCase, app_path, free_port, wait_until

APP = app_path("typed_all.R")
SEED = int(os.environ.get("VALVE_TYPED_SEED", "20261206"))
COUNT = int(os.environ.get("VALVE_TYPED_COUNT", "360"))

# Text values (query, path, form) and JSON values, the edge cases first.
TEXTS = ["1", "1.0", "1e3", " 1", "1 ", "+1", "-0", ".5", "5.", "0x10", "0X1a", "1L", "Inf", "-Inf",
         "inf", "infinity", "NA", "NaN", "nan", "", "TRUE", "T", "true", "True", "tRUE", "yes", "on",
         "t", "f", "F", "FALSE", "false", "0", "01", "-12", "2147483647", "2147483648",
         "-2147483647", "-2147483648", "12345678901234567890", "1" * 40, "0.1" + "0" * 30 + "1",
         "1e400", "-1e-400", "1e", "1e+", "1.5e2", "1_000", "1,2", "1,x", ",1", "1,,2", "abc",
         "é", "日本", "１", "\t2\t", "1\n", "a b", "a+b", "%", "100%", "a&b", "a=b", "x/y", "-",
         "+", ".", "..", "0x", "0x1p3", "1d", "1f", " ", "null", " TRUE", "false ", "-.5e-3",
         "0x7FFFFFFF", "0x80000000", "1.", "1e-1", "0.0", "-"+"9" * 12]
JSON_VALUES = [0, 1, 2, -1, 1.5, -0.0, 1e3, 1.0, 2147483647, 2147483648, -2147483648, 1e308,
               "1", "1.5", "abc", "", " 2 ", "TRUE", "true", "T", "yes", "1e3", "0x10", "é", True,
               False, None, [], [1, 2], [1, "x"], [1.5, 2], [True, False], ["1", "2"], [[1]],
               [None], {"a": 1}, {}, [{"a": 1}], ["TRUE", "F"]]

Q_PARAMS = {"a": "bool", "b": "bool", "c": "bool", "i": "int", "j": "int", "d": "dbl", "e": "dbl",
            "f": "dbl", "g": "dbl", "h": "dbl", "s": "chr", "t": "chr", "u": "chr", "v": "chr",
            "ai": "int", "ad": "dbl", "ab": "bool", "as": "chr"}
REQ_PARAMS = ["n", "m", "k", "l", "flag", "label"]
BODY_PARAMS = ["wt", "hp", "am", "tags", "ids", "obj", "df"]
REQUIRED = {"n", "m", "wt", "hp"}
# Each parameter's type, and good values of each type.
TYPES = dict(Q_PARAMS, n="int", m="dbl", k="dbl", l="int", flag="bool", label="chr", wt="dbl",
             hp="int", am="bool", tags="chr", ids="int")
GOOD_TEXTS = {"int": ["3", "-7", "0", "42"], "dbl": ["2.25", "-1", "1e-3", "7"],
              "bool": ["TRUE", "false", "T", "True"], "chr": ["word", "two words", "5"]}
GOOD_JSON = {"int": [3, -7, [1, 2]], "dbl": [2.25, 1, [0.5, 2]], "bool": [True, False, [True]],
             "chr": ["word", ["a", "b"], "5"]}
PATHS = ["/p/int/{}", "/p/integer/{}", "/p/dbl/{}", "/p/double/{}", "/p/numeric/{}", "/p/bool/{}",
         "/p/logical/{}", "/p/chr/{}", "/p/any/{}", "/p/ints/{}", "/p/annot/{}", "/p/two/{}/{}",
         "/o1/{}", "/o2/{}", "/o3/{}", "/o4/{}", "/o5/{}", "/o6/{}", "/o6/{}/{}"]
OWN = ["text", "json", "form", "octet", "multi", "rds", "csv", "none"]
JSON_TYPES = ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
              "text/json", None]
FORM_TYPES = ["application/x-www-form-urlencoded",
              "application/x-www-form-urlencoded; charset=UTF-8", None, "application/xml"]
OTHER_TYPES = ["text/plain", "application/octet-stream", "application/x-www-form-urlencoded",
               "application/json", "text/csv"]
BOUNDARY = "valve-typed-7d3f"


def encode_text(rng, value):
    """A value as a query or form carries it: percent-encoded, with '+' or %20 for a space, or
    as it is where that is safe."""
    how = rng.random()
    if how < 0.4:
        return urllib.parse.quote_plus(value, safe="")
    if how < 0.7:
        return urllib.parse.quote(value, safe="")
    return urllib.parse.quote(value, safe="+,.-:!$'()*@~ ").replace(" ", "+")


def multipart(fields, files=()):
    out = []
    for name, value in fields:
        out.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                   .encode() + value.encode() + b"\r\n")
    for name, filename, data in files:
        out.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; '
                   f'filename="{filename}"\r\nContent-Type: text/plain\r\n\r\n'.encode()
                   + data + b"\r\n")
    out.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


class Generator:
    def __init__(self, seed):
        self.rng = random.Random(seed)

    def text(self, kind=None):
        """An edge case, or (half the time, when the parameter's type is known) a good value of
        its type, so that one edge case is often the only doubt in a request."""
        if kind and self.rng.random() < 0.5:
            return self.rng.choice(GOOD_TEXTS[kind])
        return self.rng.choice(TEXTS)

    def json_value(self, kind=None):
        if kind and self.rng.random() < 0.5:
            return self.rng.choice(GOOD_JSON[kind])
        return self.rng.choice(JSON_VALUES)

    def names(self, names, most=3):
        """Some of names: the required ones (REQUIRED) most of the time, and a few others."""
        rng = self.rng
        chosen = [n for n in names if n in REQUIRED and rng.random() < 0.85]
        others = [n for n in names if n not in chosen]
        return chosen + rng.sample(others, rng.randint(0, min(most, len(others))))

    def query(self, names, extra=True):
        rng = self.rng
        pairs = []
        for name in self.names(names):
            for _ in range(rng.choice([1, 1, 1, 2])):  # sometimes a repeated key
                value = self.text(TYPES.get(name))
                pairs.append(f"{urllib.parse.quote(name)}={encode_text(rng, value)}")
        if extra and rng.random() < 0.2:
            pairs.append(rng.choice(["unknown=5", "zz=abc", "a=b=c", "&&", "=5", "i", "i=",
                                     "%69=7", "i%3D=1"]))
        rng.shuffle(pairs)
        return "&".join(pairs)

    def form(self, names):
        return self.query(names).encode()

    def json_body(self, names):
        rng = self.rng
        obj = {name: self.json_value(TYPES.get(name)) for name in self.names(names, 4)}
        if rng.random() < 0.15:
            obj["unknown"] = self.json_value()
        shape = rng.random()
        if shape < 0.05:
            return json.dumps([obj]).encode()  # not an object: no named arguments
        if shape < 0.08:
            return b'{"wt": 1,'  # not JSON
        if shape < 0.1:
            return b""
        return json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode()

    def body(self, names):
        """A body of some kind for names, with its content type."""
        rng = self.rng
        kind = rng.random()
        if kind < 0.5:
            return rng.choice(JSON_TYPES), self.json_body(names)
        if kind < 0.8:
            return rng.choice(FORM_TYPES), self.form(names)
        if kind < 0.9:
            fields = [(n, self.text(TYPES.get(n)))
                      for n in rng.sample(names, rng.randint(0, min(2, len(names))))]
            return f"multipart/form-data; boundary={BOUNDARY}", multipart(fields)
        return rng.choice(OTHER_TYPES), rng.choice([b"", b"n=5", b"plain text", b'{"n": 1}'])

    def request(self):
        """(method, target, content type, body)"""
        rng = self.rng
        kind = rng.random()
        if kind < 0.25:
            return "GET", "/q?" + self.query(list(Q_PARAMS)), None, None
        if kind < 0.4:
            ctype, body = self.body(list(Q_PARAMS))
            q = self.query(list(Q_PARAMS)) if rng.random() < 0.3 else ""
            return "POST", "/q" + ("?" + q if q else ""), ctype, body
        if kind < 0.5:
            q = self.query(REQ_PARAMS)
            if rng.random() < 0.5:
                return "GET", "/req" + ("?" + q if q else ""), None, None
            ctype, body = self.body(REQ_PARAMS)
            return "POST", "/req" + ("?" + q if q else ""), ctype, body
        if kind < 0.62:
            ctype, body = self.body(BODY_PARAMS)
            q = self.query(["wt", "hp", "am"]) if rng.random() < 0.25 else ""
            return "POST", "/body" + ("?" + q if q else ""), ctype, body
        if kind < 0.65:
            fields = [("n", self.text("int"))] if rng.random() < 0.7 else []
            files = [("upload", "a.txt", b"hello")] if rng.random() < 0.7 else []
            q = "?n=" + encode_text(rng, self.text("int")) if rng.random() < 0.3 else ""
            return ("POST", "/upload" + q, f"multipart/form-data; boundary={BOUNDARY}",
                    multipart(fields, files))
        if kind < 0.88:
            template = rng.choice(PATHS)
            kinds = [rng.choice([None, "int", "dbl", "bool"]) for _ in range(template.count("{}"))]
            values = [urllib.parse.quote(self.text(kind), safe="" if rng.random() < 0.7 else "+,:")
                      for kind in kinds]
            target = template.format(*values)
            method = "POST" if template.startswith("/o3/") and rng.random() < 0.3 else "GET"
            if template.startswith("/p/two/") and rng.random() < 0.5:
                target += "?q=" + encode_text(rng, self.text("bool"))
            return method, target, None, None
        own = rng.choice(OWN)
        q = "?n=" + encode_text(rng, self.text("int")) if rng.random() < 0.6 else ""
        ctype, body = self.body(["n"])
        if own == "csv" and rng.random() < 0.5:
            ctype, body = "text/csv", b"n,x\n1,2\n"
        return "POST", f"/own/{own}{q}", ctype, body


def send(conn, method, target, content_type, body):
    headers = {"Content-Type": content_type} if content_type else {}
    if body is not None and method in ("GET", "HEAD"):
        body = None
    conn.request(method, target, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


# A number as R reads one (its exponent's digits may be left out: R reads "1e" as 1).
NUMBER = re.compile(r"\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d*)?"
                    r"|0[xX]([0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)([pP][+-]?\d+)?)\s*")


def deliberate(violation):
    """Whether a violation is one valve makes on purpose where R would take the value: an int
    written as a whole number with a fraction, an exponent or in hexadecimal ('1.0', '1e3',
    '0x10'; R would read it, or truncate '1.5' to 1); a JSON value of another JSON type (true or
    an object for a number, a float for an int, null)."""
    kind = violation["type"]
    if kind in ("int_from_float", "int_type", "float_type", "bool_type"):
        return True
    value = violation.get("input")
    if kind == "int_parsing" and isinstance(value, str) and NUMBER.fullmatch(value):
        try:
            text = re.sub(r"[eE][+-]?$", "", value.strip())
            number = float.fromhex(text) if "x" in text.lower() else float(text)
        except ValueError:
            return False
        return abs(number) < 2147483648
    return False


class TypedDifferentialTest(ValveTestCase):
    def start_plumber(self):
        port = free_port()
        serve = (f"plumber::pr_run(plumber::pr({APP!r}), host = {LOOPBACK!r}, port = {port}L, "
                 "docs = FALSE, quiet = TRUE)")
        log = open(os.path.join(self.tmpdir, "plumber.log"), "wb")
        self.addCleanup(log.close)
        self.track_process(subprocess.Popen(
            ["Rscript", "-e", serve], cwd=os.path.dirname(APP), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT))

        def up():
            try:
                return self.plumber(port, "GET", "/q", None, None)[0] == 200
            except OSError:
                return False
        wait_until(up, 60, message="plumber answering")
        return port

    @staticmethod
    def plumber(port, method, target, content_type, body):
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
        try:
            return send(conn, method, target, content_type, body)
        finally:
            conn.close()

    def test_generated_requests_against_plumber(self):
        plumber_port = self.start_plumber()
        valve = self.start_valve("-f", APP, "-n", "1", "--admin", "127.0.0.1:0", ready="/q",
                                 ready_timeout=60)
        valve.wait_log(r"openapi: generation 1: \d+ operations", timeout=30)
        conn = http.client.HTTPConnection(valve.host, valve.port, timeout=30)
        self.addCleanup(conn.close)

        gen = Generator(SEED)
        divergences, refused, passed, excused = [], 0, 0, 0
        started = time.monotonic()
        for number in range(COUNT):
            method, target, ctype, body = gen.request()
            want = self.plumber(plumber_port, method, target, ctype, body)
            try:
                got = send(conn, method, target, ctype, body)
            except (http.client.HTTPException, OSError):
                conn.close()
                got = send(conn, method, target, ctype, body)
            problem = None
            detail = None
            if got[0] == 422:
                try:
                    detail = json.loads(got[1]).get("detail")
                except ValueError:
                    detail = None
            if detail is not None:
                refused += 1
                if want[0] < 400:
                    if all(deliberate(v) for v in detail):
                        excused += 1
                    else:
                        problem = "valve refused a request plumber served"
            else:
                passed += 1
                if got != want:
                    problem = "valve passed the request on, and the answers differ"
            if problem:
                divergences.append(
                    f"#{number} {problem} (VALVE_TYPED_SEED={SEED}):\n"
                    f"  {method} {target}  Content-Type: {ctype}  body: {body!r}\n"
                    f"  plumber: {want[0]} {want[1][:300]!r}\n"
                    f"  valve:   {got[0]} {got[1][:500]!r}")
        elapsed = time.monotonic() - started
        print(f"\n{COUNT} requests (seed {SEED}) in {elapsed:.1f} s: {refused} refused by valve "
              f"({excused} on purpose where plumber served them), {passed} passed on; "
              f"{len(divergences)} divergences", file=sys.stderr)
        self.assertFalse(divergences, "\n".join(divergences))
        # Both kinds of answers were exercised, and every refusal is counted.
        self.assertGreater(refused, COUNT // 10)
        self.assertGreater(passed, COUNT // 3)
        self.assertEqual(valve.metric("valve_check_refusals_total"), refused)


if __name__ == "__main__":
    unittest.main(verbosity=2)
