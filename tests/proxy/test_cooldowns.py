"""Cooldowns on their own: when a target cools down, the one probe after it, Retry-After, and
sharing through a real Redis, including one that is away or hung (never a request's problem)."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from llm_gateway_proxy.cooldowns import COOLDOWNS_KEY, MAX_RETRY_AFTER, Cooldowns
from llm_gateway_proxy.modelconfig import Cooldown
from tests.support.servers import LocalRedis

POLICY = Cooldown(failures=3, seconds=30)
T = "openai/gpt-4o"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_cool_a_target_down_and_a_success_resets_the_count() -> None:
    clock = Clock()
    cooldowns = Cooldowns(None, timeout=0.1, clock=clock)
    assert cooldowns.failed(T, POLICY, None) == 0.0
    assert cooldowns.failed(T, POLICY, None) == 0.0
    cooldowns.succeeded(T)  # consecutive: a success in between starts the count again
    assert cooldowns.failed(T, POLICY, None) == 0.0
    assert cooldowns.failed(T, POLICY, None) == 0.0
    assert cooldowns.frees_at(T, clock.now) == 0.0
    assert cooldowns.failed(T, POLICY, None) == 30.0
    assert cooldowns.frees_at(T, clock.now) == clock.now + 30


def test_after_the_cooldown_one_request_probes_and_the_others_wait_for_it() -> None:
    clock = Clock()
    cooldowns = Cooldowns(None, timeout=0.1, clock=clock)
    cooldowns.failed(T, POLICY, retry_after=5)  # one 429 with Retry-After: at once
    clock.now += 5
    assert cooldowns.frees_at(T, clock.now) == 0.0
    cooldowns.chosen(T, clock.now, lease=10)  # this request is the probe
    assert cooldowns.frees_at(T, clock.now) == clock.now + 10  # the others skip it meanwhile
    assert cooldowns.failed(T, POLICY, None) == 30.0  # a failed probe: cooling again at once
    clock.now += 30
    cooldowns.chosen(T, clock.now, lease=10)
    cooldowns.succeeded(T)
    assert cooldowns.frees_at(T, clock.now) == 0.0 and cooldowns.snapshot() == {}


def test_retry_after_is_believed_up_to_a_bound() -> None:
    cooldowns = Cooldowns(None, timeout=0.1)
    assert cooldowns.failed(T, POLICY, retry_after=10**9) == MAX_RETRY_AFTER


async def test_a_cooldown_reaches_another_replica_through_redis(client: aioredis.Redis) -> None:
    one = Cooldowns(client, timeout=1.0)
    two = Cooldowns(client, timeout=1.0)
    one.failed(T, POLICY, retry_after=20)
    await one.sync()
    assert await client.hexists(COOLDOWNS_KEY, T)
    await two.sync()
    assert 19 < two.frees_at(T, time.time()) - time.time() <= 20


async def test_redis_away_or_hung_keeps_cooldowns_local_and_shares_them_later(
    server: LocalRedis, client: aioredis.Redis
) -> None:
    cooldowns = Cooldowns(client, timeout=0.2)
    server.freeze()
    try:
        started = time.monotonic()
        cooldowns.failed(T, POLICY, retry_after=20)
        await cooldowns.sync()  # bounded by its timeout, and nothing raised
        assert time.monotonic() - started < 1.0
        assert cooldowns.frees_at(T, time.time()) > time.time()  # still cooling, locally
    finally:
        server.thaw()
    fresh = aioredis.Redis.from_url(server.url, socket_timeout=5)
    try:
        shared = Cooldowns(fresh, timeout=1.0)
        await cooldowns.sync()  # the one that failed to be shared is written now
        await shared.sync()
        assert shared.frees_at(T, time.time()) > time.time()
    finally:
        await fresh.aclose()
