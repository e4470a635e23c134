"""The key store: compare-and-set on a version (records from the previous schema included), and a
cache that a flood of unknown keys cannot empty of known ones."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from llm_gateway_proxy import keystore
from llm_gateway_proxy.keys import KeyRecord, hash_key, new_key, new_key_id
from llm_gateway_proxy.keystore import PREFIX, KeyStore, KeyStoreConflict
from llm_gateway_proxy.manage import revoke_key, rotate_key, update_key
from llm_gateway_proxy.manage_models import UpdateKey


def record(**fields: Any) -> KeyRecord:
    values: dict[str, Any] = {
        "id": new_key_id(), "key_hash": hash_key(new_key()), "name": "test", "tenant": "team-a",
        "created_at": time.time(),
    }  # fmt: skip
    return KeyRecord(**{**values, **fields})


async def store_raw(redis: aioredis.Redis, stored: dict[str, Any]) -> None:
    """A record as an earlier version of the gateway wrote it: its JSON, byte for byte."""
    await redis.set(PREFIX + "hash:" + stored["key_hash"], msgspec.json.encode(stored))
    await redis.set(PREFIX + "id:" + stored["id"], stored["key_hash"])
    await redis.sadd(PREFIX + "ids", stored["id"])


@pytest.fixture
async def store(redis: aioredis.Redis) -> KeyStore:
    return KeyStore(redis, cache_ttl=0, timeout=2)


async def test_records_of_the_previous_schema_can_be_updated_revoked_and_rotated(
    redis: aioredis.Redis, store: KeyStore
) -> None:
    """Written before `display` and `version` existed: no field may make them look changed."""
    key_id = new_key_id()
    old = {
        "id": key_id, "key_hash": hash_key(new_key()), "name": "legacy", "tenant": "team-a",
        "models": ["*"], "expires_at": None, "active": True,
        "limits": {"requests_per_minute": 5}, "metadata": {}, "created_at": 1700000000.0,
    }  # fmt: skip
    await store_raw(redis, old)

    updated = await update_key(store, key_id, UpdateKey(name="renamed"))
    assert (updated.name, updated.version) == ("renamed", 1)
    assert updated.limits.requests_per_minute == 5
    revoked = await revoke_key(store, key_id)
    assert (revoked.active, revoked.version) == (False, 2)
    rotated, key = await rotate_key(store, key_id)
    assert (rotated.key_hash, rotated.version) == (hash_key(key), 3)
    assert await store.get(key_id) == rotated
    assert await store.lookup(old["key_hash"]) is None, "the rotated-away key must be gone"


async def test_a_writer_holding_an_older_version_gets_a_conflict(
    redis: aioredis.Redis, store: KeyStore
) -> None:
    original = record()
    await store.save(original)
    first = await store.save(msgspec.structs.replace(original, name="first"), previous=original)
    assert first.version == 1
    with pytest.raises(KeyStoreConflict):  # read version 0 too, wrote after `first`
        await store.save(msgspec.structs.replace(original, name="second"), previous=original)
    with pytest.raises(KeyStoreConflict):  # a rotate racing the same way
        await store.replace_hash(original, msgspec.structs.replace(original, key_hash="f" * 64))
    assert await store.get(original.id) == first


class DictRedis:
    """Just enough of a Redis client for the cache policy: GET from a dict, counted."""

    def __init__(self, data: dict[str, bytes]) -> None:
        self.data = data
        self.gets = 0

    def register_script(self, script: str) -> object:
        return object()

    async def get(self, name: str) -> bytes | None:
        self.gets += 1
        return self.data.get(name)


async def test_a_flood_of_unknown_keys_does_not_evict_known_ones() -> None:
    """Past 50k entries the cache used to be cleared whole, valid keys with it."""
    valid = record()
    fake = DictRedis({PREFIX + "hash:" + valid.key_hash: msgspec.json.encode(valid)})
    store = KeyStore(fake, cache_ttl=3600, timeout=1)  # type: ignore[arg-type]
    assert await store.lookup(valid.key_hash) == valid
    for _ in range(60_001):  # more than both LRUs together hold
        assert await store.lookup(uuid.uuid4().hex) is None
    fake.data.clear()  # from now on only the cache can know the valid key
    gets = fake.gets
    assert await store.lookup(valid.key_hash) == valid
    assert fake.gets == gets, "the valid key was evicted and fetched again"


async def test_known_keys_are_evicted_least_recently_used_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keystore, "KNOWN_KEYS", 3)
    records = [record() for _ in range(4)]
    fake = DictRedis({PREFIX + "hash:" + r.key_hash: msgspec.json.encode(r) for r in records})
    store = KeyStore(fake, cache_ttl=3600, timeout=1)  # type: ignore[arg-type]
    first, second, third, fourth = records
    for r in (first, second, third, first, fourth):  # `first` used again: `second` is oldest
        await store.lookup(r.key_hash)
    gets = fake.gets
    for r in (first, third, fourth):
        await store.lookup(r.key_hash)
    assert fake.gets == gets, "recently used keys must still be cached"
    await store.lookup(second.key_hash)
    assert fake.gets == gets + 1, "the least recently used key should have gone"
