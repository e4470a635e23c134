"""A sick Redis costs requests one REQUEST_REDIS_TIMEOUT per outage, not one per request: hung
(SIGSTOP), dead, or refusing writes (OOM, READONLY). Known keys are served from the cache,
admission follows RATE_LIMIT_FAIL_OPEN, and when Redis returns limits hold again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from llm_gateway_fakes.openai import FakeOpenAI
from llm_gateway_proxy.keys import KeyRecord, Limits, hash_key, new_key, new_key_id
from llm_gateway_proxy.keystore import KeyStore
from llm_gateway_proxy.redisgate import RedisGate, RedisUnavailable
from tests.conftest import ProxyFactory
from tests.support.servers import LocalRedis, free_port
from tests.support.services import ProxyProcess

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
TIMEOUT = 0.1  # REQUEST_REDIS_TIMEOUT in these tests
CACHE_TTL = 0.2  # KEY_CACHE_TTL: short, so that cached entries expire during the outage
SLACK = 0.4  # what a busy test machine may add to 40 requests, beyond their baseline


def key_record(key: str, tenant: str, **fields: object) -> KeyRecord:
    return KeyRecord(id=new_key_id(), key_hash=hash_key(key), name="t", tenant=tenant,
                     **fields)  # type: ignore[arg-type]  # fmt: skip


async def saved_key(client: aioredis.Redis, tenant: str, **fields: object) -> str:
    key = new_key()
    await KeyStore(client, cache_ttl=0, timeout=2).save(key_record(key, tenant, **fields))
    return key


@pytest.fixture
def proxies(proxy_factory: ProxyFactory) -> Iterator[ProxyFactory]:
    """Proxies stopped when the test ends: left running against a dead Redis, they would
    probe and retry through the rest of the session."""
    started: list[ProxyProcess] = []

    def start(**env: str) -> ProxyProcess:
        started.append(proxy_factory(**env))
        return started[-1]

    yield start
    for proxy in started:
        proxy.stop()


def start_proxy(proxies: ProxyFactory, server: LocalRedis, **env: str) -> ProxyProcess:
    return proxies(AUTH_MODE="keys", MANAGEMENT_TOKEN="t", REDIS_URL=server.url,
                         REQUEST_REDIS_TIMEOUT=str(TIMEOUT), KEY_CACHE_TTL=str(CACHE_TTL),
                         **env)  # fmt: skip


async def chat(http: aiohttp.ClientSession, proxy: ProxyProcess, key: str
               ) -> tuple[int, dict[str, object], float]:  # fmt: skip
    started = time.perf_counter()
    async with http.post(f"{proxy.base_url}/v1/chat/completions", json=CHAT,
                         headers={"Authorization": f"Bearer {key}"}) as response:  # fmt: skip
        body = await response.json()
        if response.status == 503:
            assert response.headers["Retry-After"] == "1"
        return response.status, body, time.perf_counter() - started


async def run(http: aiohttp.ClientSession, proxy: ProxyProcess, key: str, n: int
              ) -> tuple[list[int], float]:  # fmt: skip
    """`n` requests one after the other: their statuses and the seconds they took together."""
    statuses, total = [], 0.0
    for _ in range(n):
        status, body, took = await chat(http, proxy, key)
        if status == 503:
            assert body["error"]["code"] == "auth_unavailable"  # type: ignore[index]
        statuses.append(status)
        total += took
    return statuses, total


async def baseline(http: aiohttp.ClientSession, proxy: ProxyProcess, key: str) -> float:
    """Seconds per request with Redis healthy (the median of a few)."""
    times = sorted([(await chat(http, proxy, key))[2] for _ in range(9)])
    return times[4]


@pytest.mark.parametrize(
    ("trouble", "fail_open", "status"),
    [("hung", "true", 200), ("hung", "false", 503), ("dead", "true", 200), ("dead", "false", 503)],
)
async def test_an_outage_costs_one_timeout_not_one_per_request(
    proxies: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    server: LocalRedis, client: aioredis.Redis, trouble: str, fail_open: str, status: int,
) -> None:  # fmt: skip
    tenant = f"tenant-{new_key_id()}"
    await KeyStore(client, cache_ttl=0, timeout=2).set_tenant_limits(
        tenant, Limits(requests_per_minute=10_000)
    )
    key = await saved_key(client, tenant, limits=Limits(requests_per_minute=10_000))
    proxy = start_proxy(proxies, server, RATE_LIMIT_FAIL_OPEN=fail_open)
    per_request = await baseline(http, proxy, key)  # and the cache is warm
    if trouble == "hung":
        server.freeze()
    else:
        server.stop()
    try:
        await asyncio.sleep(CACHE_TTL * 1.5)  # every cached entry has expired
        statuses, took = await run(http, proxy, key, 40)
    finally:
        if trouble == "hung":
            server.thaw()
    assert statuses == [status] * 40
    added = took - 40 * per_request
    assert added < TIMEOUT + SLACK, f"Redis {trouble} added {added:.3f} s to 40 requests"
    logged = [line["event"] for line in proxy.log_lines()]
    assert logged.count("redis_circuit_opened") == 1
    assert logged.count("rate_limits_unavailable") == 1


@pytest.mark.parametrize("refusal", ["OOM", "READONLY"])
async def test_a_redis_refusing_writes_is_not_asked_per_request_and_keys_still_work(
    proxies: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    server: LocalRedis, client: aioredis.Redis, refusal: str,
) -> None:  # fmt: skip
    tenant = f"tenant-{new_key_id()}"
    key = await saved_key(client, tenant, limits=Limits(requests_per_minute=10_000))
    unseen = await saved_key(client, tenant)  # first used while writes are refused
    proxy = start_proxy(proxies, server)
    assert (await chat(http, proxy, key))[0] == 200
    if refusal == "OOM":
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", 1)
    else:  # a failover made this node a replica (of a master that is not there)
        await client.execute_command("REPLICAOF", "127.0.0.1", free_port())
    try:
        await client.config_resetstat()
        statuses, _ = await run(http, proxy, key, 40)
        assert statuses == [200] * 40
        assert (await chat(http, proxy, unseen))[0] == 200, "reads work: a new key is looked up"
        stats = await client.info("commandstats")
    finally:
        if refusal == "OOM":
            await client.config_set("maxmemory", 0)
        else:
            await client.execute_command("REPLICAOF", "NO", "ONE")
    # Only the admission script INCRs (the publisher's script INCRBYs): one refused INCR per
    # admission that reached Redis.
    incr = stats.get("cmdstat_incr", {})
    asked = sum(incr.get(n, 0) for n in ("calls", "rejected_calls", "failed_calls"))
    assert asked <= 1, f"admission was sent {asked} times to a refusing Redis"
    assert stats["cmdstat_get"]["calls"] >= 1, "key lookups must still reach Redis"


async def test_when_redis_returns_the_breaker_closes_and_limits_hold_again(
    proxies: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    server: LocalRedis, client: aioredis.Redis,
) -> None:  # fmt: skip
    tenant = f"tenant-{new_key_id()}"
    key = await saved_key(client, tenant, limits=Limits(requests_per_minute=10_000))
    proxy = start_proxy(proxies, server)
    assert (await chat(http, proxy, key))[0] == 200
    server.freeze()
    try:
        statuses, _ = await run(http, proxy, key, 5)
        assert statuses == [200] * 5
        async with http.get(f"{proxy.manage_url}/health") as response:
            breaker = (await response.json())["request_redis"]
        assert (breaker["breaker"], breaker["opened"]) == ("open", 1)
    finally:
        server.thaw()
    await KeyStore(client, cache_ttl=0, timeout=2).set_tenant_limits(
        tenant, Limits(requests_per_minute=1)
    )
    give_up = time.monotonic() + 5
    while (await chat(http, proxy, key))[0] != 429:
        assert time.monotonic() < give_up, "limits not enforced after Redis returned"
        await asyncio.sleep(0.05)
    logged = [line["event"] for line in proxy.log_lines()]
    assert logged.count("redis_circuit_opened") == 1
    assert logged.count("redis_circuit_closed") == 1

    server.freeze()  # a second outage is logged again, once
    try:
        statuses, _ = await run(http, proxy, key, 3)
        assert statuses == [200] * 3
    finally:
        server.thaw()
    logged = [line["event"] for line in proxy.log_lines()]
    assert logged.count("redis_circuit_opened") == 2
    assert logged.count("rate_limits_unavailable") == 2


async def test_fail_closed_refuses_when_the_tenants_limits_are_unknown(
    proxies: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A key without limits of its own, from KEYS_FILE, and Redis away from the start: whether
    its tenant has limits cannot be known, so RATE_LIMIT_FAIL_OPEN=false must refuse."""
    key = new_key()
    path = tmp_path / "keys.json"
    path.write_bytes(msgspec.json.encode([key_record(key, "team-a")]))
    url = f"redis://127.0.0.1:{free_port()}/0"
    closed = proxies(AUTH_MODE="keys", KEYS_FILE=str(path), REDIS_URL=url,
                           RATE_LIMIT_FAIL_OPEN="false")  # fmt: skip
    opened = proxies(AUTH_MODE="keys", KEYS_FILE=str(path), REDIS_URL=url)
    statuses, _ = await run(http, closed, key, 3)
    assert statuses == [503] * 3
    statuses, _ = await run(http, opened, key, 3)
    assert statuses == [200] * 3
    assert upstream.received and len(upstream.received) == 3


async def test_a_refusal_the_probe_cannot_see_makes_the_probe_back_off(redis_url: str) -> None:
    """Each close is followed by the same refusal (as CROSSSLOT would be): the breaker must not
    flap, and ask Redis, every probe interval."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    gate = RedisGate(client, timeout=1, probe_interval=0.05)
    try:
        give_up = time.monotonic() + 2
        while time.monotonic() < give_up:
            with contextlib.suppress(RedisUnavailable):
                await gate.write(client.execute_command, "NO-SUCH-COMMAND")
            await asyncio.sleep(0.01)
        # Without backing off: one failed call per 0.05 s, about 40.
        assert 2 <= gate.failures <= 8, gate.failures
    finally:
        await gate.close()
        await client.aclose()


async def test_one_slow_call_while_others_are_answered_does_not_open_the_breaker(
    redis_url: str,
) -> None:
    """A BLPOP that outlives the timeout stands for one unlucky call; GETs on other
    connections are answered meanwhile, so Redis is not away. Alone, it is an outage."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    gate = RedisGate(client, timeout=0.2)
    empty = f"test:empty:{new_key_id()}"
    try:

        async def answered() -> None:
            for _ in range(5):
                await gate.read(client.get, empty)
                await asyncio.sleep(0.02)

        slow = gate.read(client.blpop, [empty], timeout=1)
        results = await asyncio.gather(slow, answered(), return_exceptions=True)
        assert isinstance(results[0], RedisUnavailable) and results[1] is None
        assert (gate.state, gate.failures, gate.opened) == ("closed", 1, 0)

        with pytest.raises(RedisUnavailable):
            await gate.read(client.blpop, [empty], timeout=1)
        assert (gate.state, gate.opened) == ("open", 1)
        with pytest.raises(RedisUnavailable):  # refused at once, not asked
            await gate.read(client.get, empty)
        assert gate.rejected == 1
    finally:
        await gate.close()
        await client.aclose()
