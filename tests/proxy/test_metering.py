"""One event per request for every API, with the provider's usage, or an estimate marked so."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from llm_gateway_fakes.openai import FakeOpenAI
from tests.conftest import UPSTREAM_KEY, ProxyFactory
from tests.support.events import event_for
from tests.support.services import ProxyProcess

MESSAGES = [{"role": "user", "content": "one two three four"}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES}),
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}),
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "one two"}),
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "a b", "stream": True}),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a b", "c d e"]}),
        ("/v1/responses", {"model": "gpt-4o", "input": "one two three"}),
        ("/v1/responses", {"model": "gpt-4o", "input": "one two three", "stream": True}),
    ],
)
async def test_every_api_meters_provider_usage(
    proxy: ProxyProcess,
    upstream: FakeOpenAI,
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
    path: str,
    body: dict[str, object],
) -> None:
    upstream.behaviour.cached_tokens = 2
    upstream.behaviour.reasoning_tokens = 1
    async with http.post(proxy.base_url + path, json=body) as response:
        assert response.status == 200
        await response.read()
        request_id = response.headers["X-LLM-Request-ID"]
    reported = upstream.usages[-1]
    event = await event_for(redis, request_id)
    assert event.endpoint == path
    assert event.stream is bool(body.get("stream"))
    assert event.usage_source == "provider"
    prompt = reported.get("prompt_tokens", reported.get("input_tokens"))
    completion = reported.get("completion_tokens", reported.get("output_tokens", 0))
    assert (event.prompt_tokens, event.completion_tokens) == (prompt, completion)
    assert event.total_tokens == reported["total_tokens"]
    if "embeddings" not in path:
        assert (event.cached_tokens, event.reasoning_tokens) == (2, 1)
        assert event.response_model is not None


@pytest.mark.parametrize("stream", [False, True])
async def test_usage_is_estimated_when_provider_reports_none(
    proxy: ProxyProcess,
    upstream: FakeOpenAI,
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
    stream: bool,
) -> None:
    upstream.behaviour.omit_usage = True
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 400}],
            "stream": stream}  # fmt: skip
    async with http.post(f"{proxy.base_url}/v1/chat/completions", json=body) as response:
        await response.read()
        request_id = response.headers["X-LLM-Request-ID"]
    event = await event_for(redis, request_id)
    assert event.usage_source == "estimated"
    # chars / 4 while the proxy loads the tokenizer, then o200k_base's count of the 400 "x"s
    # (tests/proxy/test_token_estimates.py waits for the load and checks exact counts).
    assert event.prompt_tokens in (100, 50)
    assert event.completion_tokens > 0
    assert event.total_tokens == event.prompt_tokens + event.completion_tokens


async def test_capture_cuts_bodies_and_flags_truncation(
    proxy_factory: ProxyFactory,
    upstream: FakeOpenAI,
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:
    capturing = proxy_factory(METERING_CAPTURE_BYTES="64")
    short = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    raw = orjson.dumps(short)
    async with http.post(f"{capturing.base_url}/v1/chat/completions", data=raw) as response:
        answer = await response.read()
        request_id = response.headers["X-LLM-Request-ID"]
    event = await event_for(redis, request_id)
    assert event.captured_request == raw.decode()
    assert not event.captured_request_truncated
    assert event.captured_response == answer[:64].decode()
    assert event.captured_response_truncated


async def test_capture_is_off_by_default(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession, redis: aioredis.Redis
) -> None:
    body = {"model": "m", "messages": MESSAGES}
    async with http.post(f"{proxy.base_url}/v1/chat/completions", json=body) as response:
        request_id = response.headers["X-LLM-Request-ID"]
    event = await event_for(redis, request_id)
    assert event.captured_request is None and event.captured_response is None


async def test_keys_never_appear_in_logs_or_events(
    proxy_factory: ProxyFactory,
    upstream: FakeOpenAI,
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:
    capturing = proxy_factory(METERING_CAPTURE_BYTES="100000")
    client_key = "sk-client-secret-do-not-log-1234"
    headers = {"Authorization": f"Bearer {client_key}", "api-key": client_key}
    body = {"model": "m", "messages": MESSAGES}
    for path in ("/v1/chat/completions", "/v1/nowhere"):
        async with http.post(capturing.base_url + path, json=body, headers=headers) as response:
            await response.read()
    upstream.behaviour.fail_status = 500
    async with http.post(f"{capturing.base_url}/v1/chat/completions", json=body,
                         headers=headers) as response:  # fmt: skip
        await response.read()
    await event_for(redis, response.headers["X-LLM-Request-ID"])
    entries = await redis.xrange("llm-gateway:events", "-", "+")
    dump = repr(entries)
    assert len(entries) > 0
    log = capturing.log_text()
    for secret in (client_key, UPSTREAM_KEY):
        assert secret not in dump
        assert secret not in log


async def test_one_json_log_line_per_request(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fresh = proxy_factory()
    ids = []
    for tenant in ("t1", "t2", "t3"):
        body = {"model": "gpt-4o-mini", "messages": MESSAGES}
        async with http.post(f"{fresh.base_url}/v1/chat/completions", json=body,
                             headers={"X-LLM-Tenant": tenant}) as response:  # fmt: skip
            ids.append(response.headers["X-LLM-Request-ID"])
    lines: list[dict[str, object]] = []
    for _ in range(100):  # the line is written just after the response is sent
        lines = [line for line in fresh.log_lines() if line.get("event") == "request"]
        if len(lines) == 3:
            break
        await asyncio.sleep(0.05)
    assert [line["request_id"] for line in lines] == ids
    assert [line["tenant"] for line in lines] == ["t1", "t2", "t3"]
    assert all(line["status"] == 200 and line["model"] == "gpt-4o-mini" for line in lines)
    assert all(isinstance(line["latency_ms"], float) for line in lines)
