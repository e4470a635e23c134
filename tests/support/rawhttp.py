"""HTTP at the byte level, for what ordinary clients and servers refuse to do.

`raw_request` sends a request line and headers exactly as given (dot segments, encoded slashes,
control bytes: what an attacker sends, which aiohttp would normalise or refuse) and reads the
answer to the end, telling whether the body was complete. `ScriptedUpstream` is a provider that
records the raw request target and answers with scripted bytes (cut-off bodies, broken streams).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes
    complete: bool  # the body ended as its framing said (final chunk, or Content-Length bytes)

    def json(self) -> object:
        return orjson.loads(self.body)


async def raw_request(
    port: int,
    method: str,
    target: bytes,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    timeout: float = 10.0,
) -> RawAnswer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"host: 127.0.0.1",
             b"connection: close", b"content-length: " + str(len(body)).encode()]  # fmt: skip
    lines += [name + b": " + value for name, value in headers or []]
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    await writer.drain()
    raw = await asyncio.wait_for(_read_all(reader), timeout)
    writer.close()
    return parse_answer(raw)


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while chunk := await reader.read(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def parse_answer(raw: bytes) -> RawAnswer:
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
    status = int(status_line.split()[1])
    if headers.get("transfer-encoding") == "chunked":
        body, complete = _dechunk(rest)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        body, complete = rest[:length], len(rest) >= length
    else:
        body, complete = rest, True
    return RawAnswer(status, headers, body, complete)


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    body = bytearray()
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            return bytes(body), False
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            return bytes(body), True
        if len(data) < size:
            return bytes(body + data), False
        body += data[:size]
        data = data[size + 2 :]


@dataclass
class ScriptedUpstream:
    """A provider on loopback: records each request target; `answer` gives the raw bytes to send
    back for a target (the connection is closed after them)."""

    answer: Callable[[bytes], bytes] = lambda target: ok_json({"object": "ok"})
    targets: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> ScriptedUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            self.bodies.append(await reader.readexactly(length) if length else b"")
            target = head.split(b" ", 2)[1]
            self.targets.append(target)
            writer.write(self.answer(target))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok_json(payload: object, status: int = 200) -> bytes:
    body = orjson.dumps(payload)
    return (f"HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
