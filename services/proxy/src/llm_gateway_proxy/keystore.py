"""Where key records live: Redis (shared by every replica) and, for GitOps, a static file of
hashed keys; with a short per-process cache so a request rarely pays a Redis round trip.

Redis layout (prefix `llm-gateway:keys:`):
    hash:<sha256>          -> the record (JSON)   looked up on each cache miss
    id:<key id>            -> <sha256>            for the management API
    ids                    -> set of key ids
    tenant-limits:<tenant> -> Limits (JSON)       a tenant's limits over all its keys

Revocation takes effect everywhere within `cache_ttl` seconds (the cache is the only copy a
replica keeps). Unknown keys are cached too, so a client hammering with a bad key costs one
Redis lookup per `cache_ttl`. If Redis cannot answer, a cached record (even an expired one) is
used; a key never seen before is refused (503), since it cannot be checked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llm_gateway_proxy.keys import KeyRecord, Limits

PREFIX = "llm-gateway:keys:"
_MAX_CACHED = 50_000
_decode = msgspec.json.Decoder(KeyRecord).decode
_decode_limits = msgspec.json.Decoder(Limits).decode
_encode = msgspec.json.Encoder().encode


class KeyStoreUnavailable(Exception):
    """Redis could not be asked about a key the cache does not know."""


class KeyStoreConflict(Exception):
    """The record changed since it was read (a concurrent rotate, revoke or update)."""


# Compare-and-set writes, so concurrent management calls cannot resurrect a rotated key or
# lose an update: KEYS = hash:<new>, id:<id>, ids, hash:<old>; ARGV = record, new hash, id,
# expected current record JSON ('' = no check), old hash ('' = not a rotation).
_SAVE = """
local current = redis.call('GET', KEYS[2])
local expected_hash = ARGV[5] ~= '' and ARGV[5] or ARGV[2]
if current and current ~= expected_hash then return 0 end
if ARGV[4] ~= '' and redis.call('GET', KEYS[4] ~= '' and KEYS[4] or KEYS[1]) ~= ARGV[4] then
  return 0
end
if ARGV[5] ~= '' then redis.call('DEL', KEYS[4]) end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""


class KeyStore:
    def __init__(self, redis: aioredis.Redis, *, cache_ttl: float, timeout: float,
                 static: dict[str, KeyRecord] | None = None) -> None:  # fmt: skip
        self._redis = redis
        self._cache_ttl = cache_ttl
        self._timeout = timeout
        self._static = static or {}
        self._cache: dict[str, tuple[KeyRecord | None, float]] = {}
        self._save_script = redis.register_script(_SAVE)
        self._tenant_cache: dict[str, tuple[Limits | None, float]] = {}

    @property
    def has_static_keys(self) -> bool:
        return bool(self._static)

    async def lookup(self, key_hash: str) -> KeyRecord | None:
        """The record for a key hash, or None if no such key exists."""
        static = self._static.get(key_hash)
        if static is not None:
            return static
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            raw = await asyncio.wait_for(
                self._redis.get(PREFIX + "hash:" + key_hash), self._timeout
            )
        except (RedisError, OSError, TimeoutError) as exc:
            if cached is not None:
                return cached[0]  # stale, but Redis is away: keep serving known keys
            raise KeyStoreUnavailable(type(exc).__name__) from exc
        record = _decode(raw) if raw else None
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[key_hash] = (record, now + self._cache_ttl)
        return record

    async def tenant_limits(self, tenant: str) -> Limits | None:
        """The tenant's own limits (over all its keys), cached like key records. If Redis
        cannot answer, the last known limits are used, or none (admission will then meet the
        same outage and apply RATE_LIMIT_FAIL_OPEN)."""
        now = time.monotonic()
        cached = self._tenant_cache.get(tenant)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            raw = await self._call(self._redis.get(PREFIX + "tenant-limits:" + tenant))
        except (RedisError, OSError, TimeoutError):
            return cached[0] if cached is not None else None
        limits = _decode_limits(raw) if raw else None
        if len(self._tenant_cache) >= _MAX_CACHED:
            self._tenant_cache.clear()
        self._tenant_cache[tenant] = (limits, now + self._cache_ttl)
        return limits

    # --- management (not on the request path) ------------------------------------------------

    async def tenant_limits_now(self, tenant: str) -> Limits | None:
        """The tenant's limits as stored right now (no cache; for the management API)."""
        raw = await self._call(self._redis.get(PREFIX + "tenant-limits:" + tenant))
        return _decode_limits(raw) if raw else None

    async def set_tenant_limits(self, tenant: str, limits: Limits | None) -> None:
        """Set (or, with None, remove) a tenant's limits."""
        key = PREFIX + "tenant-limits:" + tenant
        if limits is None:
            await self._call(self._redis.delete(key))
        else:
            await self._call(self._redis.set(key, _encode(limits)))
        self._tenant_cache.pop(tenant, None)

    async def save(self, record: KeyRecord, *, previous: KeyRecord | None = None) -> None:
        """Create a record, or replace `previous` with it (KeyStoreConflict if it changed)."""
        await self._write(record, previous=previous, old_hash=None)

    async def get(self, key_id: str) -> KeyRecord | None:
        key_hash = await asyncio.wait_for(self._redis.get(PREFIX + "id:" + key_id), self._timeout)
        if not key_hash:
            return None
        raw = await asyncio.wait_for(
            self._redis.get(PREFIX + "hash:" + _text(key_hash)), self._timeout
        )
        return _decode(raw) if raw else None

    async def list(self) -> list[KeyRecord]:
        """Every stored key record, in id order (three round trips whatever the count)."""
        ids = sorted(_text(i) for i in await self._call(self._redis.smembers(PREFIX + "ids")))
        if not ids:
            return []
        hashes = await self._call(self._redis.mget([PREFIX + "id:" + i for i in ids]))
        present = [_text(h) for h in hashes if h]
        raws = await self._call(self._redis.mget([PREFIX + "hash:" + h for h in present]))
        return [_decode(raw) for raw in raws if raw]

    async def _call(self, command: Awaitable[Any]) -> Any:
        return await asyncio.wait_for(command, self._timeout)

    async def replace_hash(self, old: KeyRecord, new: KeyRecord) -> None:
        """Rotation: the same id and settings under a new key; the old key stops working."""
        await self._write(new, previous=old, old_hash=old.key_hash)
        self._cache.pop(old.key_hash, None)

    async def _write(
        self, record: KeyRecord, *, previous: KeyRecord | None, old_hash: str | None
    ) -> None:
        keys = [PREFIX + "hash:" + record.key_hash, PREFIX + "id:" + record.id, PREFIX + "ids",
                PREFIX + "hash:" + old_hash if old_hash else ""]  # fmt: skip
        args: list[bytes | str] = [
            _encode(record), record.key_hash, record.id,
            _encode(previous) if previous is not None else b"", old_hash or "",
        ]  # fmt: skip
        written = await asyncio.wait_for(self._save_script(keys=keys, args=args), self._timeout)
        if not written:
            raise KeyStoreConflict(record.id)
        self._cache.pop(record.key_hash, None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def load_static_keys(path: str) -> dict[str, KeyRecord]:
    """A JSON list of key records (with `key_hash`, never the key), e.g. mounted from a Secret."""
    records = msgspec.json.decode(Path(path).read_bytes(), type=list[KeyRecord])
    return {record.key_hash: record for record in records}
