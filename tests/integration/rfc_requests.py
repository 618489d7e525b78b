"""Raw HTTP/1.x requests from RFC 9110, RFC 9112 and request-smuggling research, each with what the
RFC requires and the outcome valve must give: Forward (what the worker must receive) or Reject (the
status valve answers, nothing reaching the worker). test_rfc_table.py runs them against valve,
nginx and HAProxy.

Sources cited in the rows:
  9110 / 9112   RFC 9110 (HTTP Semantics), RFC 9112 (HTTP/1.1), by section
  Kettle 2019   James Kettle, "HTTP Desync Attacks: Request Smuggling Reborn" (CL.TE, TE.CL, TE.TE
                obfuscations of the Transfer-Encoding header)
  Kettle 2021   James Kettle, "HTTP/2: The Sequel is Always Worse" (request-line and header
                injection via CR/LF, the H2 preface at an HTTP/1 port)
  Kettle 2022   James Kettle, "Browser-Powered Desync Attacks" (CL.0: a body the back end does
                not know is there)
  Kettle 2025   James Kettle, "HTTP/1.1 must die: the desync endgame" (Expect variants, 0.CL)
  Regilero      Regilero's smuggling write-ups (2015-2019: NUL and CR in headers, chunk-size
                overflow and truncation, HTTP/0.9 and absolute-form targets)
  Nowotarski    Bartek Nowotarski / Jeppe Bonde Weikop, "Funky chunks" (2024-2025: bare LF in chunk
                lines and extensions, TERM.EXT and EXT.TERM)
"""

H = b"Host: h.test\r\n"


class Forward:
    """The request reaches the worker, once: method and target as given, `headers` present with
    exactly these values (Ellipsis: present, any value), `absent` names not at all, the body after
    de-chunking, and none of `not_in_raw` anywhere in the bytes the worker got (in any case; a
    marker must not be all hex digits, which a random X-Request-Id may hold). `count` requests
    reach the worker (pipelined rows) and as many answers are read; the first is checked."""

    kind = "forward"

    def __init__(self, method, target, headers=None, absent=(), body=b"", not_in_raw=(), count=1):
        self.method, self.target, self.count = method, target, count
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.absent = [a.lower() for a in absent]
        self.body, self.not_in_raw = body, list(not_in_raw)

    def __str__(self):
        return "fwd"


class Reject:
    """valve answers `status` itself. reaches="nothing": not one byte reaches the worker (a
    connection it opened earlier may stay empty). reaches="head": the head was fine and valve
    streams requests, so the worker may get the head and some of the body, but never a whole
    request, and valve closes that connection (the error is in the chunked body)."""

    kind = "reject"

    def __init__(self, status, reaches="nothing"):
        self.status, self.reaches = status, reaches

    def __str__(self):
        return str(self.status) + ("" if self.reaches == "nothing" else "+head")


class Row:
    def __init__(self, id, request, expect, cite, rfc):
        self.id, self.request, self.expect = id, request, expect
        self.cite, self.rfc = cite, rfc
        self.why = ""  # from WHY below

    @property
    def method(self):
        return self.request.split(b" ", 1)[0].lstrip(b"\r\n").decode("latin-1")


def post(headers, body, target=b"/rfc/post"):
    return b"POST " + target + b" HTTP/1.1\r\n" + H + headers + b"\r\n" + body


def chunked(body, target=b"/rfc/chunked", extra=b""):
    return post(extra + b"Transfer-Encoding: chunked\r\n", body, target)


def get(target=b"/rfc/get", headers=b"", version=b"HTTP/1.1", method=b"GET"):
    return method + b" " + target + b" " + version + b"\r\n" + H + headers + b"\r\n"


def hello(target="/rfc/post", method="POST", **kw):
    return Forward(method, target, body=b"hello", **kw)


# A chunked body valve refuses: it reads bodies up to --request-buffer-size (1 MB) whole before a
# worker gets the request, so not even the head reaches one.
BODY_ERROR = Reject(400)
SMUGGLED = b"GET /rfc/smuggled HTTP/1.1\r\nHost: h.test\r\n\r\n"

ROWS = [
    # ---- baselines ------------------------------------------------------------------------------
    Row("get", get(), Forward("GET", "/rfc/get", {"host": "h.test"}),
        "9112 3", "origin-form request-line, Host: forwarded as is"),
    Row("get-query", get(b"/rfc/q?a=1&b=%20x"), Forward("GET", "/rfc/q?a=1&b=%20x"),
        "9112 3.2.1", "origin-form = absolute-path [ \"?\" query ]"),
    Row("http10-no-host", b"GET /rfc/10 HTTP/1.0\r\n\r\n",
        Forward("GET", "/rfc/10", {"host": ...}),
        "9112 3.2", "Host is required in HTTP/1.1 only; a proxy that forwards as HTTP/1.1 MUST "
        "send Host (empty if it has no authority)"),
    Row("post-cl", post(b"Content-Length: 5\r\n", b"hello"), hello(),
        "9112 6.2", "Content-Length frames the body"),
    Row("post-chunked", chunked(b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"),
        hello("/rfc/chunked"), "9112 7.1", "chunked body, de-chunked length 5"),
    Row("get-cl-body", b"GET /rfc/get HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
        hello("/rfc/get", "GET"), "9110 9.3.1",
        "a GET body has no defined semantics but is framed like any other"),
    Row("connection-close", get(headers=b"Connection: close\r\n"),
        Forward("GET", "/rfc/get", absent=["keep-alive"]), "9112 9.6", "close after the answer"),
    Row("pipelined-two", get(b"/rfc/p1") + get(b"/rfc/p2"), Forward("GET", "/rfc/p1", count=2),
        "9112 9.3.2", "pipelined requests are answered in order (both reach the worker; the "
        "first is checked)"),

    # ---- Content-Length --------------------------------------------------------------------------
    Row("cl-dup-same", post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), Reject(400),
        "9110 8.6; 9112 6.3", "MAY accept identical duplicates as one, or reject"),
    Row("cl-dup-diff", post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
        Reject(400), "9112 6.3 (5); Kettle 2019", "MUST treat as unrecoverable: 400 and close"),
    Row("cl-list", post(b"Content-Length: 5, 5\r\n", b"hello"), Reject(400),
        "9110 8.6", "a list of identical values MAY be accepted, or rejected"),
    Row("cl-plus", post(b"Content-Length: +5\r\n", b"hello"), Reject(400),
        "9110 8.6", "Content-Length = 1*DIGIT: a sign is invalid, 400"),
    Row("cl-minus", post(b"Content-Length: -1\r\n", b""), Reject(400),
        "9110 8.6", "1*DIGIT: invalid, 400"),
    Row("cl-hex", post(b"Content-Length: 0x5\r\n", b"hello"), Reject(400),
        "9110 8.6", "1*DIGIT: invalid, 400"),
    Row("cl-inner-space", post(b"Content-Length: 1 0\r\n", b"0123456789"), Reject(400),
        "9110 8.6; Regilero", "1*DIGIT: invalid, 400"),
    Row("cl-empty", post(b"Content-Length: \r\n", b""), Reject(400),
        "9110 8.6", "1*DIGIT: an empty value is invalid, 400"),
    Row("cl-overflow", post(b"Content-Length: 18446744073709551621\r\n", b"hello"), Reject(400),
        "9112 6.3; Regilero", "a length past 2^64 cannot be framed: 400"),
    Row("cl-leading-zeros", post(b"Content-Length: 005\r\n", b"hello"), hello(),
        "9110 8.6", "1*DIGIT: leading zeros are valid, the length is 5"),
    Row("cl-ows-spaces", post(b"Content-Length:   5   \r\n", b"hello"), hello(),
        "9110 5.5, 5.6.3", "OWS around a field value is not part of it"),
    Row("cl-ows-tab", post(b"Content-Length:\t5\t\r\n", b"hello"), Reject(400),
        "9110 5.5, 5.6.3", "OWS may be HTAB: valid, length 5 (valve: 400, stricter)"),
    Row("cl-space-before-colon", post(b"Content-Length : 5\r\n", b"hello"), Reject(400),
        "9112 5.1", "whitespace between field name and colon: server MUST reject with 400"),

    # ---- Transfer-Encoding and CL+TE (Kettle 2019 families) --------------------------------------
    Row("cl-te", post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG"),
        Reject(400), "9112 6.1, 6.3 (3); Kettle 2019 CL.TE",
        "MAY reject; if processed, chunked wins and the connection MUST close after"),
    Row("te-cl", post(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                      b"8\r\nSMUGGLED\r\n0\r\n\r\n"),
        Reject(400), "9112 6.1; Kettle 2019 TE.CL", "as cl-te"),
    Row("te-space-before-colon", chunked(b"5\r\nhello\r\n0\r\n\r\n").replace(
        b"Transfer-Encoding:", b"Transfer-Encoding :"), Reject(400),
        "9112 5.1; Kettle 2019 TE.TE", "MUST reject with 400"),
    Row("te-tab-before-colon", chunked(b"5\r\nhello\r\n0\r\n\r\n").replace(
        b"Transfer-Encoding:", b"Transfer-Encoding\t:"), Reject(400),
        "9112 5.1; Kettle 2019 TE.TE", "MUST reject with 400"),
    Row("te-tab-value", chunked(b"5\r\nhello\r\n0\r\n\r\n").replace(
        b"Transfer-Encoding: ", b"Transfer-Encoding:\t"), hello("/rfc/chunked"),
        "9110 5.6.3", "OWS may be HTAB: this is chunked"),
    Row("te-uppercase", post(b"Transfer-Encoding: CHUNKED\r\n", b"5\r\nhello\r\n0\r\n\r\n",
                             b"/rfc/chunked"),
        hello("/rfc/chunked"), "9112 7", "transfer-coding names are case-insensitive"),
    Row("te-xchunked", post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), Reject(400),
        "9112 6.1; Kettle 2019 TE.TE", "chunked not final in a request: MUST 400 and close"),
    Row("te-identity", post(b"Transfer-Encoding: identity\r\n", b"hello"), Reject(400),
        "9112 6.1", "chunked not final: MUST 400 and close"),
    Row("te-chunked-identity", post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
        Reject(400), "9112 6.1", "chunked not final: MUST 400 and close"),
    Row("te-two-lines", post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                             b"0\r\n\r\n"), Reject(400),
        "9112 6.1; 9110 5.3; Kettle 2019 TE.TE",
        "two lines make the list \"chunked, identity\": chunked not final, 400"),
    Row("te-chunked-twice", post(b"Transfer-Encoding: chunked, chunked\r\n",
                                 b"5\r\nhello\r\n0\r\n\r\n"), Reject(400),
        "9112 7", "a sender MUST NOT chunk twice; read as once or twice the body differs"),
    Row("te-gzip-chunked", post(b"Transfer-Encoding: gzip, chunked\r\n",
                                b"5\r\nhello\r\n0\r\n\r\n"), Reject(501),
        "9112 6.1, 7", "framed correctly, but a server that does not know a coding SHOULD "
        "answer 501"),
    Row("te-quoted", post(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n"), Reject(400),
        "9112 7; Kettle 2019 TE.TE", "a quoted-string is not the token chunked: not final, 400"),
    Row("te-obs-fold", post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"), Reject(400),
        "9112 5.2; Kettle 2019 TE.TE", "obs-fold: reject with 400, or replace with SP"),
    Row("te-first-line-indented", b"POST /rfc/post HTTP/1.1\r\n Transfer-Encoding: chunked\r\n" +
        H + b"Content-Length: 5\r\n\r\nhello", Reject(400),
        "9112 2.2", "whitespace before the first field line: MUST reject, or skip each such line"),
    Row("te-nul", post(b"Transfer-Encoding: chunked\x00\r\n", b"0\r\n\r\n"), Reject(400),
        "9110 5.5; Regilero", "NUL in a value: MUST reject or replace with SP"),
    Row("te-cr-name", post(b"Transfer-Encoding\r: chunked\r\n", b"0\r\n\r\n"), Reject(400),
        "9112 2.2; Kettle 2021", "bare CR: MUST be invalid or replaced with SP"),
    Row("te-http10", b"POST /rfc/post HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n", Reject(400),
        "9112 6.1", "TE in HTTP/1.0: MUST treat the framing as faulty, 400, close"),

    # ---- chunked bodies ------------------------------------------------------------------------
    Row("chunk-ext", chunked(b"5;name=value\r\nhello\r\n0\r\n\r\n"),
        hello("/rfc/chunked", not_in_raw=[b"name=value"]),
        "9112 7.1.1", "a recipient MUST ignore unknown chunk extensions"),
    Row("chunk-ext-bws", chunked(b"5 ; name = value\r\nhello\r\n0\r\n\r\n"),
        hello("/rfc/chunked", not_in_raw=[b"name"]),
        "9112 7.1.1", "chunk-ext = *( BWS \";\" BWS chunk-ext-name [ BWS \"=\" BWS ... ] )"),
    Row("chunk-ext-quoted", chunked(b'5;n="a;b\\"c"\r\nhello\r\n0\r\n\r\n'),
        hello("/rfc/chunked", not_in_raw=[b"a;b"]),
        "9112 7.1.1", "chunk-ext-val may be a quoted-string"),
    Row("chunk-ext-no-value", chunked(b"5;flag\r\nhello\r\n0;last\r\n\r\n"),
        hello("/rfc/chunked", not_in_raw=[b"flag", b"last"]),
        "9112 7.1.1", "chunk-ext-name alone"),
    Row("chunk-leading-zeros", chunked(b"0005\r\nhello\r\n000\r\n\r\n"), hello("/rfc/chunked"),
        "9112 7.1", "chunk-size = 1*HEXDIG: leading zeros are valid"),
    Row("chunk-uppercase-hex", chunked(b"A\r\n0123456789\r\n0\r\n\r\n"),
        Forward("POST", "/rfc/chunked", body=b"0123456789"), "9112 7.1", "HEXDIG is A-F or a-f"),
    Row("chunk-trailer", chunked(b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"),
        hello("/rfc/chunked", absent=["x-trailer"]),
        "9112 7.1.2; 9110 6.5", "trailers MAY be dropped by a proxy (valve re-chunks)"),
    Row("chunk-trailer-framing", chunked(b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n"
                                         b"Transfer-Encoding: gzip\r\n\r\n"),
        hello("/rfc/chunked", not_in_raw=[b"content-length: 99", b"gzip"]),
        "9110 6.5.1", "framing fields MUST NOT be trailers; never merged into the head"),
    Row("chunk-size-overflow", chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n"), BODY_ERROR,
        "9112 7.1; Regilero; Kettle 2025", "a size past 2^64 must not wrap to 5: 400"),
    Row("chunk-size-0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), BODY_ERROR,
        "9112 7.1", "1*HEXDIG: invalid"),
    Row("chunk-size-negative", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), BODY_ERROR,
        "9112 7.1", "1*HEXDIG: invalid"),
    Row("chunk-size-trailing-space", chunked(b"5 \r\nhello\r\n0\r\n\r\n"), BODY_ERROR,
        "9112 7.1.1", "BWS only before \";\": a size then SP then CRLF is invalid"),
    Row("chunk-data-too-long", chunked(b"3\r\nhello\r\n0\r\n\r\n"), BODY_ERROR,
        "9112 7.1; Kettle 2019", "chunk-data not followed by CRLF: invalid"),
    Row("chunk-lf-after-data", chunked(b"5\r\nhello\n0\r\n\r\n"), BODY_ERROR,
        "9112 2.2, 7.1; Nowotarski", "bare LF ending chunk-data (TERM.EXT / EXT.TERM family)"),
    Row("chunk-lf-size-line", chunked(b"5\nhello\r\n0\r\n\r\n"), BODY_ERROR,
        "9112 2.2, 7.1; Nowotarski", "bare LF after chunk-size"),
    Row("chunk-ext-bare-lf", chunked(b"5;a\nb\r\nhello\r\n0\r\n\r\n"), BODY_ERROR,
        "9112 7.1.1; Nowotarski", "LF inside a chunk extension: invalid"),
    Row("chunk-ext-nul", chunked(b"5;a=\x00\r\nhello\r\n0\r\n\r\n"), BODY_ERROR,
        "9112 7.1.1; Regilero", "NUL is not a token or qdtext byte"),

    # ---- line endings, bytes that must not appear, field syntax ----------------------------------
    Row("bare-lf-request-line", b"GET /rfc/lf HTTP/1.1\n" + H + b"\r\n", Forward("GET", "/rfc/lf"),
        "9112 2.2", "a recipient MAY accept bare LF as a line end: valve (llhttp) does after the "
        "request line, and re-frames the head it forwards with CRLF"),
    Row("bare-lf-everywhere", b"GET /rfc/lf HTTP/1.1\nHost: h.test\n\n", Reject(400),
        "9112 2.2", "MAY accept bare LF (valve: strict)"),
    Row("bare-cr", b"GET /rfc/cr HTTP/1.1\r" + H + b"\r\n", Reject(400),
        "9112 2.2; Kettle 2021", "bare CR: MUST be invalid or replaced with SP"),
    Row("leading-crlf", b"\r\n" + get(b"/rfc/lead"), Forward("GET", "/rfc/lead"),
        "9112 2.2", "a server SHOULD ignore at least one empty line before the request-line"),
    Row("nul-value", get(headers=b"X-A: a\x00b\r\n"), Reject(400),
        "9110 5.5; Regilero", "NUL in a value: MUST reject or replace with SP"),
    Row("ctl-value", get(headers=b"X-A: a\x01b\r\n"), Reject(400),
        "9110 5.5", "field-vchar excludes CTLs"),
    Row("del-value", get(headers=b"X-A: a\x7fb\r\n"), Reject(400),
        "9110 5.5", "DEL is a CTL, not field-vchar"),
    Row("obs-text-value", get(headers=b"X-A: caf\xe9\r\n"),
        Forward("GET", "/rfc/get", {"x-a": b"caf\xe9"}),
        "9110 5.5", "obs-text (0x80-0xFF) is allowed in values and passed on as is"),
    Row("tab-in-value", get(headers=b"X-A: a\tb\r\n"), Forward("GET", "/rfc/get", {"x-a": b"a\tb"}),
        "9110 5.5", "HTAB inside a value is field-vchar's neighbour: valid"),
    Row("empty-value", get(headers=b"X-Empty:\r\n"), Forward("GET", "/rfc/get", {"x-empty": b""}),
        "9110 5.5", "field-value = *field-content: may be empty"),
    Row("obs-fold", get(headers=b"X-A: 1\r\n 2\r\n"), Reject(400),
        "9112 5.2", "obs-fold in a request: MUST reject with 400 or replace with SP"),
    Row("space-in-name", get(headers=b"X A: 1\r\n"), Reject(400),
        "9110 5.1", "field-name = token: invalid, 400"),
    Row("empty-name", get(headers=b": 1\r\n"), Reject(400), "9110 5.1", "token is 1*tchar"),
    Row("no-colon", get(headers=b"Bad Header Line\r\n"), Reject(400),
        "9112 5", "field-line = field-name \":\" OWS field-value OWS"),
    Row("non-token-name", get(headers=b"X-A(b): 1\r\n"), Reject(400),
        "9110 5.1", "\"(\" is a delimiter, not tchar"),
    Row("underscore-name", get(headers=b"X_User: alice\r\nX-Team: blue\r\n"),
        Forward("GET", "/rfc/get", {"x-team": "blue"}, absent=["x_user"]),
        "9110 5.1; nginx underscores_in_headers", "_ is a tchar; a proxy may drop such names "
        "(Rook maps X_User and X-User to one variable)"),
    Row("connection-named", get(headers=b"Connection: X-Secret\r\nX-Secret: 1\r\n"),
        Forward("GET", "/rfc/get", absent=["x-secret", "connection"]),
        "9110 7.6.1", "a proxy MUST remove the fields Connection names"),
    Row("hop-by-hop", get(headers=b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
                          b"TE: trailers\r\nUpgrade: h2c\r\nConnection: Upgrade, TE, Keep-Alive\r\n"
                          b"Proxy-Authorization: Basic eDp5\r\n"),
        Forward("GET", "/rfc/get", absent=["keep-alive", "proxy-connection", "te", "upgrade",
                                           "proxy-authorization"]),
        "9110 7.6.1, 7.8; 9112 9.6", "hop-by-hop fields are not forwarded; an unknown Upgrade "
        "(h2c) is served as HTTP/1.1"),

    # ---- sizes -----------------------------------------------------------------------------------
    Row("long-request-line", get(b"/rfc/long?" + b"a" * 20000), Reject(414),
        "9112 3; 9110 15.5.15", "a server SHOULD answer 414 for a target longer than it serves"),
    Row("long-header", get(headers=b"X-Big: " + b"a" * 20000 + b"\r\n"), Reject(431),
        "9112 5; RFC 6585 5", "431 for header fields too large"),
    Row("many-headers", get(headers=b"".join(b"X-%d: 1234567890\r\n" % i for i in range(2000))),
        Reject(431), "RFC 6585 5", "431 for too many header fields"),

    # ---- request line: methods, targets, versions ------------------------------------------------
    Row("method-unknown-token", get(method=b"FOO"), Reject(501),
        "9110 9.1", "an unrecognised method SHOULD get 501"),
    Row("method-lowercase", get(method=b"get"), Reject(501),
        "9110 9.1", "methods are case-sensitive: \"get\" is a valid, unknown token: 501"),
    Row("method-not-token", get(method=b"G(T"), Reject(400),
        "9110 9.1; 9112 3", "method = token: invalid request-line, 400"),
    Row("method-webdav", get(method=b"PROPFIND"), Forward("PROPFIND", "/rfc/get"),
        "9110 9.1", "registered extension methods are forwarded"),
    Row("method-patch", post(b"Content-Length: 5\r\n", b"hello").replace(b"POST", b"PATCH"),
        hello(method="PATCH"), "RFC 5789", "PATCH is forwarded with its body"),
    Row("options-asterisk", get(b"*", method=b"OPTIONS"), Forward("OPTIONS", "*"),
        "9112 3.2.4", "asterisk-form is for OPTIONS only"),
    Row("asterisk-get", get(b"*"), Reject(400), "9112 3.2.4", "asterisk-form with GET: invalid"),
    Row("connect", b"CONNECT h.test:443 HTTP/1.1\r\nHost: h.test:443\r\n\r\n", Reject(405),
        "9110 9.3.6; 9112 3.2.3", "authority-form is for CONNECT; an origin server may refuse it"),
    Row("authority-form-get", get(b"h.test:80"), Reject(400),
        "9112 3.2.3", "authority-form only with CONNECT"),
    Row("absolute-form",
        b"GET http://abs.test:8080/rfc/abs?q=1 HTTP/1.1\r\nHost: other.test\r\n\r\n",
        Forward("GET", "/rfc/abs?q=1", {"host": "abs.test:8080"}),
        "9112 3.2.2; Regilero", "a server MUST accept absolute-form; the Host header is ignored "
        "for the target's authority"),
    Row("absolute-form-https", b"GET https://abs.test/rfc/s HTTP/1.1\r\nHost: abs.test\r\n\r\n",
        Forward("GET", "/rfc/s", {"host": "abs.test"}), "9112 3.2.2", "as absolute-form"),
    Row("absolute-form-upper-scheme", b"GET HTTP://abs.test/rfc/u HTTP/1.1\r\nHost: x\r\n\r\n",
        Forward("GET", "/rfc/u", {"host": "abs.test"}),
        "9110 4.2.3; RFC 3986 3.1", "the scheme is case-insensitive"),
    Row("absolute-form-empty-path", b"GET http://abs.test HTTP/1.1\r\nHost: abs.test\r\n\r\n",
        Forward("GET", "/", {"host": "abs.test"}), "9110 4.2.3; 9112 3.2.1",
        "an empty path is \"/\" in origin-form"),
    Row("absolute-form-options", b"OPTIONS http://abs.test HTTP/1.1\r\nHost: abs.test\r\n\r\n",
        Forward("OPTIONS", "*", {"host": "abs.test"}), "9112 3.2.4",
        "OPTIONS to an absolute URI with an empty path is forwarded as \"*\""),
    Row("absolute-form-ftp", b"GET ftp://abs.test/x HTTP/1.1\r\nHost: abs.test\r\n\r\n",
        Reject(400), "9112 3.2.2", "only http and https are served"),
    Row("absolute-form-userinfo", b"GET http://user:pw@abs.test/rfc/ui HTTP/1.1\r\n"
        b"Host: abs.test\r\n\r\n", Reject(400),
        "9110 4.2.4", "userinfo in an http(s) URI: a recipient SHOULD treat it as an error"),
    Row("target-fragment", get(b"/rfc/f#frag"), Reject(400),
        "9112 3.2.1", "origin-form has no fragment: invalid request-line"),
    Row("target-space", b"GET /rfc/a b HTTP/1.1\r\n" + H + b"\r\n", Reject(400),
        "9112 3, 3.2", "a request-target has no whitespace: 400 (or 301 to the encoded URI)"),
    Row("target-nul", get(b"/rfc/a\x00b"), Reject(400), "9112 3.2; Regilero", "invalid"),
    Row("target-del", get(b"/rfc/a\x7fb"), Reject(400), "9112 3.2", "invalid URI byte"),
    Row("target-dot-segments", get(b"/rfc/a/../b//c"), Forward("GET", "/rfc/a/../b//c"),
        "9110 4.2.3", "a proxy forwards the target it got; normalising is the origin's job"),
    Row("double-space", b"GET  /rfc/get HTTP/1.1\r\n" + H + b"\r\n", Forward("GET", "/rfc/get"),
        "9112 3", "exactly one SP, but a recipient MAY split on whitespace; valve writes the "
        "request-line anew for the worker"),
    Row("http-0.9", b"GET /rfc/09\r\n", Reject(505),
        "9112 2.3; Regilero", "no version: HTTP/0.9 is not served"),
    Row("http-1.2", get(version=b"HTTP/1.2"), Reject(505),
        "9112 2.3; 9110 2.5", "a server SHOULD answer 505 for a major version it refuses; a "
        "higher minor MAY be served as 1.1 (valve: 505)"),
    Row("http-2.0", get(version=b"HTTP/2.0"), Reject(505), "9110 15.6.6", "505"),
    Row("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Reject(400),
        "RFC 9113 3.4; Kettle 2021", "the HTTP/2 preface at an HTTP/1.1 port"),
    Row("version-lowercase", get(version=b"http/1.1"), Reject(400),
        "9112 2.3", "HTTP-name is case-sensitive: invalid, 400"),
    Row("version-trailing-space", get(version=b"HTTP/1.1 "), Reject(400),
        "9112 3", "request-line ends at the version: invalid"),

    # ---- Host ------------------------------------------------------------------------------------
    Row("host-missing", b"GET /rfc/get HTTP/1.1\r\n\r\n", Reject(400),
        "9112 3.2", "an HTTP/1.1 request without Host: MUST 400"),
    Row("host-twice", b"GET /rfc/get HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        Reject(400), "9112 3.2", "more than one Host: MUST 400"),
    Row("host-empty", b"GET /rfc/get HTTP/1.1\r\nHost:\r\n\r\n",
        Forward("GET", "/rfc/get", {"host": ""}),
        "9112 3.2", "an empty Host is what a client MUST send when the URI has no authority"),
    Row("host-userinfo", b"GET /rfc/get HTTP/1.1\r\nHost: user@h.test\r\n\r\n", Reject(400),
        "9112 3.2; 9110 7.2", "Host = uri-host [ \":\" port ]: an invalid value MUST get 400"),
    Row("host-slash", b"GET /rfc/get HTTP/1.1\r\nHost: h.test/evil\r\n\r\n", Reject(400),
        "9112 3.2; 9110 7.2", "an invalid Host value MUST get 400"),
    Row("host-space", b"GET /rfc/get HTTP/1.1\r\nHost: h.test evil\r\n\r\n", Reject(400),
        "9112 3.2; 9110 7.2", "an invalid Host value MUST get 400"),
    Row("host-port", b"GET /rfc/get HTTP/1.1\r\nHost: h.test:8080\r\n\r\n",
        Forward("GET", "/rfc/get", {"host": "h.test:8080"}), "9110 7.2", "uri-host \":\" port"),

    # ---- Expect --------------------------------------------------------------------------------
    Row("expect-100", post(b"Expect: 100-continue\r\nContent-Length: 5\r\n", b"hello"),
        hello(absent=["expect"]), "9110 10.1.1", "a proxy may answer 100-continue itself"),
    Row("expect-100-mixed-case", post(b"Expect: 100-Continue\r\nContent-Length: 5\r\n", b"hello"),
        hello(absent=["expect"]), "9110 10.1.1", "the expectation is case-insensitive"),
    Row("expect-100-no-body", get(headers=b"Expect: 100-continue\r\n"),
        Forward("GET", "/rfc/get", absent=["expect"]), "9110 10.1.1; Kettle 2025",
        "a client ought not to send it without content; answered as a plain request"),
    Row("expect-unknown", post(b"Expect: 200-ok\r\nContent-Length: 5\r\n", b"hello"),
        hello(absent=["expect"]), "9110 10.1.1", "MAY answer 417; valve drops Expect instead"),
    Row("expect-obs-fold", post(b"Expect:\r\n 100-continue\r\nContent-Length: 5\r\n", b"hello"),
        Reject(400), "9112 5.2; Kettle 2025", "obs-fold: 400"),

    # ---- Connection options naming end-to-end fields (last: a proxy that drops the framing header
    # but not the body desyncs its backend connection, and the rows after it would pay) ----------
    Row("connection-names-host", b"GET /rfc/get HTTP/1.1\r\nHost: h.test\r\n"
        b"Connection: Host\r\n\r\n", Forward("GET", "/rfc/get", {"host": "h.test"}),
        "9110 7.6.1; 9112 3.2", "Host is not a connection option (a sender MUST NOT name it); "
        "an HTTP/1.1 request MUST carry Host"),
    Row("connection-names-cl", post(b"Connection: Content-Length\r\nContent-Length: 44\r\n",
                                    SMUGGLED),
        Forward("POST", "/rfc/post", body=SMUGGLED),
        "9110 7.6.1; Kettle 2022 CL.0", "framing fields are never connection options: the body "
        "must reach the worker framed, or the request be refused; never a body without its "
        "Content-Length (CL.0)"),
]

# Why valve's outcome differs from both nginx's and HAProxy's, for the rows where it does (the test
# prints it beside them; peers' versions: Debian bookworm's nginx 1.22 and HAProxy 2.6).
WHY = {
    "cl-dup-same": "valve refuses every doubled framing header rather than merge identical ones",
    "cl-list": "as cl-dup-same",
    "cl-ows-tab": "llhttp's strict mode refuses an HTAB after a Content-Length value (one before "
                  "it is fine): stricter than the RFC, failing closed",
    "chunk-size-trailing-space": "strict chunk-size grammar: BWS only before \";\"; nginx and "
                                 "HAProxy read \"5 \" as 5",
    "chunk-lf-after-data": "bare LF in chunk framing is where the funky-chunks desyncs start: "
                           "valve refuses rather than guess where the line ends",
    "chunk-lf-size-line": "as chunk-lf-after-data",
    "chunk-ext-nul": "NUL is refused wherever it appears; nginx and HAProxy skip extensions unread",
    "bare-lf-everywhere": "valve refuses bare LF line ends in header lines (RFC: MAY accept)",
    "ctl-value": "control bytes are not field-vchar (RFC 9110 5.5): valve refuses them, nginx and "
                 "HAProxy hand them to the app",
    "del-value": "as ctl-value",
    "long-header": "valve answers 431 (RFC 6585 5); nginx and HAProxy a plain 400",
    "many-headers": "as long-header",
    "method-unknown-token": "llhttp frames only the methods it knows, so valve cannot pass an "
                            "unknown one on: 501 (RFC 9110 9.1 SHOULD); nginx and HAProxy "
                            "forward it",
    "method-lowercase": "as method-unknown-token",
    "connect": "valve is no forward proxy: 405; nginx answers 400, HAProxy passes CONNECT on",
    "absolute-form-ftp": "valve serves http and https URIs only; nginx and HAProxy forward an ftp "
                         "URI's path",
    "absolute-form-userinfo": "userinfo is an error (RFC 9110 4.2.4 SHOULD); nginx and HAProxy "
                              "forward it",
    "http-0.9": "valve serves HTTP/1.0 and 1.1 only: 505; nginx answers in HTTP/0.9, HAProxy 400",
    "http-1.2": "valve answers 505 for a version it does not implement; nginx and HAProxy serve "
                "1.2 as 1.1 (RFC: MAY)",
    "host-userinfo": "an invalid Host MUST get 400 (RFC 9112 3.2); nginx and HAProxy pass \"@\" on",
    "host-slash": "an invalid Host MUST get 400 (RFC 9112 3.2); HAProxy passes it on",
    "host-space": "as host-slash",
}
for _row in ROWS:
    _row.why = WHY.get(_row.id, "")
