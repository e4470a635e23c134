"""A client that leaves mid-stream or mid-request: the upstream request is cancelled, and the
request still produces its event with the usage seen so far."""

from __future__ import annotations

import asyncio

import orjson
import redis.asyncio as aioredis

from llm_gateway_common.events import UsageEvent
from llm_gateway_fakes.openai import FakeOpenAI
from tests.support.events import all_events
from tests.support.services import ProxyProcess

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "tell me a long story"}]}


async def raw_request(proxy: ProxyProcess, body: dict[str, object]) -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter
]:  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    payload = orjson.dumps(body)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"X-Request-ID: disconnect-" + str(id(body)).encode() + b"\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    await writer.drain()
    return reader, writer


async def wait_for(predicate: object, what: str, deadline: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while not predicate():  # type: ignore[operator]
        if loop.time() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def event_by_client_id(redis: aioredis.Redis, client_id: str) -> UsageEvent:
    for _ in range(200):
        for event in await all_events(redis):
            if event.client_request_id == client_id:
                return event
        await asyncio.sleep(0.05)
    raise AssertionError(f"no event for {client_id}")


async def test_disconnect_mid_stream_cancels_upstream_and_records_partial_usage(
    proxy: ProxyProcess, upstream: FakeOpenAI, redis: aioredis.Redis
) -> None:
    upstream.behaviour.words = 200
    upstream.behaviour.chunk_delay = 0.02
    body = {**CHAT, "stream": True}
    reader, writer = await raw_request(proxy, body)
    received = b""
    while received.count(b"data: ") < 5:
        received += await reader.read(65536)
    writer.close()
    await wait_for(lambda: upstream.streams_cut == 1, "the upstream stream to be cut")
    assert upstream.streams_completed == 0
    event = await event_by_client_id(redis, f"disconnect-{id(body)}")
    assert event.outcome == "client_disconnected"
    assert event.status_code == 200
    assert event.stream
    assert event.usage_source == "estimated"
    assert 5 <= event.completion_tokens < 200
    assert event.prompt_tokens > 0


async def test_disconnect_while_waiting_for_upstream_cancels_it(
    proxy: ProxyProcess, upstream: FakeOpenAI, redis: aioredis.Redis
) -> None:
    upstream.behaviour.response_delay = 5
    body = dict(CHAT)
    _, writer = await raw_request(proxy, body)
    await wait_for(lambda: len(upstream.received) == 1, "the request to reach the upstream")
    writer.close()
    await wait_for(lambda: upstream.abandoned == 1, "the upstream request to be abandoned")
    event = await event_by_client_id(redis, f"disconnect-{id(body)}")
    assert (event.outcome, event.status_code) == ("client_disconnected", 499)
    assert event.ttfb_ms is None
