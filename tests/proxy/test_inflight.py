"""MAX_IN_FLIGHT: past the bound, API requests get an OpenAI-shaped 503 with Retry-After at once;
probes and the management listener still answer; the bound frees as requests finish."""

from __future__ import annotations

import asyncio

import aiohttp

from llm_gateway_fakes.openai import FakeOpenAI
from tests.conftest import ProxyFactory

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def test_requests_past_the_bound_are_refused_with_503_and_retry_after(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    proxy = proxy_factory(MAX_IN_FLIGHT="2")
    upstream.behaviour.response_delay = 1.0

    async def chat() -> int:
        async with http.post(f"{proxy.base_url}/v1/chat/completions", json=CHAT) as response:
            await response.read()
            return response.status

    slow = [asyncio.create_task(chat()) for _ in range(2)]
    for _ in range(250):  # until both are admitted and waiting on the upstream
        if len(upstream.received) == 2:
            break
        await asyncio.sleep(0.02)
    for _ in range(2):
        async with http.post(f"{proxy.base_url}/v1/chat/completions", json=CHAT) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert len(response.headers["X-LLM-Request-ID"]) == 32
            error = (await response.json())["error"]
            assert (error["type"], error["code"]) == ("api_error", "overloaded")
    for url in (f"{proxy.base_url}/ready", f"{proxy.manage_url}/ready"):
        async with http.get(url) as response:
            assert response.status == 200  # probes are never refused
    async with http.get(f"{proxy.manage_url}/health") as response:
        assert (await response.json())["in_flight"] == {"current": 2, "limit": 2, "refused": 2}
    assert await asyncio.gather(*slow) == [200, 200]
    upstream.behaviour.response_delay = 0.0
    assert await chat() == 200
    async with http.get(f"{proxy.manage_url}/health") as response:
        assert (await response.json())["in_flight"] == {"current": 0, "limit": 2, "refused": 2}
    warnings = [log for log in proxy.log_lines() if log.get("event") == "in_flight_limit_reached"]
    assert len(warnings) == 1  # once when the bound was reached, not once per refusal
    assert len(upstream.received) == 3  # refused requests never reach the upstream
