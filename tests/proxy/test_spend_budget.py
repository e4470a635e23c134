"""Dollar budgets across replicas: three proxies on one Redis share a key's `budget_usd`; no
request is admitted once the recorded spend reached it (one at a time, then waves of concurrent
streams, which overshoot it only by what was in flight), each replica refuses with 429
`budget_exceeded` and a Retry-After at the period's end; the spend `/manage` reports equals the
ledger's sum for the same requests; and the soft limit shows in `/manage` and as a metric."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from llm_gateway_common import metricnames as metric
from llm_gateway_fakes.openai import FakeOpenAI
from llm_gateway_proxy.keys import KeyRecord, Limits
from llm_gateway_proxy.ratelimit import RateLimiter
from tests.collector.test_ndjson import until
from tests.conftest import CollectorFactory, ProxyFactory
from tests.proxy.test_manage import TOKEN, call
from tests.support.events import event_for
from tests.support.metrics import scrape, value

BUDGET_USD = 0.00004  # gpt-4o-mini at ~30 tokens a request: about 6 requests
MESSAGES = [{"role": "user", "content": "how much does this cost, roughly, in dollars"}]


async def usage_of(http: aiohttp.ClientSession, manage_url: str, key_id: str) -> dict[str, Any]:
    status, usage = await call(http, "GET", f"{manage_url}/manage/usage/keys/{key_id}")
    assert status == 200, usage
    return dict(usage)


async def ledger_sum(database_url: str, key_id: str, answered: int) -> Decimal:
    """The ledger's cost for a key, once its `answered` requests have landed."""
    db = await asyncpg.connect(database_url)
    try:

        async def in_ledger() -> bool:
            count = await db.fetchval("SELECT count(*) FROM usage_events WHERE key_id = $1 "
                                      "AND status_code = 200", key_id)  # fmt: skip
            return bool(count == answered)

        await until(in_ledger, "the requests in the ledger")
        total: Decimal = await db.fetchval(
            "SELECT sum(cost_usd) FROM usage_events WHERE key_id = $1", key_id
        )
        return total
    finally:
        await db.close()


async def test_a_dollar_budget_holds_across_three_replicas_and_matches_the_ledger(
    proxy_factory: ProxyFactory, collector_factory: CollectorFactory, upstream: FakeOpenAI,
    http: aiohttp.ClientSession, redis: aioredis.Redis, stream_name: str, database_url: str,
) -> None:  # fmt: skip
    env = {"AUTH_MODE": "keys", "MANAGEMENT_TOKEN": TOKEN, "KEY_CACHE_TTL": "0",
           "EVENTS_STREAM": stream_name, "EVENT_FLUSH_INTERVAL": "0.01"}  # fmt: skip
    replicas = [proxy_factory(**env) for _ in range(3)]
    collector_factory(EVENTS_STREAM=stream_name, COLLECTOR_SINK="postgres",
                      DATABASE_URL=database_url)  # fmt: skip
    tenant = f"spend-{uuid.uuid4().hex[:8]}"
    status, created = await call(http, "POST", f"{replicas[0].manage_url}/manage/keys", json={
        "name": "budgeted", "tenant": tenant,
        "limits": {"budget_usd": BUDGET_USD, "budget_soft_limit_percent": 50},
    })  # fmt: skip
    assert status == 201, created
    key_id, headers = created["id"], {"Authorization": f"Bearer {created['key']}"}
    budget_nanos = round(Decimal(repr(BUDGET_USD)) * 10**9)

    costs: list[Decimal] = []
    refusals = 0
    for attempt in range(40):
        replica = replicas[attempt % 3]
        recorded = (await usage_of(http, replica.manage_url, key_id))["spend_nano_usd"]
        async with http.post(
            f"{replica.base_url}/v1/chat/completions",
            headers=headers,
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
        ) as response:
            body = await response.json()
            if recorded >= budget_nanos:
                assert response.status == 429, (attempt, recorded, body)
                assert body["error"]["code"] == "budget_exceeded"
                assert 0 < int(response.headers["retry-after"]) <= 31 * 86_400  # month's end
                assert "x-ratelimit-limit-tokens" not in response.headers
                refusals += 1
                if refusals == 3:  # every replica refused
                    break
                continue
            assert response.status == 200, (attempt, recorded, body)
            request_id = response.headers["x-llm-request-id"]
        event = await event_for(redis, request_id, stream_name, deadline=30)
        assert event.cost_usd is not None and event.cost_usd > 0
        costs.append(event.cost_usd)
        expected = sum(round(c * 10**9) for c in costs)

        async def charged(replica_url: str = replica.manage_url, expected: int = expected) -> bool:
            return (await usage_of(http, replica_url, key_id))["spend_nano_usd"] == expected

        await until(charged, "the request's cost charged to the key")
    assert refusals == 3, "the budget was never reached"
    assert len(costs) >= 3  # several requests, on several replicas, before it was
    assert sum(round(c * 10**9) for c in costs[:-1]) < budget_nanos  # the last one crossed it

    usage = await usage_of(http, replicas[1].manage_url, key_id)
    assert usage["budget_usd"] == BUDGET_USD
    assert usage["budget_usd_remaining"] == 0
    assert usage["budget_soft_limit_reached"] is True
    # The ledger's sum for the same requests, to the cent (here: to the nano-dollar rounding).
    ledger = await ledger_sum(database_url, key_id, len(costs))
    assert ledger == sum(costs)
    assert abs(ledger - Decimal(usage["spend_nano_usd"]) / 10**9) < Decimal("1e-9") * len(costs)
    assert round(ledger, 2) == round(Decimal(usage["spend_nano_usd"]) / 10**9, 2)
    # Past the soft limit (50 %), admitted requests were counted, on the replicas that took them.
    soft = 0.0
    for replica in replicas:
        samples = await scrape(http, replica.manage_url)
        soft += value(samples, metric.BUDGET_SOFT_LIMIT + "_total", **{metric.SCOPE: "key"})
    assert soft >= 1


async def test_a_tenant_dollar_budget_covers_all_its_keys_and_the_soft_limit_is_reported(
    redis: aioredis.Redis,
) -> None:
    tenant = f"spend-{uuid.uuid4().hex[:8]}"
    limiter = RateLimiter(redis, timeout=2, fail_open=False)
    tenant_limits = Limits(budget_usd=1.5, budget_period="daily", budget_soft_limit_percent=60)
    one = KeyRecord(id=f"key_{uuid.uuid4().hex}", key_hash="h1", name="a", tenant=tenant)
    two = KeyRecord(id=f"key_{uuid.uuid4().hex}", key_hash="h2", name="b", tenant=tenant)
    for charge in limiter.charges(one, tenant_limits, 100, Decimal("0.9")):
        await redis.incrby(charge.key, charge.amount)
    verdict = await limiter.admit(two, tenant_limits)
    assert verdict is not None and verdict.allowed and verdict.soft == "tenant"  # 0.9 >= 60 %
    for charge in limiter.charges(two, tenant_limits, 100, Decimal("0.6")):
        await redis.incrby(charge.key, charge.amount)
    refused = await limiter.admit(one, tenant_limits)
    assert refused is not None and not refused.allowed
    assert (refused.limit, refused.scope) == ("spend", "tenant")
    assert 0 < refused.reset_seconds <= 86_400  # the UTC day's end
    assert (await limiter.usage(one))["spend_nano_usd"] == 900_000_000  # the key's own spend


async def _stream(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, str]:
    """A streamed chat; (status, request id or the refusal's code)."""
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    async with http.post(f"{url}/v1/chat/completions", headers=headers, json=body) as response:
        if response.status != 200:
            return response.status, (await response.json())["error"]["code"]
        raw = await response.read()
        assert raw.endswith(b"data: [DONE]\n\n")
        return 200, response.headers["x-llm-request-id"]


async def test_concurrent_streams_overshoot_a_dollar_budget_only_by_what_was_in_flight(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    """Waves of six streams at once, two per replica: each stream is charged its cost once,
    when it ends; a wave admitted while the spend was under the budget may cross it (those
    streams were in flight together), and once the recorded spend reached it nothing more is
    admitted on any replica."""
    upstream.behaviour.chunk_delay = 0.02  # each stream takes ~0.2 s: a wave is in flight at once
    env = {"AUTH_MODE": "keys", "MANAGEMENT_TOKEN": TOKEN, "KEY_CACHE_TTL": "0",
           "EVENTS_STREAM": stream_name, "EVENT_FLUSH_INTERVAL": "0.01"}  # fmt: skip
    replicas = [proxy_factory(**env) for _ in range(3)]
    budget = 0.0001  # about 13 streams of gpt-4o-mini here
    status, created = await call(http, "POST", f"{replicas[0].manage_url}/manage/keys", json={
        "name": "streams", "tenant": f"spend-{uuid.uuid4().hex[:8]}",
        "limits": {"budget_usd": budget},
    })  # fmt: skip
    assert status == 201, created
    key_id, headers = created["id"], {"Authorization": f"Bearer {created['key']}"}
    budget_nanos = round(Decimal(repr(budget)) * 10**9)
    charged_nanos = 0
    wave_costs: list[int] = []
    for wave in range(10):
        spent_before = (await usage_of(http, replicas[0].manage_url, key_id))["spend_nano_usd"]
        answers = await asyncio.gather(*(_stream(http, replicas[i % 3].base_url, headers)
                                         for i in range(6)))  # fmt: skip
        if spent_before >= budget_nanos:
            assert answers == [(429, "budget_exceeded")] * 6, (wave, answers)
            break
        assert all(status == 200 for status, _ in answers), (wave, answers)
        events = [await event_for(redis, rid, stream_name, deadline=30) for _, rid in answers]
        assert all(e.cost_usd is not None and e.stream for e in events)
        wave_nanos = sum(round(e.cost_usd * 10**9) for e in events if e.cost_usd is not None)
        wave_costs.append(wave_nanos)
        charged_nanos += wave_nanos

        url = replicas[wave % 3].manage_url

        async def charged(expected: int = charged_nanos, url: str = url) -> bool:
            return (await usage_of(http, url, key_id))["spend_nano_usd"] == expected

        await until(charged, "each stream charged once")
    else:
        raise AssertionError("the budget was never reached")
    assert len(wave_costs) >= 2
    # The last wave admitted started under the budget and took the spend to it or past it: the
    # overshoot is less than what that wave had in flight.
    assert charged_nanos - wave_costs[-1] < budget_nanos <= charged_nanos
