"""What crosses the gateway: headers, keys, bodies, ids, and the usage option it adds."""

from __future__ import annotations

import aiohttp
import orjson
import redis.asyncio as aioredis

from llm_gateway_fakes.openai import FakeOpenAI
from tests.conftest import UPSTREAM_KEY, ProxyFactory
from tests.support.events import event_for
from tests.support.services import ProxyProcess

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "say hello please"}]}


async def test_client_key_is_replaced_by_the_upstream_key(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": "Bearer client-key-should-not-travel", "x-api-key": "also-not",
               "OpenAI-Organization": "org-1", "X-LLM-Tenant": "team-a"}  # fmt: skip
    async with http.post(f"{proxy.base_url}/v1/chat/completions", json=CHAT, headers=headers) as r:
        assert r.status == 200
    received = upstream.received[-1]
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    lowered = {k.lower() for k in received.headers}
    assert "x-api-key" not in lowered and "x-llm-tenant" not in lowered
    # Headers that pick another account or project at the provider are not the client's to set.
    assert "openai-organization" not in lowered


async def test_account_headers_are_forwarded_only_when_configured(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    proxy = proxy_factory(FORWARD_ACCOUNT_HEADERS="OpenAI-Project")
    headers = {"OpenAI-Organization": "org-1", "OpenAI-Project": "proj-1"}
    async with http.post(f"{proxy.base_url}/v1/chat/completions", json=CHAT, headers=headers) as r:
        assert r.status == 200
    received = {k.lower(): v for k, v in upstream.received[-1].headers.items()}
    assert received.get("openai-project") == "proj-1"
    assert "openai-organization" not in received


async def test_non_streaming_body_is_forwarded_byte_for_byte(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    raw = b'{ "model" : "gpt-4o-mini", "messages": [{"role":"user","content":"x"}], "seed": 7 }'
    async with http.post(f"{proxy.base_url}/v1/chat/completions", data=raw,
                         headers={"Content-Type": "application/json"}) as response:  # fmt: skip
        assert response.status == 200
    assert upstream.received[-1].body == raw
    assert upstream.received[-1].path == "/v1/chat/completions"


async def test_request_ids_and_tenant_reach_the_event(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession, redis: aioredis.Redis
) -> None:
    headers = {"X-Tenant": "fallback", "X-LLM-Tenant": "team-b", "X-Request-ID": "client-42"}
    body = {**CHAT, "user": "end-user-7"}
    async with http.post(f"{proxy.base_url}/v1/chat/completions", json=body, headers=headers) as r:
        request_id = r.headers["X-LLM-Request-ID"]
        payload = await r.json()
    event = await event_for(redis, request_id)
    assert (event.tenant, event.client_request_id) == ("team-b", "client-42")
    assert event.user == "end-user-7"
    assert event.model == "gpt-4o-mini"
    assert event.response_model == payload["model"] == "gpt-4o-mini-2024-07-18"
    assert event.upstream_request_id is not None and event.upstream_request_id.startswith("req-")
    assert event.prompt_tokens == payload["usage"]["prompt_tokens"]
    assert event.completion_tokens == payload["usage"]["completion_tokens"] == 8
    assert event.usage_source == "provider"
    assert event.outcome == "ok" and event.status_code == 200


async def test_x_tenant_is_the_fallback_and_default_is_default(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession, redis: aioredis.Redis
) -> None:
    url = f"{proxy.base_url}/v1/chat/completions"
    async with http.post(url, json=CHAT, headers={"X-Tenant": "legacy"}) as r:
        first = r.headers["X-LLM-Request-ID"]
    async with http.post(url, json=CHAT) as r:
        second = r.headers["X-LLM-Request-ID"]
    assert (await event_for(redis, first)).tenant == "legacy"
    assert (await event_for(redis, second)).tenant == "default"


async def read_sse(response: aiohttp.ClientResponse) -> list[bytes]:
    raw = await response.read()
    return [part for part in raw.split(b"\n\n") if part]


async def test_stream_gets_usage_option_upstream_and_client_does_not_see_usage_chunk(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession, redis: aioredis.Redis
) -> None:
    async with http.post(f"{proxy.base_url}/v1/chat/completions",
                         json={**CHAT, "stream": True}) as response:  # fmt: skip
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        events = await read_sse(response)
        request_id = response.headers["X-LLM-Request-ID"]
    sent = upstream.received[-1].json()
    assert sent["stream_options"] == {"include_usage": True}
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert all(c["choices"] for c in chunks), "the usage-only chunk leaked to the client"
    event = await event_for(redis, request_id)
    assert event.stream and event.usage_source == "provider"
    assert event.completion_tokens == 8
    assert event.prompt_tokens == upstream.usages[-1]["prompt_tokens"]
    assert event.ttfb_ms is not None and 0 < event.ttfb_ms <= event.latency_ms


async def test_stream_keeps_usage_chunk_when_client_asked(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(f"{proxy.base_url}/v1/chat/completions", json=body) as response:
        events = await read_sse(response)
    last_chunk = orjson.loads(events[-2][6:])
    assert last_chunk["choices"] == [] and last_chunk["usage"]["completion_tokens"] == 8


async def test_stream_options_the_client_set_are_kept(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": False, "x": 1}}
    async with http.post(f"{proxy.base_url}/v1/chat/completions", json=body) as response:
        await response.read()
    assert upstream.received[-1].json()["stream_options"] == {"include_usage": True, "x": 1}


async def test_generic_passthrough_keeps_method_path_query_and_body(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession, redis: aioredis.Redis
) -> None:
    async with http.delete(f"{proxy.base_url}/v1/files/file-abc?purge=true", data=b"xyz") as r:
        assert r.status == 200
        echoed = await r.json()
        request_id = r.headers["X-LLM-Request-ID"]
    assert echoed == {"object": "echo", "method": "DELETE", "path": "/v1/files/file-abc",
                      "query": "purge=true", "body_bytes": 3}  # fmt: skip
    event = await event_for(redis, request_id)
    assert (event.endpoint, event.method, event.usage_source) == (
        "/v1/files/file-abc",
        "DELETE",
        "none",
    )


async def test_models_listing(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{proxy.base_url}/v1/models") as response:
        assert response.status == 200
        listing = await response.json()
    assert {m["id"] for m in listing["data"]} >= {"gpt-4o-mini"}
    assert upstream.received[-1].method == "GET"


async def test_stream_chunks_reach_the_client_before_the_upstream_finishes(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    upstream.behaviour.words = 30
    upstream.behaviour.chunk_delay = 0.05
    async with http.post(f"{proxy.base_url}/v1/chat/completions",
                         json={**CHAT, "stream": True}) as response:  # fmt: skip
        first = await response.content.readany()
        assert first.startswith(b"data: ")
        assert upstream.streams_completed == 0, "the gateway held the stream back"
        rest = await response.read()
    assert (first + rest).endswith(b"data: [DONE]\n\n")
    assert upstream.streams_completed == 1
