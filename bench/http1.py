"""A bare HTTP/1.1 client on one blocking keep-alive socket, timed at the byte level.

It does as little as possible between the wire and the clock, so that what it measures is the
server: `request` stamps the moment before the request is written, the moment the first byte of
the response *body* arrives (for a chunked SSE stream: the first byte of chunk data), and the
moment the response is complete. Bytes are only read when needed, so the time of the last
`recv` is the time the byte being waited for arrived.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

_RECV_SIZE = 65536


class ProtocolError(Exception):
    """The server answered something this client cannot read as HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Timing:
    status: int
    first_body_ns: int  # request written -> first body byte received
    total_ns: int  # request written -> response complete


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        "Authorization: Bearer sk-bench\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


class Connection:
    """One persistent connection; `request` sends a prebuilt request and reads the whole answer."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self._address = (host, port)
        self._timeout = timeout
        self._sock = self._connect()
        self._buf = bytearray()
        self._pos = 0
        self._last_recv_ns = 0

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self._address, timeout=self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, raw: bytes) -> Timing:
        started = time.perf_counter_ns()
        self._sock.sendall(raw)
        status, length, chunked, closing = self._receive_head()
        first = self._receive_chunked() if chunked else self._receive_sized(length)
        finished = time.perf_counter_ns()
        self._compact()
        if closing:  # e.g. Hypercorn's keep_alive_max_requests; reconnect outside the clock
            self._sock.close()
            self._buf.clear()
            self._sock = self._connect()
        first = first or finished
        return Timing(status, first - started, finished - started)

    def _receive_head(self) -> tuple[int, int, bool, bool]:
        """Status, Content-Length (0 if absent), whether the body is chunked, and whether the
        server will close the connection after this response."""
        end = self._find(b"\r\n\r\n")
        lines = bytes(self._buf[self._pos : end]).split(b"\r\n")
        self._pos = end + 4
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolError(f"bad status line {lines[0]!r}")
        length, chunked, closing = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                closing = b"close" in value.lower()
        return int(parts[1]), length, chunked, closing

    def _receive_sized(self, length: int) -> int:
        """Read a Content-Length body; the time its first byte arrived (0 when empty)."""
        if length == 0:
            return 0
        self._fill(self._pos + 1)
        first = self._last_recv_ns
        self._fill(self._pos + length)
        self._pos += length
        return first

    def _receive_chunked(self) -> int:
        """Read a chunked body to its last chunk; the time its first data byte arrived."""
        first = 0
        while True:
            end = self._find(b"\r\n")
            size = int(bytes(self._buf[self._pos : end]).split(b";")[0], 16)
            self._pos = end + 2
            if size == 0:
                break
            self._fill(self._pos + 1)
            first = first or self._last_recv_ns
            self._fill(self._pos + size + 2)
            self._pos += size + 2
        while True:  # trailers, then the empty line
            end = self._find(b"\r\n")
            empty = end == self._pos
            self._pos = end + 2
            if empty:
                return first

    def _find(self, marker: bytes) -> int:
        """The index of `marker` at or after the read position, receiving until it is there."""
        while (index := self._buf.find(marker, self._pos)) < 0:
            self._recv()
        return index

    def _fill(self, size: int) -> None:
        while len(self._buf) < size:
            self._recv()

    def _recv(self) -> None:
        data = self._sock.recv(_RECV_SIZE)
        self._last_recv_ns = time.perf_counter_ns()
        if not data:
            raise ProtocolError("connection closed mid-response")
        self._buf += data

    def _compact(self) -> None:
        del self._buf[: self._pos]
        self._pos = 0
