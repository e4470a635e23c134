"""Gateway keys, tenants, model rules, rate limits and budgets, across replicas."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from multidict import CIMultiDict

from llm_gateway_fakes.openai import FakeOpenAI
from llm_gateway_proxy.keys import KeyRecord, Limits, hash_key, new_key, new_key_id
from llm_gateway_proxy.keystore import KeyStore
from tests.conftest import ProxyFactory
from tests.support.events import all_events, event_for
from tests.support.servers import free_port
from tests.support.services import BIN

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}]}


def record(key: str, **fields: object) -> KeyRecord:
    values: dict[str, object] = {"id": new_key_id(), "key_hash": hash_key(key), "name": "test",
                                 "tenant": "team-a", "created_at": time.time()}  # fmt: skip
    values.update(fields)
    return KeyRecord(**values)  # type: ignore[arg-type]


def keys_file(tmp_path: Path, *records: KeyRecord) -> str:
    path = tmp_path / "keys.json"
    path.write_bytes(msgspec.json.encode(list(records)))
    return str(path)


Answer = tuple[int, dict[str, object], CIMultiDict[str]]


async def chat(http: aiohttp.ClientSession, base_url: str, key: str | None, *,
               header: str = "Authorization", body: dict[str, object] | None = None,
               tenant: str | None = None) -> Answer:  # fmt: skip
    headers = {}
    if key is not None:
        headers[header] = f"Bearer {key}" if header == "Authorization" else key
    if tenant is not None:
        headers["X-LLM-Tenant"] = tenant
    async with http.post(f"{base_url}/v1/chat/completions", json=body or CHAT,
                         headers=headers) as response:  # fmt: skip
        if response.content_type == "text/event-stream":
            await response.read()
            return response.status, {}, CIMultiDict(response.headers)
        return response.status, await response.json(), CIMultiDict(response.headers)


async def test_static_keys_authenticate_and_decide_tenant_and_models(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis, tmp_path: Path,
) -> None:  # fmt: skip
    good, expired, revoked = new_key(), new_key(), new_key()
    path = keys_file(
        tmp_path,
        record(good, models=("gpt-4o*",)),
        record(expired, expires_at=time.time() - 1),
        record(revoked, active=False),
    )
    proxy = proxy_factory(AUTH_MODE="keys", KEYS_FILE=path)
    url = proxy.base_url

    for key, why in ((None, "didn't provide"), ("gw-nope", "Incorrect"), (expired, "revoked"),
                     (revoked, "revoked")):  # fmt: skip
        status, body, _ = await chat(http, url, key)
        assert status == 401, why
        assert body["error"]["type"] == "authentication_error"  # type: ignore[index]
        assert why in body["error"]["message"]  # type: ignore[index]
    assert upstream.received == [], "unauthenticated requests must never reach the provider"

    for header in ("Authorization", "api-key", "x-api-key"):
        status, _, headers = await chat(http, url, good, header=header)
        assert status == 200, header
    event = await event_for(redis, headers["X-LLM-Request-ID"])
    assert event.key_id is not None and event.key_id.startswith("key_")
    assert event.tenant == "team-a"

    status, body, _ = await chat(http, url, good, body={**CHAT, "model": "o3-mini"})
    assert status == 403
    assert body["error"]["code"] == "model_not_allowed"  # type: ignore[index]
    assert body["error"]["param"] == "model"  # type: ignore[index]

    status, _, headers = await chat(http, url, good, tenant="team-a/search")
    assert status == 200
    assert (await event_for(redis, headers["X-LLM-Request-ID"])).tenant == "team-a/search"
    status, body, _ = await chat(http, url, good, tenant="team-b")
    assert status == 403
    assert body["error"]["code"] == "tenant_not_allowed"  # type: ignore[index]

    stored = repr(await redis.xrange("llm-gateway:events", "-", "+"))
    for key in (good, expired, revoked):
        assert key not in stored
        assert key not in proxy.log_text()


async def test_a_60_per_minute_key_gets_60_across_three_replicas(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis_url: str,
) -> None:  # fmt: skip
    if time.time() % 60 > 45:  # fixed one-minute windows: keep the burst inside one
        await asyncio.sleep(61 - time.time() % 60)
    key = new_key()
    client = aioredis.Redis.from_url(redis_url)
    await KeyStore(client, cache_ttl=0, timeout=2).save(
        record(key, limits=Limits(requests_per_minute=60))
    )
    await client.aclose()
    # A cold burst of 30 requests per replica on a busy test machine can keep Redis calls past
    # the default 0.1 s; that is the breaker's business (test_redis_trouble.py), not this test's.
    replicas = [proxy_factory(AUTH_MODE="keys", MANAGEMENT_TOKEN="t", REQUEST_REDIS_TIMEOUT="2")
                for _ in range(3)]  # fmt: skip

    async def one(i: int) -> tuple[int, CIMultiDict[str]]:
        status, _, headers = await chat(http, replicas[i % 3].base_url, key)
        return status, headers

    results = await asyncio.gather(*(one(i) for i in range(90)))
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 60
    assert statuses.count(429) == 30
    limited = next(headers for status, headers in results if status == 429)
    assert int(limited["Retry-After"]) >= 1
    assert limited["x-ratelimit-limit-requests"] == "60"
    assert limited["x-ratelimit-remaining-requests"] == "0"


async def test_revocation_reaches_every_replica_within_the_cache_ttl(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis_url: str,
) -> None:  # fmt: skip
    key = new_key()
    client = aioredis.Redis.from_url(redis_url)
    store = KeyStore(client, cache_ttl=0, timeout=2)
    saved = record(key)
    await store.save(saved)
    replicas = [proxy_factory(AUTH_MODE="keys", MANAGEMENT_TOKEN="t", KEY_CACHE_TTL="0.5")
                for _ in range(3)]  # fmt: skip
    for replica in replicas:
        assert (await chat(http, replica.base_url, key))[0] == 200
    await store.save(msgspec.structs.replace(saved, active=False))
    revoked_at = time.monotonic()
    pending = set(range(3))
    while pending and time.monotonic() - revoked_at < 10:
        for i in list(pending):
            if (await chat(http, replicas[i].base_url, key))[0] == 401:
                pending.discard(i)
        await asyncio.sleep(0.05)
    assert not pending
    assert time.monotonic() - revoked_at < 0.5 + 2.0  # the TTL plus generous slack
    await client.aclose()


async def test_token_budget_runs_out_with_a_clear_code(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis_url: str,
) -> None:  # fmt: skip
    key = new_key()
    client = aioredis.Redis.from_url(redis_url)
    await KeyStore(client, cache_ttl=0, timeout=2).save(
        record(key, limits=Limits(budget_tokens=30, budget_period="daily"))
    )
    await client.aclose()
    proxy = proxy_factory(AUTH_MODE="keys", MANAGEMENT_TOKEN="t")
    spent = 0
    for _ in range(40):
        status, body, headers = await chat(
            http, proxy.base_url, key, body={**CHAT, "stream": False}
        )
        if status == 429:
            break
        assert status == 200
        spent += body["usage"]["total_tokens"]  # type: ignore[index]
        await asyncio.sleep(0.1)  # tokens are charged with the events, after the request
    assert status == 429
    assert body["error"]["code"] == "budget_exceeded"  # type: ignore[index]
    assert int(headers["Retry-After"]) >= 1
    assert 30 <= spent < 30 + 2 * 13, "admitted past the budget only by in-flight requests"


@pytest.mark.parametrize(("fail_open", "status"), [("true", 200), ("false", 503)])
async def test_rate_limits_fail_open_or_closed_when_redis_is_away(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    tmp_path: Path, fail_open: str, status: int,
) -> None:  # fmt: skip
    key = new_key()
    path = keys_file(tmp_path, record(key, limits=Limits(requests_per_minute=5)))
    proxy = proxy_factory(AUTH_MODE="keys", KEYS_FILE=path, RATE_LIMIT_FAIL_OPEN=fail_open,
                          REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")  # fmt: skip
    got, body, _ = await chat(http, proxy.base_url, key)
    assert got == status
    if status == 503:
        assert body["error"]["code"] == "auth_unavailable"  # type: ignore[index]
    assert "rate_limits_unavailable" in proxy.log_text()


def test_the_proxy_refuses_to_start_without_any_way_to_have_keys() -> None:
    env = {"PATH": os.environ.get("PATH", ""), "AUTH_MODE": "keys"}
    result = subprocess.run([str(BIN / "llm-gateway-proxy")], env=env, capture_output=True,
                            timeout=30, check=False)  # fmt: skip
    assert result.returncode == 2
    assert b"AUTH_MODE=keys needs KEYS_FILE" in result.stderr


async def test_events_of_authenticated_requests_carry_the_key_id_only(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis, tmp_path: Path,
) -> None:  # fmt: skip
    key = new_key()
    saved = record(key)
    proxy = proxy_factory(AUTH_MODE="keys", KEYS_FILE=keys_file(tmp_path, saved))
    _, _, headers = await chat(http, proxy.base_url, key, body={**CHAT, "stream": True})
    event = await event_for(redis, headers["X-LLM-Request-ID"])
    assert event.key_id == saved.id
    assert all(key not in repr(e) for e in await all_events(redis))


async def test_key_store_writes_are_compare_and_set(redis_url: str) -> None:
    """A revoke racing a rotate must not bring the old key back; a stale update is refused."""
    from llm_gateway_proxy.keystore import KeyStoreConflict  # noqa: PLC0415

    client = aioredis.Redis.from_url(redis_url)
    store = KeyStore(client, cache_ttl=0, timeout=2)
    old_key = new_key()
    original = record(old_key)
    await store.save(original)
    rotated = await store.replace_hash(
        original, msgspec.structs.replace(original, key_hash=hash_key(new_key()))
    )
    with pytest.raises(KeyStoreConflict):  # a revoke that read the record before the rotate
        await store.save(msgspec.structs.replace(original, active=False), previous=original)
    assert await store.lookup(original.key_hash) is None, "the rotated-away key came back"
    current = await store.get(original.id)
    assert current == rotated
    await store.save(msgspec.structs.replace(rotated, name="renamed"), previous=rotated)
    with pytest.raises(KeyStoreConflict):  # a second writer still holding the old version
        await store.save(msgspec.structs.replace(rotated, name="other"), previous=rotated)
    assert (await store.get(original.id)).name == "renamed"  # type: ignore[union-attr]
    await client.aclose()


async def test_tenant_limits_hold_over_all_of_the_tenants_keys(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    if time.time() % 60 > 50:  # one fixed window for the whole burst
        await asyncio.sleep(61 - time.time() % 60)
    token = "mgmt-token-for-tenant-limits"
    proxy = proxy_factory(AUTH_MODE="keys", MANAGEMENT_TOKEN=token)
    auth = {"Authorization": f"Bearer {token}"}
    tenant = f"tenant-{new_key_id()}"
    async with http.put(f"{proxy.manage_url}/manage/tenants/{tenant}/limits", headers=auth,
                        json={"requests_per_minute": 6}) as response:  # fmt: skip
        assert response.status == 200
        assert (await response.json())["limits"]["requests_per_minute"] == 6
    keys = []
    for name in ("a", "b"):
        async with http.post(f"{proxy.manage_url}/manage/keys", headers=auth,
                             json={"name": name, "tenant": tenant}) as response:  # fmt: skip
            assert response.status == 201
            keys.append((await response.json())["key"])
    statuses = [(await chat(http, proxy.base_url, keys[i % 2]))[0] for i in range(10)]
    assert statuses.count(200) == 6
    assert statuses.count(429) == 4
    _, body, _ = await chat(http, proxy.base_url, keys[0])
    assert f"tenant '{tenant}'" in body["error"]["message"]  # type: ignore[index]
    async with http.delete(f"{proxy.manage_url}/manage/tenants/{tenant}/limits",
                           headers=auth) as response:  # fmt: skip
        assert (await response.json())["set"] is False
