"""Where key records live: Redis (shared by every replica) and, for GitOps, a static file of
hashed keys; with a per-process cache so a request rarely pays a Redis round trip.

Redis layout (prefix `llm-gateway:keys:`):
    hash:<sha256>          -> the record (JSON)   looked up on each cache miss
    id:<key id>            -> <sha256>            for the management API
    ids                    -> set of key ids
    tenant-limits:<tenant> -> Limits (JSON)       a tenant's limits over all its keys

Revocation takes effect everywhere within `cache_ttl` seconds (the cache is the only copy a
replica keeps). The cache is two LRUs: known keys (`KNOWN_KEYS`) and, apart and smaller, unknown
ones (`UNKNOWN_KEYS`), so a client hammering with random keys costs one Redis lookup per key per
`cache_ttl` and evicts only other unknown keys, never a valid one.

Request-path lookups go through the RedisGate (timeout, circuit breaker). If Redis cannot
answer, a cached record or tenant's limits, even expired, is used for up to `max_stale` seconds
after it was fetched (`MAX_STALE`, 10 minutes); past that, or for a key never seen, the answer
is KeyStoreUnavailable (503): it cannot be checked. While the breaker is open none of this
awaits Redis, so expired entries cost nothing per request during an outage.

Writes are compare-and-set on the record's `version`, which every write increments; a record
written before `version` existed reads as version 0. Adding a field to KeyRecord therefore never
makes a stored record look changed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Generic, TypeVar

import msgspec
import redis.asyncio as aioredis

from llm_gateway_proxy.keys import KeyRecord, Limits
from llm_gateway_proxy.redisgate import RedisGate, RedisUnavailable

PREFIX = "llm-gateway:keys:"
KNOWN_KEYS = 50_000
UNKNOWN_KEYS = 10_000
TENANTS = 10_000
MAX_STALE = 600.0
_decode = msgspec.json.Decoder(KeyRecord).decode
_decode_limits = msgspec.json.Decoder(Limits).decode
_encode = msgspec.json.Encoder().encode

V = TypeVar("V")


class KeyStoreUnavailable(Exception):
    """Redis could not be asked about a key (or tenant) the cache cannot answer for."""


class KeyStoreConflict(Exception):
    """The record changed since it was read (a concurrent rotate, revoke or update)."""


# Compare-and-set writes, so concurrent management calls cannot resurrect a rotated key or
# lose an update. KEYS = hash:<new>, id:<id>, ids, hash:<old> ('' = not a rotation);
# ARGV = record JSON, new hash, id, expected version ('' = a new record), old hash ('' = not a
# rotation). The stored record's version is read with cjson: a record without one is version 0.
_SAVE = """
local current_hash = redis.call('GET', KEYS[2])
if ARGV[4] == '' then
  if current_hash and current_hash ~= ARGV[2] then return 0 end
else
  local expected_hash = ARGV[5] ~= '' and ARGV[5] or ARGV[2]
  if current_hash ~= expected_hash then return 0 end
  local current = redis.call('GET', KEYS[4] ~= '' and KEYS[4] or KEYS[1])
  if not current then return 0 end
  if tonumber(cjson.decode(current)['version'] or 0) ~= tonumber(ARGV[4]) then return 0 end
end
if ARGV[5] ~= '' then redis.call('DEL', KEYS[4]) end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""


class KeyStore:
    def __init__(self, redis: aioredis.Redis, *, cache_ttl: float, timeout: float,
                 static: dict[str, KeyRecord] | None = None, gate: RedisGate | None = None,
                 max_stale: float = MAX_STALE) -> None:  # fmt: skip
        """`gate` is the request path's RedisGate (shared with the RateLimiter); without one
        the store makes its own with `timeout`."""
        self._redis = redis
        self.gate = gate if gate is not None else RedisGate(redis, timeout=timeout)
        self._cache_ttl = cache_ttl
        self._max_stale = max(max_stale, cache_ttl)
        self._static = static or {}
        self._known: _LRU[KeyRecord] = _LRU(KNOWN_KEYS)
        self._unknown: _LRU[None] = _LRU(UNKNOWN_KEYS)
        self._tenants: _LRU[Limits | None] = _LRU(TENANTS)
        self._save_script = redis.register_script(_SAVE)

    @property
    def has_static_keys(self) -> bool:
        return bool(self._static)

    async def lookup(self, key_hash: str) -> KeyRecord | None:
        """The record for a key hash, or None if no such key exists; KeyStoreUnavailable if
        Redis cannot answer and the cache has nothing recent enough."""
        static = self._static.get(key_hash)
        if static is not None:
            return static
        now = time.monotonic()
        known = self._known.get(key_hash)
        if known is not None and now - known[1] < self._cache_ttl:
            return known[0]
        if known is None:
            unknown = self._unknown.get(key_hash)
            if unknown is not None and now - unknown[1] < self._cache_ttl:
                return None
        try:
            raw = await self.gate.read(self._redis.get, PREFIX + "hash:" + key_hash)
        except RedisUnavailable as exc:
            if known is not None and now - known[1] < self._max_stale:
                return known[0]  # stale, but Redis is away: keep serving known keys
            raise KeyStoreUnavailable(str(exc)) from exc
        if not raw:
            self._known.pop(key_hash)
            self._unknown.put(key_hash, None, now)
            return None
        record = _decode(raw)
        self._unknown.pop(key_hash)
        self._known.put(key_hash, record, now)
        return record

    async def tenant_limits(self, tenant: str) -> Limits | None:
        """The tenant's own limits (over all its keys; None: it has none), cached like key
        records; KeyStoreUnavailable when Redis cannot answer and nothing recent is cached:
        whether the tenant has limits is then unknown."""
        now = time.monotonic()
        cached = self._tenants.get(tenant)
        if cached is not None and now - cached[1] < self._cache_ttl:
            return cached[0]
        try:
            raw = await self.gate.read(self._redis.get, PREFIX + "tenant-limits:" + tenant)
        except RedisUnavailable as exc:
            if cached is not None and now - cached[1] < self._max_stale:
                return cached[0]
            raise KeyStoreUnavailable(str(exc)) from exc
        limits = _decode_limits(raw) if raw else None
        self._tenants.put(tenant, limits, now)
        return limits

    # --- management (not on the request path; RedisUnavailable when Redis fails) ----------

    async def tenant_limits_now(self, tenant: str) -> Limits | None:
        """The tenant's limits as stored right now (no cache; for the management API)."""
        raw = await self.gate.call(self._redis.get, PREFIX + "tenant-limits:" + tenant)
        return _decode_limits(raw) if raw else None

    async def set_tenant_limits(self, tenant: str, limits: Limits | None) -> None:
        """Set (or, with None, remove) a tenant's limits."""
        key = PREFIX + "tenant-limits:" + tenant
        if limits is None:
            await self.gate.call(self._redis.delete, key)
        else:
            await self.gate.call(self._redis.set, key, _encode(limits))
        self._tenants.pop(tenant)

    async def save(self, record: KeyRecord, *, previous: KeyRecord | None = None) -> KeyRecord:
        """Create a record, or replace `previous` with it (KeyStoreConflict if it changed
        meanwhile). Returns the record as stored (its `version` one past `previous`)."""
        return await self._write(record, previous=previous, old_hash=None)

    async def replace_hash(self, old: KeyRecord, new: KeyRecord) -> KeyRecord:
        """Rotation: the same id and settings under a new key; the old key stops working."""
        stored = await self._write(new, previous=old, old_hash=old.key_hash)
        self._known.pop(old.key_hash)
        return stored

    async def get(self, key_id: str) -> KeyRecord | None:
        key_hash = await self.gate.call(self._redis.get, PREFIX + "id:" + key_id)
        if not key_hash:
            return None
        raw = await self.gate.call(self._redis.get, PREFIX + "hash:" + _text(key_hash))
        return _decode(raw) if raw else None

    async def list(self) -> list[KeyRecord]:
        """Every stored key record, in id order (three round trips whatever the count)."""
        members = await self.gate.call(self._redis.smembers, PREFIX + "ids")
        ids = sorted(_text(i) for i in members)
        if not ids:
            return []
        hashes = await self.gate.call(self._redis.mget, [PREFIX + "id:" + i for i in ids])
        present = [_text(h) for h in hashes if h]
        raws = await self.gate.call(self._redis.mget, [PREFIX + "hash:" + h for h in present])
        return [_decode(raw) for raw in raws if raw]

    async def _write(
        self, record: KeyRecord, *, previous: KeyRecord | None, old_hash: str | None
    ) -> KeyRecord:
        if previous is not None:
            record = msgspec.structs.replace(record, version=previous.version + 1)
        keys = [PREFIX + "hash:" + record.key_hash, PREFIX + "id:" + record.id, PREFIX + "ids",
                PREFIX + "hash:" + old_hash if old_hash else ""]  # fmt: skip
        args: list[bytes | str] = [
            _encode(record), record.key_hash, record.id,
            str(previous.version) if previous is not None else "", old_hash or "",
        ]  # fmt: skip
        written = await self.gate.call(self._save_script, keys=keys, args=args)
        if not written:
            raise KeyStoreConflict(record.id)
        self._known.pop(record.key_hash)
        self._unknown.pop(record.key_hash)
        return record


class _LRU(Generic[V]):
    """A bounded map of `key -> (value, fetched at)`; past `size` the least recently used
    entry goes."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, tuple[V, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> tuple[V, float] | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: str, value: V, fetched_at: float) -> None:
        self._items[key] = (value, fetched_at)
        self._items.move_to_end(key)
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, key: str) -> None:
        self._items.pop(key, None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def load_static_keys(path: str) -> dict[str, KeyRecord]:
    """A JSON list of key records (with `key_hash`, never the key), e.g. mounted from a Secret."""
    records = msgspec.json.decode(Path(path).read_bytes(), type=list[KeyRecord])
    return {record.key_hash: record for record in records}
