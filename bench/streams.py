"""Long streams, many at once: what a proxy spends per streamed chunk.

Each request asks the fake upstream (through the proxy, in the headers `X-Fake-Words` and
`X-Fake-Chunk-Delay`) for `words` content chunks sent `delay` seconds apart, so that every chunk
reaches the proxy on its own, as a model's tokens do, and is read, watched and written on its
own. `connections` streams run at once, each connection sending its requests one after another.
Every stream is read to its end and checked: all its events, `[DONE]` last.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

_DONE = b"data: [DONE]\n\n"


class BadStream(Exception):
    """A stream was not answered 200, or did not carry every chunk asked for."""


@dataclass(frozen=True, slots=True)
class StreamLoad:
    requests: int
    chunks: int  # SSE events the clients received, `[DONE]` included
    duration_s: float


def events_per_stream(words: int) -> int:
    """What a client gets for `words` content chunks: the role chunk, the words, the stop chunk
    and `[DONE]` (no usage chunk: the client does not ask for one, so a proxy must not add it)."""
    return words + 3


def run_streams(
    port: int, body: bytes, *, connections: int, requests_per_connection: int, words: int,
    delay: float, time_limit: float,
) -> StreamLoad:  # fmt: skip
    """Run the load against 127.0.0.1:`port`; raises BadStream on any incomplete stream."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    return asyncio.run(_run(url, body, connections=connections,
                            per_connection=requests_per_connection, words=words, delay=delay,
                            time_limit=time_limit))  # fmt: skip


async def _run(
    url: str, body: bytes, *, connections: int, per_connection: int, words: int, delay: float,
    time_limit: float,
) -> StreamLoad:  # fmt: skip
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench",
               "X-Fake-Words": str(words), "X-Fake-Chunk-Delay": str(delay)}  # fmt: skip
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=time_limit, sock_connect=10)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one_connection() -> int:
            chunks = 0
            for _ in range(per_connection):
                chunks += await _one_stream(session, url, body, headers, words)
            return chunks

        counts = await asyncio.gather(*(one_connection() for _ in range(connections)))
    return StreamLoad(connections * per_connection, sum(counts), time.perf_counter() - started)


async def _one_stream(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], words: int
) -> int:
    async with session.post(url, data=body, headers=headers) as response:
        received = bytearray()
        async for data in response.content.iter_any():
            received += data
    events = received.count(b"\n\n")
    if response.status != 200 or events != events_per_stream(words) or not received.endswith(_DONE):
        raise BadStream(f"HTTP {response.status}, {events} events (expected "
                        f"{events_per_stream(words)}): {bytes(received[-200:])!r}")  # fmt: skip
    return events
