"""The exact response cache (cache.py, docs/cache.md) in a real proxy on a real Redis: hits and
misses, whole and streamed (the replay byte for byte the first answer), what makes two requests
the same, tenants, what is never stored, Cache-Control, one upstream call for concurrent
identical requests, a hung and a stopped Redis, and the metering of hits.

Every request carries a text of its own (`fresh()`): entries live in the session's Redis.
Provider names start with `cache-`: cooldowns are shared through it too.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml

from llm_gateway_common.events import UsageEvent
from llm_gateway_fakes.anthropic import FakeAnthropic, FakeAnthropicServer
from llm_gateway_fakes.openai import FakeOpenAI, FakeOpenAIServer
from llm_gateway_proxy.apis import CHAT, MESSAGES
from llm_gateway_proxy.cache import Directives, cache_key, decide, directives
from llm_gateway_proxy.keys import Limits, new_key
from llm_gateway_proxy.keystore import KeyStore
from llm_gateway_proxy.modelconfig import RouteCache
from tests.conftest import UPSTREAM_KEY, ProxyFactory
from tests.proxy.test_access import record
from tests.proxy.test_manage import TOKEN, call
from tests.support.events import event_for
from tests.support.metrics import scrape, value
from tests.support.servers import LocalRedis
from tests.support.services import ProxyProcess

ANTHROPIC_KEY = "sk-ant-provider-key-cache-0123456789"


def models_file(tmp_path: Path, openai_url: str, anthropic_url: str) -> str:
    target = {"provider": "cache-openai", "model": "gpt-4o-mini"}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({
        "providers": {
            "cache-openai": {"type": "openai", "base_url": openai_url,
                             "api_key_env": "CACHE_OPENAI_KEY"},
            "cache-claude": {"type": "anthropic", "base_url": anthropic_url,
                             "api_key_env": "CACHE_ANTHROPIC_KEY"},
        },
        "models": {
            "cached": {"targets": [target], "cache": {"ttl": 600}},
            "shared": {"targets": [target], "cache": {"ttl": 600, "scope": "global"}},
            "plain": {"targets": [target]},
            "claude-cached": {"targets": [{"provider": "cache-claude",
                                           "model": "claude-sonnet-4-5"}],
                              "cache": {"ttl": 600}},
        },
        "routing": {"retries": 0},
    }))  # fmt: skip
    return str(path)


@pytest.fixture
def claude(anthropic_server: FakeAnthropicServer) -> FakeAnthropic:
    fake = anthropic_server.fake
    fake.reset()
    fake.behaviour.api_key = ANTHROPIC_KEY
    return fake


@pytest.fixture
def cache_env(
    tmp_path: Path, upstream_server: FakeOpenAIServer, anthropic_server: FakeAnthropicServer
) -> dict[str, str]:
    return {"MODELS_FILE": models_file(tmp_path, upstream_server.base_url,
                                       anthropic_server.base_url),
            "CACHE_OPENAI_KEY": UPSTREAM_KEY, "CACHE_ANTHROPIC_KEY": ANTHROPIC_KEY,
            "EVENT_FLUSH_INTERVAL": "0.01"}  # fmt: skip


@pytest.fixture
def cached_proxy(proxy_factory: ProxyFactory, cache_env: dict[str, str]) -> ProxyProcess:
    return proxy_factory(**cache_env)


def fresh(text: str = "what is the capital of France") -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{text} ({uuid.uuid4().hex[:12]})"}]


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def request_id(self) -> str:
        return str(self.headers["x-llm-request-id"])


async def post(http: aiohttp.ClientSession, proxy: ProxyProcess, body: dict[str, Any],
               path: str = "/v1/chat/completions", **headers: str) -> Answer:  # fmt: skip
    async with http.post(f"{proxy.base_url}{path}", json=body, headers=headers) as response:
        return Answer(response.status, response.headers, await response.read())


async def event(redis: aioredis.Redis, answer: Answer) -> UsageEvent:
    return await event_for(redis, answer.request_id)


async def cache_entries(redis: aioredis.Redis) -> int:
    return len([key async for key in redis.scan_iter(match="llm-gateway:cache:*")])


# --- hits and misses ---------------------------------------------------------------------------


async def test_a_whole_answer_is_stored_and_replayed_exactly_and_metered(
    cached_proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:  # fmt: skip
    upstream.behaviour.cached_tokens = 2
    body = {"model": "cached", "messages": fresh()}
    first = await post(http, cached_proxy, body)
    assert first.status == 200 and first.headers["cache-status"] == "llm-gateway; fwd=miss"
    stored = await event(redis, first)
    assert (stored.cache_status, stored.usage_source) == ("stored", "provider")
    assert stored.cost_usd is not None and stored.cost_usd > 0
    second = await post(http, cached_proxy, body)
    assert second.status == 200 and second.headers["cache-status"] == "llm-gateway; hit"
    assert int(second.headers["age"]) >= 0 and second.headers["x-llm-attempts"] == "0"
    assert first.headers["x-llm-attempts"] == "1" and "x-llm-route" not in second.headers
    assert second.body == first.body
    assert len(upstream.received) == 1  # the hit reached no provider
    hit = await event(redis, second)
    assert (hit.cache_status, hit.usage_source, hit.attempts) == ("hit", "cache", 0)
    assert (hit.prompt_tokens, hit.completion_tokens, hit.cached_tokens) == (
        stored.prompt_tokens, stored.completion_tokens, 2)  # fmt: skip
    assert hit.cost_usd == 0 and hit.saved_cost_usd == stored.cost_usd
    assert hit.provider_name == "cache-openai" and hit.response_model == stored.response_model
    samples = await scrape(http, cached_proxy.manage_url)
    cache = "llm_gateway_cache_requests_total"
    assert value(samples, cache, cache_status="hit") == 1
    assert value(samples, cache, cache_status="stored") == 1
    assert value(samples, "llm_gateway_cache_stored_bytes_total") == len(first.body)
    assert value(samples, "llm_gateway_cache_saved_usd_total") == pytest.approx(
        float(stored.cost_usd))  # fmt: skip


@pytest.mark.parametrize("include_usage", [True, False])
async def test_a_stream_is_replayed_as_the_same_event_sequence(
    cached_proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis, include_usage: bool,
) -> None:  # fmt: skip
    body: dict[str, Any] = {"model": "cached", "messages": fresh(), "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    first = await post(http, cached_proxy, body)
    assert first.status == 200 and first.body.endswith(b"data: [DONE]\n\n")
    assert (b'"choices":[]' in first.body) is include_usage  # the usage chunk as asked
    second = await post(http, cached_proxy, body)
    assert second.headers["cache-status"] == "llm-gateway; hit"
    assert second.headers["content-type"].startswith("text/event-stream")
    assert second.body == first.body
    assert len(upstream.received) == 1
    hit = await event(redis, second)
    assert hit.stream and hit.usage_source == "cache"
    assert hit.completion_tokens == (await event(redis, first)).completion_tokens


async def test_a_stream_stored_with_its_usage_chunk_serves_clients_that_did_not_ask(
    cached_proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    messages = fresh()
    asked = {"model": "cached", "messages": messages, "stream": True,
             "stream_options": {"include_usage": True}}  # fmt: skip
    plain = {"model": "cached", "messages": messages, "stream": True}
    with_usage = await post(http, cached_proxy, asked)
    without = await post(http, cached_proxy, plain)  # stream_options is not part of the key
    assert without.headers["cache-status"] == "llm-gateway; hit"
    assert b'"choices":[]' not in without.body and without.body.endswith(b"data: [DONE]\n\n")
    assert len(upstream.received) == 1
    # The other way round: stored without the chunk, a client asking for it is a miss.
    messages = fresh()
    await post(http, cached_proxy, {**plain, "messages": messages})
    asking = await post(http, cached_proxy, {**asked, "messages": messages})
    assert asking.headers["cache-status"] == "llm-gateway; fwd=miss"
    assert b'"choices":[]' in asking.body and len(upstream.received) == 3
    assert with_usage.status == 200


@pytest.mark.parametrize(("change", "same"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, False),
    ({"tool_choice": "none", "tools": [{"type": "function", "function": {"name": "f"}}]}, False),
    ({"seed": 7}, False),
    ({"temperature": 0.2}, False),
    ({"response_format": {"type": "json_object"}}, False),
    ({"top_k": 40}, False),  # a provider's own field
    ({"user": "someone-else"}, True),
    ({"stream_options": {"include_usage": True}}, True),
], ids=["tools", "tool_choice", "seed", "temperature", "response_format", "provider-field",
        "user", "stream_options"])  # fmt: skip
async def test_what_makes_two_requests_the_same(
    cached_proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    change: dict[str, Any], same: bool,
) -> None:  # fmt: skip
    body = {"model": "cached", "messages": fresh(), "user": "someone"}
    await post(http, cached_proxy, body)
    other = await post(http, cached_proxy, {**body, **change})
    assert other.status == 200, other.body
    assert (other.headers["cache-status"] == "llm-gateway; hit") is same
    assert len(upstream.received) == (1 if same else 2)
    # Key order never matters: the request is canonical JSON.
    reordered = dict(reversed(list({**body, **change}.items())))
    again = await post(http, cached_proxy, reordered)
    assert again.headers["cache-status"] == "llm-gateway; hit"


async def test_tenants_never_share_entries_unless_the_model_is_global(
    cached_proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    for model, calls in (("cached", 2), ("shared", 1)):
        upstream.reset()
        upstream.behaviour.api_key = UPSTREAM_KEY
        body = {"model": model, "messages": fresh()}
        first = await post(http, cached_proxy, body, **{"X-LLM-Tenant": "team-a"})
        other = await post(http, cached_proxy, body, **{"X-LLM-Tenant": "team-b"})
        assert first.status == other.status == 200
        assert len(upstream.received) == calls, model
        again = await post(http, cached_proxy, body, **{"X-LLM-Tenant": "team-b"})
        assert again.headers["cache-status"] == "llm-gateway; hit"


async def test_a_model_without_a_cache_is_never_cached(
    cached_proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:  # fmt: skip
    body = {"model": "plain", "messages": fresh()}
    first = await post(http, cached_proxy, body)
    second = await post(http, cached_proxy, body)
    assert "cache-status" not in first.headers and "cache-status" not in second.headers
    assert len(upstream.received) == 2
    assert (await event(redis, second)).cache_status is None


# --- what is never stored ------------------------------------------------------------------


async def test_answers_cut_by_their_length_are_not_stored(
    cached_proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:  # fmt: skip
    upstream.behaviour.finish_reason = "length"
    for stream in (False, True):
        body = {"model": "cached", "messages": fresh(), "stream": stream, "max_tokens": 3}
        first = await post(http, cached_proxy, body)
        second = await post(http, cached_proxy, body)
        assert first.status == second.status == 200
        assert second.headers["cache-status"] == "llm-gateway; fwd=miss"
        assert (await event(redis, first)).cache_status == "miss"
    assert len(upstream.received) == 4


async def test_errors_and_failed_streams_are_not_stored(
    cached_proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:  # fmt: skip
    body = {"model": "cached", "messages": fresh()}
    upstream.behaviour.fail_status = 500
    failed = await post(http, cached_proxy, body)
    assert failed.status >= 500
    upstream.behaviour.fail_status = None
    after = await post(http, cached_proxy, body)
    assert after.status == 200 and after.headers["cache-status"] == "llm-gateway; fwd=miss"
    assert (await event(redis, failed)).cache_status == "miss"
    # An error inside a 200 stream: sent on as it came, never stored.
    upstream.behaviour.stream_error_first = True
    streamed = {"model": "cached", "messages": fresh(), "stream": True}
    broken = await post(http, cached_proxy, streamed)
    upstream.behaviour.stream_error_first = False
    retried = await post(http, cached_proxy, streamed)
    assert retried.headers["cache-status"] == "llm-gateway; fwd=miss"
    assert (await event(redis, broken)).cache_status == "miss"


async def test_a_stream_the_client_left_is_not_stored(
    cached_proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:  # fmt: skip
    upstream.behaviour.chunk_delay = 0.05
    body = {"model": "cached", "messages": fresh(), "stream": True}
    async with http.post(f"{cached_proxy.base_url}/v1/chat/completions", json=body) as response:
        request_id = response.headers["x-llm-request-id"]
        await response.content.readany()  # the first bytes, then leave
        response.close()
    left = await event_for(redis, request_id)
    assert left.outcome == "client_disconnected" and left.cache_status == "miss"
    upstream.behaviour.chunk_delay = 0
    again = await post(http, cached_proxy, body)
    assert again.headers["cache-status"] == "llm-gateway; fwd=miss"


async def test_an_answer_larger_than_the_limit_is_not_stored(
    proxy_factory: ProxyFactory, cache_env: dict[str, str], upstream: FakeOpenAI,
    http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    proxy = proxy_factory(**cache_env, CACHE_MAX_ENTRY_BYTES="200")
    body = {"model": "cached", "messages": fresh()}
    await post(http, proxy, body)
    second = await post(http, proxy, body)
    assert second.headers["cache-status"] == "llm-gateway; fwd=miss"
    assert len(upstream.received) == 2


# --- Cache-Control -------------------------------------------------------------------------


async def test_cache_control_directives(
    cached_proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:  # fmt: skip
    body = {"model": "cached", "messages": fresh()}
    stored = await post(http, cached_proxy, body, **{"Cache-Control": "no-store"})
    assert stored.headers["cache-status"] == "llm-gateway; fwd=request"
    assert (await event(redis, stored)).cache_status == "bypass"
    plain = await post(http, cached_proxy, body)  # no-store wrote nothing
    assert plain.headers["cache-status"] == "llm-gateway; fwd=miss"
    hit = await post(http, cached_proxy, body, **{"Cache-Control": "no-store"})
    assert hit.headers["cache-status"] == "llm-gateway; fwd=request"  # nor read
    refreshed = await post(http, cached_proxy, body, **{"Cache-Control": "no-cache"})
    assert refreshed.headers["cache-status"] == "llm-gateway; fwd=request"
    assert (await event(redis, refreshed)).cache_status == "stored"
    assert len(upstream.received) == 4
    newest = await post(http, cached_proxy, body)
    assert newest.body == refreshed.body  # the refreshed answer replaced the first
    await asyncio.sleep(1.1)
    too_old = await post(http, cached_proxy, body, **{"Cache-Control": "max-age=0"})
    assert too_old.headers["cache-status"] == "llm-gateway; fwd=miss"
    fresh_enough = await post(http, cached_proxy, body, **{"Cache-Control": "max-age=60"})
    assert fresh_enough.headers["cache-status"] == "llm-gateway; hit"


async def test_max_age_turns_the_cache_on_for_a_model_without_one(
    cached_proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:  # fmt: skip
    body = {"model": "plain", "messages": fresh()}
    first = await post(http, cached_proxy, body, **{"Cache-Control": "max-age=30"})
    second = await post(http, cached_proxy, body, **{"Cache-Control": "max-age=30"})
    assert second.headers["cache-status"] == "llm-gateway; hit"
    assert second.body == first.body and len(upstream.received) == 1
    key = next(iter([k async for k in redis.scan_iter(match="llm-gateway:cache:*")]))
    assert 0 < await redis.ttl(key) <= 600


# --- one upstream call, Redis trouble ----------------------------------------------------------


async def test_concurrent_identical_requests_make_one_upstream_call(
    cached_proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:  # fmt: skip
    upstream.behaviour.response_delay = 0.4
    body = {"model": "cached", "messages": fresh()}
    answers = await asyncio.gather(*(post(http, cached_proxy, body) for _ in range(5)))
    assert [a.status for a in answers] == [200] * 5
    assert len({a.body for a in answers}) == 1
    assert len(upstream.received) == 1
    statuses = sorted([(await event(redis, a)).cache_status or "" for a in answers])
    assert statuses == ["hit", "hit", "hit", "hit", "stored"]


async def test_the_others_go_upstream_when_the_first_fails(
    cached_proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    upstream.behaviour.response_delay = 0.3
    upstream.behaviour.fail_status = 500
    upstream.behaviour.fail_times = 1
    body = {"model": "cached", "messages": fresh()}
    answers = await asyncio.gather(*(post(http, cached_proxy, body) for _ in range(3)))
    assert sorted(a.status for a in answers)[:2] == [200, 200]
    assert len(upstream.received) >= 2  # the waiting ones were not served the failure


async def test_a_hung_cache_redis_costs_one_timeout_and_fails_nothing(
    proxy_factory: ProxyFactory, cache_env: dict[str, str], upstream: FakeOpenAI,
    http: aiohttp.ClientSession, server: LocalRedis,
) -> None:  # fmt: skip
    proxy = proxy_factory(**cache_env, CACHE_REDIS_URL=server.url, REQUEST_REDIS_TIMEOUT="0.2")
    body = {"model": "cached", "messages": fresh()}
    assert (await post(http, proxy, body)).status == 200
    server.freeze()  # answers nothing, keeps its port: as a hung Redis
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        answers = [await post(http, proxy, {"model": "cached", "messages": fresh()})
                   for _ in range(5)]  # fmt: skip
        elapsed = loop.time() - started
    finally:
        server.thaw()
    assert [a.status for a in answers] == [200] * 5
    assert all(a.headers["cache-status"] == "llm-gateway; fwd=miss" for a in answers)
    assert elapsed < 2.0  # one 0.2 s timeout, then the breaker answers at once


async def test_a_stopped_cache_redis_fails_nothing(
    proxy_factory: ProxyFactory, cache_env: dict[str, str], upstream: FakeOpenAI,
    http: aiohttp.ClientSession, server: LocalRedis,
) -> None:  # fmt: skip
    proxy = proxy_factory(**cache_env, CACHE_REDIS_URL=server.url)
    server.stop()
    body = {"model": "cached", "messages": fresh()}
    answers = [await post(http, proxy, body) for _ in range(3)]
    assert [a.status for a in answers] == [200] * 3
    assert len(upstream.received) == 3


# --- keys, tenants, budgets --------------------------------------------------------------


async def _key(redis: aioredis.Redis, limits: Limits) -> str:
    key = new_key()
    await KeyStore(redis, cache_ttl=0, timeout=2).save(record(key, limits=limits))
    return key


async def test_a_key_turns_the_cache_on_or_off_and_hits_charge_no_budget(
    proxy_factory: ProxyFactory, cache_env: dict[str, str], upstream: FakeOpenAI,
    http: aiohttp.ClientSession, redis: aioredis.Redis,
) -> None:  # fmt: skip
    proxy = proxy_factory(**cache_env, AUTH_MODE="keys", MANAGEMENT_TOKEN="cache-token",
                          KEY_CACHE_TTL="0")  # fmt: skip
    on = await _key(redis, Limits(cache_ttl=120, budget_tokens=10_000, requests_per_minute=3))
    off = await _key(redis, Limits(cache_ttl=0))
    body = {"model": "plain", "messages": fresh()}  # no cache of its own: the key's
    auth = {"Authorization": f"Bearer {on}"}
    first = await post(http, proxy, body, **auth)
    used = (await event(redis, first)).total_tokens
    second = await post(http, proxy, body, **auth)
    assert second.headers["cache-status"] == "llm-gateway; hit"
    status, usage = await _usage(http, proxy, (await event(redis, first)).key_id)
    assert status == 200 and usage["budget_tokens_used"] == used  # the hit charged nothing
    assert usage["requests_this_minute"] == 2  # but it counted as a request
    third = await post(http, proxy, body, **auth)  # a hit still counts against the rate limit
    refused = await post(http, proxy, body, **auth)
    assert third.status == 200 and refused.status == 429
    denied = {"Authorization": f"Bearer {off}"}
    cached = {"model": "cached", "messages": fresh()}
    await post(http, proxy, cached, **denied)
    again = await post(http, proxy, cached, **denied, **{"Cache-Control": "max-age=60"})
    assert "cache-status" not in again.headers  # the key's 0: off, whatever the request says


async def _usage(http: aiohttp.ClientSession, proxy: ProxyProcess,
                 key_id: str | None) -> tuple[int, dict[str, Any]]:  # fmt: skip
    async with http.get(f"{proxy.manage_url}/manage/usage/keys/{key_id}",
                        headers={"Authorization": "Bearer cache-token"}) as response:  # fmt: skip
        return response.status, await response.json()


# --- the Messages API ------------------------------------------------------------------------


async def test_anthropic_messages_are_cached_too(
    cached_proxy: ProxyProcess, claude: FakeAnthropic, http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:  # fmt: skip
    headers = {"anthropic-version": "2023-06-01"}
    for stream in (False, True):
        body = {"model": "claude-cached", "max_tokens": 32, "messages": fresh(),
                "stream": stream, "metadata": {"user_id": "u-1"}}  # fmt: skip
        first = await post(http, cached_proxy, body, "/v1/messages", **headers)
        other_user = {**body, "metadata": {"user_id": "u-2"}}
        second = await post(http, cached_proxy, other_user, "/v1/messages", **headers)
        assert first.status == second.status == 200
        assert second.headers["cache-status"] == "llm-gateway; hit"
        assert second.body == first.body
        hit = await event(redis, second)
        assert (hit.endpoint, hit.usage_source, hit.cache_status) == (
            "/v1/messages", "cache", "hit")  # fmt: skip
    assert len(claude.received) == 2


# --- the rules, unit by unit ----------------------------------------------------------------


def test_cache_control_is_parsed_as_http_caches_do() -> None:
    assert directives([]) is None
    assert directives([(b"cache-control", b"max-age=30, no-cache")]) == Directives(30, True, False)
    assert directives([(b"cache-control", b'No-Store, max-age="5"')]) == Directives(5, False, True)
    assert directives([(b"cache-control", b"max-age=soon, private")]) == Directives(
        None, False, False
    )


def test_the_key_setting_wins_over_the_tenant_and_the_model() -> None:
    route = RouteCache(ttl=600)
    assert decide(route, None, None, None) is not None
    assert decide(route, 0, 300, None) is None  # the key's 0: off
    assert decide(None, None, 0, Directives(30, False, False)) is None  # the tenant's 0
    assert decide(None, None, None, Directives(30, False, False)).ttl == 30  # type: ignore[union-attr]
    assert decide(route, 60, None, None).ttl == 60  # type: ignore[union-attr]
    bypass = decide(route, None, None, Directives(None, False, True))
    assert bypass is not None and not bypass.read and not bypass.write
    assert decide(None, None, None, Directives(None, True, False)) is None  # nothing to enable


def test_the_key_is_the_canonical_request() -> None:
    a = b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":0,"user":"u"}'
    b = b'{"temperature":0,"messages":[{"content":"x","role":"user"}],"model":"m"}'
    assert cache_key(CHAT, a, "v1", "t") == cache_key(CHAT, b, "v1", "t")
    assert cache_key(CHAT, a, "v1", "t") != cache_key(CHAT, a, "v2", "t")  # a changed route
    assert cache_key(CHAT, a, "v1", "t") != cache_key(CHAT, a, "v1", "other")
    assert cache_key(CHAT, a, "v1", "t") != cache_key(MESSAGES, a, "v1", "t")
    m1 = b'{"model":"m","max_tokens":5,"messages":[],"metadata":{"user_id":"a"}}'
    m2 = b'{"model":"m","max_tokens":5,"messages":[]}'
    assert cache_key(MESSAGES, m1, "v", None) == cache_key(MESSAGES, m2, "v", None)
    assert cache_key(CHAT, m1, "v", None) != cache_key(CHAT, m2, "v", None)


async def test_a_tenant_turns_the_cache_on_through_the_management_api(
    proxy_factory: ProxyFactory, cache_env: dict[str, str], upstream: FakeOpenAI,
    http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    proxy = proxy_factory(**cache_env, AUTH_MODE="keys", MANAGEMENT_TOKEN=TOKEN,
                          KEY_CACHE_TTL="0")  # fmt: skip
    tenant = f"cache-{uuid.uuid4().hex[:8]}"
    status, _ = await call(http, "PUT", f"{proxy.manage_url}/manage/tenants/{tenant}/limits",
                           json={"cache_ttl": 120})  # fmt: skip
    assert status == 200
    status, created = await call(http, "POST", f"{proxy.manage_url}/manage/keys",
                                 json={"name": "cached", "tenant": tenant})  # fmt: skip
    assert status == 201, created
    auth = {"Authorization": f"Bearer {created['key']}"}
    body = {"model": "plain", "messages": fresh()}
    await post(http, proxy, body, **auth)
    second = await post(http, proxy, body, **auth)
    assert second.headers["cache-status"] == "llm-gateway; hit"
    status, refused = await call(http, "PUT", f"{proxy.manage_url}/manage/tenants/{tenant}/limits",
                                 json={"cache_ttl": -1})  # fmt: skip
    assert status == 400, refused


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/embeddings", {"model": "cached", "input": ["a text to embed"]}),
    ("/v1/completions", {"model": "cached", "prompt": "Once upon a time"}),
], ids=["embeddings", "completions"])  # fmt: skip
async def test_embeddings_and_completions_are_cached(
    cached_proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis, path: str, body: dict[str, Any],
) -> None:  # fmt: skip
    body = {**body, "user": uuid.uuid4().hex}  # not part of the key: the nonce below is
    body["input" if "input" in body else "prompt"] = f"{uuid.uuid4().hex} {body.get('prompt')}"
    first = await post(http, cached_proxy, body, path)
    second = await post(http, cached_proxy, body, path)
    assert first.status == second.status == 200
    assert second.headers["cache-status"] == "llm-gateway; hit"
    assert second.body == first.body and len(upstream.received) == 1
    assert (await event(redis, second)).endpoint == path
