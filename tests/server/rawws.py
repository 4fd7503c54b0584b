"""A bare websocket client on a plain socket, for peers that misbehave on purpose (e.g. a client
that stops reading, with small OS buffers, so the server's sends to it block)."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from urllib.parse import urlparse


class RawWebsocket:
    """Client side of RFC 6455 over a blocking socket: text frames out, frames in on demand.

    Args:
        url: ``ws://host:port/path``.
        rcvbuf: SO_RCVBUF for the socket (set before connecting, so the TCP window is small).
        headers: extra upgrade request headers.
    """

    def __init__(self, url: str, rcvbuf: int | None = 4096, headers: dict | None = None) -> None:
        u = urlparse(url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5.0)
        self.sock.connect((u.hostname, u.port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {u.path or '/'} HTTP/1.1",
            f"Host: {u.hostname}:{u.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("closed during the upgrade")
            response += chunk
        self.status = int(response.split(b" ", 2)[1])

    @staticmethod
    def frame(payload: bytes, opcode: int = 1) -> bytes:
        """One masked, final frame."""
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + body

    def send_json(self, msg: dict) -> None:
        self.sock.sendall(self.frame(json.dumps(msg).encode()))

    def _read_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def recv(self) -> tuple[int, bytes]:
        """Next frame: (opcode, payload) (server frames are unmasked)."""
        b0, b1 = self._read_exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read_exact(8))[0]
        return b0 & 0x0F, self._read_exact(n)

    def recv_json(self) -> dict:
        while True:
            op, payload = self.recv()
            if op == 1:
                return json.loads(payload)
            if op == 8:
                raise ConnectionError(f"closed by the server: {payload[:2]!r}")

    def flood(self, msg: dict, seconds: float) -> int:
        """Sends ``msg`` over and over without ever reading, for up to ``seconds`` or until
        the socket takes no more. Returns how many were sent whole."""
        data = self.frame(json.dumps(msg).encode())
        self.sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                try:
                    self.sock.sendall(data)
                except BlockingIOError:
                    break  # a partial frame may be out: the socket is for reading no more
                sent += 1
        finally:
            self.sock.settimeout(5.0)
        return sent

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
