#!/usr/bin/python3
"""A recording HTTP/1.1 backend for test_rfc_table.py: every byte each connection sends is appended,
as received, to DIR/conn-PID-N.raw (written before any answer, so a client that has the answer can
read the whole request there), and DIR/conn-PID-N.closed appears once that connection has ended.
Each request it can frame (Content-Length, chunked, or no body) gets the same 200 JSON answer,
Content-Length framed; bytes it cannot frame end the connection, unanswered.

  rfc_recorder.py --port PORT --dir DIR [--host 127.0.0.1]

valve starts it as a worker (--cmd '... --port {port} --dir DIR'); nginx and HAProxy proxy to one
started standalone. Standard library only.
"""

import argparse
import itertools
import os
import socket
import socketserver

ANSWER_BODY = b'{"recorded":true}\n'
MAX_HEAD = 1 << 20


class Unframeable(Exception):
    pass


def _head_end(buf):
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise Unframeable("head too long")
        return None
    return end + 4


def _parse_head(head):
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise Unframeable(f"request line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise Unframeable(f"header line {line!r}")
        headers.append((name.strip().lower(), value.strip()))
    return parts[0], parts[2], headers


def _chunked_end(buf, start):
    """Where a chunked body starting at buf[start] ends, or None if it is not all here."""
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = buf[pos:eol].split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise Unframeable(f"chunk size {size_text!r}")
        pos = eol + 2
        if size == 0:
            while True:  # trailer lines, then the empty line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                pos, empty = eol + 2, eol == pos
                if empty:
                    return pos
        if len(buf) < pos + size + 2:
            return None
        pos += size + 2


class Handler(socketserver.BaseRequestHandler):
    counter = itertools.count(1)
    directory = "."

    def handle(self):
        name = os.path.join(self.directory, f"conn-{os.getpid()}-{next(self.counter):05d}")
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd = os.open(name + ".raw", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.serve(sock, fd)
        except (OSError, Unframeable):
            pass
        finally:
            os.close(fd)
            try:
                sock.close()
            except OSError:
                pass
            with open(name + ".closed", "wb"):
                pass

    def serve(self, sock, fd):
        buf = b""
        continued = False
        while True:
            end = _head_end(buf)
            body_end = None
            if end is not None:
                method, version, headers = _parse_head(buf[:end])
                fields = dict(headers)
                if b"transfer-encoding" in fields:
                    body_end = _chunked_end(buf, end)
                else:
                    body_end = end + int(fields.get(b"content-length", b"0") or b"0")
                    if len(buf) < body_end:
                        body_end = None
                if (body_end is None and not continued
                        and fields.get(b"expect", b"").lower() == b"100-continue"):
                    sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    continued = True
            if body_end is not None:
                buf = buf[body_end:]
                continued = False
                closing = (fields.get(b"connection", b"").lower() == b"close"
                           or version == b"HTTP/1.0")
                answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n%s\r\n" %
                          (len(ANSWER_BODY), b"Connection: close\r\n" if closing else b""))
                sock.sendall(answer + (b"" if method == b"HEAD" else ANSWER_BODY))
                if closing:
                    return
                continue
            data = sock.recv(65536)
            if not data:
                return
            os.write(fd, data)  # recorded before anything is answered
            buf += data


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    Handler.directory = args.dir
    with Server((args.host, args.port), Handler) as server:
        if args.port == 0:
            print(f"listening on {args.host}:{server.server_address[1]}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
