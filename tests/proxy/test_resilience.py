"""Redis trouble never fails a request; events wait and are written when Redis returns; past the
queue bound they are dropped, counted and logged; SIGTERM drains requests and flushes events."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import redis.asyncio as aioredis

from llm_gateway_fakes.openai import FakeOpenAI
from tests.conftest import ProxyFactory
from tests.support.events import all_events
from tests.support.servers import LocalRedis

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def health(http: aiohttp.ClientSession, base_url: str) -> dict[str, object]:
    async with http.get(f"{base_url}/health") as response:
        payload: dict[str, object] = await response.json()
        return payload


async def eventually(check: object, what: str, deadline: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while not await check():  # type: ignore[operator]
        if loop.time() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_requests_succeed_while_redis_is_down_and_events_arrive_when_it_returns(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    server = LocalRedis()  # not started yet: Redis is down when the proxy starts
    proxy = proxy_factory(REDIS_URL=server.url, REDIS_TIMEOUT="0.2")
    ids = []
    for _ in range(5):
        async with http.post(f"{proxy.base_url}/v1/chat/completions", json=CHAT) as response:
            assert response.status == 200
            ids.append(response.headers["X-LLM-Request-ID"])
    async with http.get(f"{proxy.base_url}/ready") as response:
        assert response.status == 200

    async def waiting_for_redis() -> bool:
        state = await health(http, proxy.manage_url)
        return state["events"] == {"redis_healthy": False, "queued": 5, "written": 0, "dropped": 0}

    await eventually(waiting_for_redis, "the publisher to find Redis down and hold the events")
    server.start()
    client = aioredis.Redis.from_url(server.url)
    try:

        async def all_written() -> bool:
            return {e.request_id for e in await all_events(client)} == set(ids)

        await eventually(all_written, "queued events to be written after Redis returned")
        state = await health(http, proxy.manage_url)
        assert state["events"] == {"redis_healthy": True, "queued": 0, "written": 5, "dropped": 0}
        assert "event_write_failed" in proxy.log_text()
    finally:
        await client.aclose()
        server.stop()


async def test_events_past_the_queue_bound_are_dropped_counted_and_logged(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    server = LocalRedis()
    proxy = proxy_factory(REDIS_URL=server.url, REDIS_TIMEOUT="0.2", EVENT_QUEUE_SIZE="3")
    for _ in range(5):
        async with http.post(f"{proxy.base_url}/v1/chat/completions", json=CHAT) as response:
            assert response.status == 200

    async def all_metered() -> bool:  # the first event of a model waits for its price
        events = (await health(http, proxy.manage_url))["events"]
        assert isinstance(events, dict)
        return bool(events["queued"] + events["dropped"] == 5)

    await eventually(all_metered, "every event queued or dropped")
    state = await health(http, proxy.manage_url)
    events = state["events"]
    assert isinstance(events, dict)
    assert events["dropped"] == 2
    assert '"event":"events_dropped"' in proxy.log_text()


async def test_sigterm_lets_a_stream_finish_and_flushes_its_event(
    proxy_factory: ProxyFactory,
    upstream: FakeOpenAI,
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:
    proxy = proxy_factory()
    upstream.behaviour.words = 20
    upstream.behaviour.chunk_delay = 0.05
    body = {**CHAT, "stream": True}
    async with http.post(f"{proxy.base_url}/v1/chat/completions", json=body) as response:
        request_id = response.headers["X-LLM-Request-ID"]
        first = await response.content.readany()
        assert first
        assert proxy.process is not None
        proxy.process.send_signal(15)
        rest = await response.read()
    assert (first + rest).endswith(b"data: [DONE]\n\n")
    assert await asyncio.to_thread(proxy.process.wait, 30) == 0
    event = next(e for e in await all_events(redis) if e.request_id == request_id)
    assert event.outcome == "ok" and event.completion_tokens == 20
    with contextlib.suppress(aiohttp.ClientError):
        async with http.get(f"{proxy.base_url}/live") as response:
            raise AssertionError(f"proxy still serving after SIGTERM: {response.status}")
