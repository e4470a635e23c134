"""Client connections: closed ones are released at once (no CLOSE-WAIT pile-up), and a client
that is slow to send its headers or its body (CLIENT_READ_TIMEOUT) is cut off; idle keep-alive
connections and long responses are not."""

from __future__ import annotations

import asyncio
import time

import orjson
import psutil
import pytest
import redis.asyncio as aioredis

from llm_gateway_fakes.openai import FakeOpenAI
from tests.conftest import ProxyFactory
from tests.support.events import all_events
from tests.support.services import ProxyProcess

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
READ_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def impatient(proxy_factory: ProxyFactory) -> ProxyProcess:
    """A proxy that gives clients one second to send a request's headers, and one its body."""
    return proxy_factory(CLIENT_READ_TIMEOUT=str(READ_TIMEOUT))


def close_wait(proxy: ProxyProcess) -> int:
    ports = {proxy.port, proxy.manage_port}
    connections = psutil.Process(proxy.pid).net_connections(kind="tcp")
    return sum(1 for c in connections if c.status == "CLOSE_WAIT" and c.laddr.port in ports)


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one Content-Length response."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


async def one_request_then_close(port: int, path: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: test\r\n\r\n")
    head, _ = await read_response(reader)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()  # the keep-alive connection, idle now, closed as an SDK's pool closes it
    await writer.wait_closed()


async def test_connections_closed_by_clients_are_released_at_once(
    impatient: ProxyProcess,
) -> None:
    # Before the fix, each socket stayed in CLOSE-WAIT until the 75 s keep-alive timer.
    clients = [one_request_then_close(impatient.port, b"/live") for _ in range(150)]
    clients += [one_request_then_close(impatient.manage_port, b"/live") for _ in range(50)]
    await asyncio.gather(*clients)
    for _ in range(20):  # up to 2 s for the proxy to see the EOFs
        if not close_wait(impatient):
            break
        await asyncio.sleep(0.1)
    assert close_wait(impatient) == 0
    # And one opened and closed without a request.
    _, writer = await asyncio.open_connection("127.0.0.1", impatient.port)
    writer.close()
    await asyncio.sleep(0.5)
    assert close_wait(impatient) == 0


async def test_slow_headers_are_cut_off(impatient: ProxyProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.port)
    started = time.monotonic()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\n")
    closed_after = None
    for _ in range(40):  # a header line every 0.1 s: each read is quick, the whole is not
        await asyncio.sleep(0.1)
        try:
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
        except ConnectionError:
            closed_after = time.monotonic() - started
            break
        if reader.at_eof() or (await _closed(reader)):
            closed_after = time.monotonic() - started
            break
    writer.close()
    assert closed_after is not None, "the connection was still open after 4 s"
    assert READ_TIMEOUT <= closed_after < READ_TIMEOUT + 1.5
    for _ in range(30):  # the proxy's log is buffered: flushed every FLUSH_INTERVAL
        if "client_header_timeout" in impatient.log_text():
            break
        await asyncio.sleep(0.1)
    assert "client_header_timeout" in impatient.log_text()


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 0.01) == b""
    except TimeoutError:
        return False


async def test_a_trickled_body_gets_408_and_is_recorded(
    impatient: ProxyProcess, upstream: FakeOpenAI, redis: aioredis.Redis
) -> None:
    body = orjson.dumps(CHAT)
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"X-Request-ID: trickle-408\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    started = time.monotonic()

    async def trickle() -> None:
        for byte in body:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)

    trickler = asyncio.create_task(trickle())
    try:
        head, answer = await asyncio.wait_for(read_response(reader), READ_TIMEOUT + 2)
    finally:
        trickler.cancel()
    assert READ_TIMEOUT <= time.monotonic() - started < READ_TIMEOUT + 1.5
    assert head.startswith(b"HTTP/1.1 408")
    error = orjson.loads(answer)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_timeout")
    assert await asyncio.wait_for(reader.read(), 2) == b""  # and the connection is closed
    writer.close()
    assert not upstream.received
    for _ in range(100):
        events = [e for e in await all_events(redis) if e.client_request_id == "trickle-408"]
        if events:
            break
        await asyncio.sleep(0.05)
    assert [(e.status_code, e.error_type) for e in events] == [(408, "request_timeout")]


async def test_idle_keep_alive_and_long_responses_are_not_cut_off(
    impatient: ProxyProcess, upstream: FakeOpenAI
) -> None:
    upstream.behaviour.chunk_delay = 0.1  # 8 words: a stream that takes longer than 1 s
    body = orjson.dumps({**CHAT, "stream": True})
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.port)
    for _ in range(2):
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json"
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        stream = await reader.readuntil(b"0\r\n\r\n")  # the last chunk of the chunked body
        assert b"data: [DONE]" in stream
        await asyncio.sleep(READ_TIMEOUT * 1.5)  # idle between requests, longer than the timeout
    writer.close()


KEEP_ALIVE = 1.0


@pytest.fixture(scope="module")
def brief(proxy_factory: ProxyFactory) -> ProxyProcess:
    """A proxy that keeps idle keep-alive connections one second."""
    return proxy_factory(CLIENT_KEEP_ALIVE_TIMEOUT=str(KEEP_ALIVE))


async def chat_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = orjson.dumps(CHAT)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json"
        b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    head, _ = await read_response(reader)
    assert head.startswith(b"HTTP/1.1 200")


async def closed_by_server_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (EOF); fails past `seconds`."""
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(1), seconds) == b""
    return time.monotonic() - started


async def test_idle_keep_alive_connections_are_closed_after_the_timeout(
    brief: ProxyProcess,
) -> None:
    """Idle after a request, or connected and silent: closed after CLIENT_KEEP_ALIVE_TIMEOUT
    (the timer armed at each idle start), not before."""
    reader, writer = await asyncio.open_connection("127.0.0.1", brief.port)
    await chat_on(reader, writer)
    waited = await closed_by_server_within(reader, KEEP_ALIVE * 5)
    assert waited >= KEEP_ALIVE * 0.9
    writer.close()
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", brief.port)
    waited = await closed_by_server_within(silent_reader, KEEP_ALIVE * 5)
    assert waited >= KEEP_ALIVE * 0.9
    silent.close()


async def test_a_connection_in_use_is_kept_past_the_keep_alive_timeout(
    brief: ProxyProcess, upstream: FakeOpenAI
) -> None:
    """Each request disarms the timer and each answer re-arms it: requests 0.4 s apart keep a
    connection for three timeouts, and one answer that takes longer than the timeout is not cut
    off."""
    reader, writer = await asyncio.open_connection("127.0.0.1", brief.port)
    started = time.monotonic()
    while time.monotonic() - started < KEEP_ALIVE * 3:
        await chat_on(reader, writer)
        await asyncio.sleep(KEEP_ALIVE * 0.4)
    upstream.behaviour.response_delay = KEEP_ALIVE * 1.5
    try:
        await chat_on(reader, writer)
    finally:
        upstream.behaviour.response_delay = 0.0
    await closed_by_server_within(reader, KEEP_ALIVE * 5)  # and idle again: closed
    writer.close()


async def test_shutdown_closes_idle_keep_alive_connections_at_once(
    proxy_factory: ProxyFactory,
) -> None:
    """SIGTERM: a connection idle between requests is closed at once (the keep-alive timeout is
    75 s and the shutdown grace 30 s: neither is waited for)."""
    proxy = proxy_factory(SHUTDOWN_GRACE_SECONDS="30")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    await chat_on(reader, writer)
    started = time.monotonic()
    exit_code = await asyncio.to_thread(proxy.terminate, 20.0)
    assert exit_code == 0
    assert time.monotonic() - started < 10
    assert await asyncio.wait_for(reader.read(1), 1) == b""
    writer.close()
