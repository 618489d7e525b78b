"""A minimal RFC 6455 WebSocket client on the standard library, for the tests: the handshake (with
Sec-WebSocket-Accept checked), masked frames from the client, text, binary, ping/pong, close, and
messages fragmented by the server. Used against valvectl and against Chromium's DevTools."""

import base64
import hashlib
import os
import socket
import struct
import time

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Closed(Exception):
    """The peer closed the TCP connection (without, or after, a close frame)."""


class Handshake:
    """The server's answer to an upgrade request: status, headers, and the socket (still open)."""

    def __init__(self, sock, status, reason, headers, rest):
        self.sock, self.status, self.reason, self.headers, self.rest = sock, status, reason, headers, rest

    def header(self, name, default=None):
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return default


def accept_key(key):
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def handshake(host, port, path="/", headers=None, timeout=10.0, key=None, upgrade="websocket"):
    """Sends an upgrade request and reads the response head. Returns a Handshake; the response's
    body (if not a 101) is not read."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", f"Upgrade: {upgrade}",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in (headers or [])]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            sock.close()
            raise Closed(f"connection closed during the handshake after {buf!r}")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    headers_out = []
    for line in header_lines:
        name, _, value = line.partition(":")
        headers_out.append((name.strip(), value.strip()))
    result = Handshake(sock, int(parts[1]), parts[2] if len(parts) > 2 else "", headers_out, rest)
    result.key = key
    return result


class WebSocket:
    def __init__(self, sock, rest=b""):
        self.sock = sock
        self.buf = bytearray(rest)
        self.close_code = None  # the code of the close frame received, if any

    @classmethod
    def connect(cls, host, port, path="/", headers=None, timeout=10.0):
        """Opens a WebSocket; raises AssertionError unless the server answers a valid 101."""
        hs = handshake(host, port, path, headers, timeout)
        if hs.status != 101:
            hs.sock.close()
            raise AssertionError(f"expected 101, got {hs.status} {hs.reason} {hs.headers}")
        if hs.header("Sec-WebSocket-Accept") != accept_key(hs.key):
            hs.sock.close()
            raise AssertionError(f"bad Sec-WebSocket-Accept in {hs.headers}")
        ws = cls(hs.sock, hs.rest)
        ws.handshake = hs
        return ws

    def settimeout(self, seconds):
        self.sock.settimeout(seconds)

    # -- frames
    def send_frame(self, opcode, payload, fin=True):
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        header = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = _mask_fast(payload, mask)
        self.sock.sendall(header + mask + masked)

    def send_text(self, text):
        self.send_frame(OP_TEXT, text)

    def send_binary(self, data):
        self.send_frame(OP_BINARY, data)

    def _need(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(1 << 20)
            if not data:
                raise Closed("connection closed")
            self.buf += data

    def recv_frame(self):
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n, pos = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, pos = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, pos = struct.unpack(">Q", self.buf[2:10])[0], 10
        mask = None
        if b1 & 0x80:  # servers must not mask, but read it right if one does
            self._need(pos + 4)
            mask, pos = bytes(self.buf[pos:pos + 4]), pos + 4
        self._need(pos + n)
        payload = bytes(self.buf[pos:pos + n])
        del self.buf[:pos + n]
        if mask:
            payload = _mask_fast(payload, mask)
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv(self):
        """The next message: (OP_TEXT, str), (OP_BINARY, bytes) or (OP_CLOSE, code). Pings are
        answered, fragments joined."""
        parts, first = [], None
        while True:
            fin, opcode, payload = self.recv_frame()
            if opcode == OP_PING:
                self.send_frame(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                self.close_code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                return OP_CLOSE, self.close_code
            if opcode != OP_CONT:
                first = opcode
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                return (OP_TEXT, data.decode("utf-8")) if first == OP_TEXT else (OP_BINARY, data)

    def recv_text(self):
        opcode, data = self.recv()
        if opcode != OP_TEXT:
            raise AssertionError(f"expected a text message, got opcode {opcode}: {data!r}")
        return data

    def close(self, code=1000, timeout=5.0):
        """The closing handshake: sends a close frame, reads until the server's close frame and
        its end of the connection. Returns the server's close code (None if it closed without)."""
        try:
            self.send_frame(OP_CLOSE, struct.pack(">H", code))
            self.sock.settimeout(timeout)
            while True:
                opcode, data = self.recv()
                if opcode == OP_CLOSE:
                    break
            self.wait_eof(timeout)
        except (Closed, OSError):
            pass
        finally:
            self.sock.close()
        return self.close_code

    def wait_eof(self, timeout):
        """True once the peer closes the TCP connection within timeout (data before is dropped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not data:
                return True
        return False

    def abort(self):
        try:
            self.sock.close()
        except OSError:
            pass


def _mask_fast(payload, mask):
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
