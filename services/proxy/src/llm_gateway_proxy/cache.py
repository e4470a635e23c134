"""The exact response cache (docs/cache.md): identical requests answered from Redis.

    decide(route, key, tenant, Cache-Control)   -> Decision, or None: no cache for the request
    cache_key(api, body, route version, tenant) -> the Redis key (sha256 of the canonical request)
    ResponseCache.lookup(...)                   -> a Lookup: the entry to replay, or a miss that
                                                   records what the client is sent
    ResponseCache.settle(lookup, exchange, event) -> stores a complete answer, after the response

Off unless turned on: by the model's `cache: {ttl}` in MODELS_FILE, a key's or tenant's
`cache_ttl` limit (0: off, and a request cannot turn it on), or the request's `Cache-Control:
max-age=N` (accept entries up to N s old; with nothing configured, also cache with that TTL).
`no-cache` skips the lookup and stores the fresh answer; `no-store` neither reads nor writes.

The key hashes the request body as JSON with sorted keys, without `user`, `stream_options` (and
the Messages API's `metadata`, its user), with the API's path, the version of the model's route
(its entry and providers as configured: a changed route is a new cache) and the tenant (or `*`
for a model marked `cache: {scope: global}`). What is stored is what the client was sent: a
whole 200 answer as its exact body, a stream as its exact SSE event sequence, only when the
request succeeded (no error, no disconnect, not cut), every answer finished for a reason other
than its length or a content filter, the provider reported its usage, and it fits
CACHE_MAX_ENTRY_BYTES. A stream stored without the usage chunk (the client did not ask for one)
is a miss for a client that asks; one stored with it is replayed without it for a client that
did not ask.

Concurrent identical requests on one replica make one upstream call: the first is the leader,
the others wait for its answer (up to CACHE_WAIT seconds) and replay it, or go upstream
themselves if it was not stored. Across replicas each replica's first request goes upstream.

Redis is reached through a RedisGate (timeout and breaker): a lookup that fails or times out is
a miss; a store that fails is dropped; neither fails the request. Stores run after the response.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Literal, NamedTuple

import msgspec
import orjson
import structlog

from llm_gateway_common.events import UsageEvent
from llm_gateway_proxy.apis import CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES, Api
from llm_gateway_proxy.downstream import Downstream
from llm_gateway_proxy.exchange import Exchange
from llm_gateway_proxy.modelconfig import ModelTable, RouteCache
from llm_gateway_proxy.providers.anthropic_stream import SSEOverflow, SSEParser
from llm_gateway_proxy.redisgate import RedisGate, RedisUnavailable
from llm_gateway_proxy.replies import SSE_HEADERS
from llm_gateway_proxy.streaming import SSETap
from llm_gateway_proxy.usage import Usage

log = structlog.get_logger("llm_gateway.proxy")

PREFIX = "llm-gateway:cache:"
CACHED_APIS = frozenset({CHAT.path, COMPLETIONS.path, EMBEDDINGS.path, MESSAGES.path})
NAME = b"llm-gateway"  # the cache's name in Cache-Status (RFC 9211)
_IGNORED = frozenset({"user", "stream_options"})  # fields that do not change the answer
_IGNORED_MESSAGES = frozenset({"metadata"})  # the Messages API's user (metadata.user_id)
_CUT_FINISHES = frozenset({"length", "content_filter", "max_tokens", "refusal"})
_MAX_AGE_LIMIT = 365 * 86_400
_FORMAT = 1  # of the stored entry; another is a miss


class Directives(NamedTuple):
    """What the request's Cache-Control says about the cache."""

    max_age: int | None
    no_cache: bool
    no_store: bool


def directives(headers: Sequence[tuple[bytes, bytes]]) -> Directives | None:
    """The request's Cache-Control directives (None: it sent none). Unknown directives and
    malformed values are ignored, as HTTP caches do."""
    values = [value for name, value in headers if name == b"cache-control"]
    if not values:
        return None
    max_age: int | None = None
    no_cache = no_store = False
    for part in b",".join(values).split(b","):
        name, _, argument = part.strip().partition(b"=")
        name = name.strip().lower()
        if name == b"no-cache":
            no_cache = True
        elif name == b"no-store":
            no_store = True
        elif name == b"max-age":
            text = argument.strip().strip(b'"')
            if text.isdigit():
                max_age = min(int(text), _MAX_AGE_LIMIT)
    return Directives(max_age, no_cache, no_store)


class Decision(NamedTuple):
    read: bool  # look the request up
    write: bool  # store its answer
    ttl: int  # seconds an entry lives
    max_age: int | None  # the oldest entry, in seconds, the request accepts (None: any)
    scope: Literal["tenant", "global"]


def decide(
    route: RouteCache | None,
    key_ttl: int | None,
    tenant_ttl: int | None,
    asked: Directives | None,
) -> Decision | None:
    """Whether and how the request uses the cache; None: not at all. The key's setting wins over
    the tenant's, which wins over the model's; a 0 there turns it off for good."""
    configured = key_ttl if key_ttl is not None else tenant_ttl
    if configured is None and route is not None:
        configured = route.ttl
    if configured == 0:
        return None
    scope = route.scope if route is not None else "tenant"
    if asked is not None and asked.no_store:
        return Decision(read=False, write=False, ttl=0, max_age=None, scope=scope)
    ttl = configured or (asked.max_age if asked is not None else None)
    if not ttl:
        return None
    return Decision(
        read=not (asked is not None and asked.no_cache), write=True, ttl=ttl,
        max_age=None if asked is None else asked.max_age, scope=scope,
    )  # fmt: skip


def cache_key(api: Api, body: bytes, route_version: str, tenant: str | None) -> str:
    """The Redis key of a request: its canonical JSON, API, route version and tenant hashed."""
    request = orjson.loads(body)
    ignored = _IGNORED | _IGNORED_MESSAGES if api is MESSAGES else _IGNORED
    canonical = orjson.dumps(
        {k: v for k, v in request.items() if k not in ignored}, option=orjson.OPT_SORT_KEYS
    )
    digest = hashlib.sha256()
    for part in (api.path.encode(), route_version.encode(), (tenant or "*").encode()):
        digest.update(part)
        digest.update(b"\0")
    digest.update(canonical)
    return PREFIX + digest.hexdigest()


def route_versions(table: ModelTable) -> dict[str, str]:
    """A version per model entry: its route and the providers of its targets, as configured
    (the provider keys are never part of it, only the names of their variables)."""
    versions = {}
    for name, route in table.file.models.items():
        providers = {t.provider: table.file.providers[t.provider] for t in route.targets}
        encoded = msgspec.json.encode([name, route, providers])
        versions[name] = hashlib.sha256(encoded).hexdigest()[:16]
    return versions


class Entry(msgspec.Struct, frozen=True, array_like=True):
    """A stored answer: what the client was sent, and the usage and price it had."""

    format: int
    created: float
    content_type: str
    body: bytes
    stream: bool
    usage_chunk: bool  # a stream with the usage-only chunk (the client had asked for usage)
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cache_write_tokens: int
    cost_usd: str | None
    provider: str
    provider_name: str | None
    upstream_model: str | None
    response_model: str | None

    def age(self, now: float | None = None) -> int:
        return max(0, int((now or time.time()) - self.created))

    def replayed(self, *, include_usage: bool) -> list[bytes]:
        """The body as the client is sent it: a whole answer in one piece, a stream event by
        event (without the usage chunk for a client that did not ask for it)."""
        if not self.stream:
            return [self.body]
        body = self.body
        if self.usage_chunk and not include_usage:
            tap = SSETap(strip_usage_chunk=True)
            body = tap.feed(body) + tap.flush()
        return [event + b"\n\n" for event in body.split(b"\n\n") if event]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Entry)


class Recording:
    """What a client is sent on a miss, kept (up to `limit` bytes) to be stored."""

    __slots__ = ("content_type", "limit", "over", "parts", "size", "status")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.over = False
        self.status = 0
        self.content_type = ""

    def started(self, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self.status = status
        for name, value in headers:
            if name == b"content-type":
                self.content_type = value.decode("latin-1")

    def add(self, data: bytes) -> None:
        if self.over or not data:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.over = True
            self.parts.clear()
        else:
            self.parts.append(data)

    def body(self) -> bytes:
        return b"".join(self.parts)


class Lookup:
    """One request's use of the cache: its key and decision, and the entry it replays (a hit)
    or the recording of what it is sent (a miss that may be stored)."""

    __slots__ = ("decision", "entry", "include_usage", "key", "leader", "recording", "status")

    def __init__(self, key: str, decision: Decision) -> None:
        self.key = key
        self.decision = decision
        self.include_usage = False  # the client asked for a stream's usage chunk
        self.entry: Entry | None = None
        self.recording: Recording | None = None
        self.leader: asyncio.Future[Entry | None] | None = None  # set: the others wait on it
        self.status: Literal["hit", "miss", "bypass"] = "miss"

    @property
    def header(self) -> bytes:
        """The response's Cache-Status (RFC 9211)."""
        if self.status == "hit":
            return NAME + b"; hit"
        if self.status == "bypass" or not self.decision.read:
            return NAME + b"; fwd=request"  # the request's no-cache / no-store
        return NAME + b"; fwd=miss"


class ResponseCache:
    """Entries in Redis under PREFIX, each with its TTL; one upstream call per key at a time on
    this replica."""

    def __init__(self, gate: RedisGate, table: ModelTable, *, max_entry_bytes: int,
                 wait: float, owns_gate: bool = False) -> None:  # fmt: skip
        self.gate = gate
        self._owns_gate = owns_gate  # a Redis of the cache's own (CACHE_REDIS_URL): closed here
        self.max_entry_bytes = max_entry_bytes
        self.wait = wait
        self.versions = route_versions(table)
        self.any_route = any(route.cache is not None for route in table.file.models.values())
        self._table = table
        self._flights: dict[str, asyncio.Future[Entry | None]] = {}
        self._stores: set[asyncio.Task[None]] = set()

    def route_of(self, model: str | None) -> tuple[str, RouteCache | None] | None:
        """(the model's entry, its cache setting); None for a name nothing routes."""
        named = None if model is None else self._table.named_route(model)
        return None if named is None else (named[0], named[1].cache)

    def plan(
        self, api: Api | None, model: str | None, body: bytes, *, tenant: str,
        key_ttl: int | None, tenant_ttl: int | None, headers: Sequence[tuple[bytes, bytes]],
    ) -> Lookup | None:  # fmt: skip
        """The request's Lookup, before any Redis call; None: the cache has nothing to do."""
        if api is None or api.path not in CACHED_APIS:
            return None
        asked = directives(headers)
        if asked is None and key_ttl is None and tenant_ttl is None and not self.any_route:
            return None  # the usual case: nothing turns the cache on
        named = self.route_of(model)
        if named is None:
            return None
        entry_name, route = named
        decision = decide(route, key_ttl, tenant_ttl, asked)
        if decision is None:
            return None
        scope = None if decision.scope == "global" else tenant
        lookup = Lookup(cache_key(api, body, self.versions[entry_name], scope), decision)
        if not decision.read and not decision.write:
            lookup.status = "bypass"
        return lookup

    async def lookup(self, lookup: Lookup, *, include_usage: bool) -> None:
        """Find the entry to replay (sets `lookup.entry`), else make the request the one that
        goes upstream for its key (or wait for the one already going, and replay its answer).
        The first request for a key leads before it awaits anything, so that the identical
        requests arriving while it looks in Redis wait for it rather than all going upstream."""
        decision = lookup.decision
        lookup.include_usage = include_usage
        flight = self._flights.get(lookup.key) if decision.read else None
        if flight is not None:
            try:
                entry = await asyncio.wait_for(asyncio.shield(flight), self.wait)
            except TimeoutError:
                entry = None
            if entry is not None and _usable(entry, decision, include_usage):
                lookup.entry, lookup.status = entry, "hit"
                return
        if decision.write and lookup.key not in self._flights:
            lookup.leader = self._flights[lookup.key] = asyncio.get_running_loop().create_future()
        if decision.read and flight is None:
            entry = await self._read(lookup.key)
            if entry is not None and _usable(entry, decision, include_usage):
                lookup.entry, lookup.status = entry, "hit"
                self._release(lookup, entry)  # those that came meanwhile replay it too
                return
        if decision.write:
            lookup.recording = Recording(self.max_entry_bytes)

    def settle(self, lookup: Lookup, stored: Entry | None) -> None:
        """After the response: store the entry (off the request path) and hand it to the
        requests waiting for it."""
        self._release(lookup, stored)
        if stored is not None:
            task = asyncio.create_task(self._write(lookup.key, stored, lookup.decision.ttl))
            self._stores.add(task)
            task.add_done_callback(self._stores.discard)

    @staticmethod
    def storable(lookup: Lookup, *, succeeded: bool) -> bool:
        """Whether a miss's answer may be stored: the request `succeeded` (status 200, outcome
        ok, the client still there, the provider's usage known), all of it was recorded, and it
        finished for a reason other than its length or a content filter."""
        recording = lookup.recording
        if recording is None or not succeeded or recording.over or recording.status != 200:
            return False
        return _finished(recording.body(), stream=_is_stream(recording))

    @staticmethod
    def entry(lookup: Lookup, event: UsageEvent) -> Entry:
        """The entry of a storable miss, with its event's usage and price."""
        recording = lookup.recording
        assert recording is not None
        stream = _is_stream(recording)
        return Entry(
            format=_FORMAT, created=time.time(), content_type=recording.content_type,
            body=recording.body(), stream=stream, usage_chunk=stream and lookup.include_usage,
            prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
            total_tokens=event.total_tokens, cached_tokens=event.cached_tokens,
            reasoning_tokens=event.reasoning_tokens, cache_write_tokens=event.cache_write_tokens,
            cost_usd=None if event.cost_usd is None else str(event.cost_usd),
            provider=event.provider, provider_name=event.provider_name,
            upstream_model=event.upstream_model, response_model=event.response_model,
        )  # fmt: skip

    def _release(self, lookup: Lookup, entry: Entry | None) -> None:
        """Hand the entry (None: go upstream yourselves) to the requests waiting on the key."""
        leader, lookup.leader = lookup.leader, None
        if leader is not None:
            self._flights.pop(lookup.key, None)
            if not leader.done():
                leader.set_result(entry)

    async def close(self) -> None:
        """At shutdown: let the stores under way finish (each bounded by the gate's timeout)."""
        if self._stores:
            await asyncio.wait(set(self._stores))
        if self._owns_gate:
            await self.gate.close()
            await self.gate.redis.aclose()

    async def _read(self, key: str) -> Entry | None:
        try:
            raw = await self.gate.read(self.gate.redis.get, key)
        except RedisUnavailable:
            return None  # a miss: the answer comes from upstream
        if not isinstance(raw, bytes):
            return None
        try:
            entry = _decoder.decode(raw)
        except msgspec.DecodeError:
            return None  # another version's entry, or damaged: a miss, overwritten
        return entry if entry.format == _FORMAT else None

    async def _write(self, key: str, entry: Entry, ttl: int) -> None:
        try:
            await self.gate.write(self.gate.redis.set, key, _encoder.encode(entry), ex=ttl)
        except RedisUnavailable as exc:
            log.info("cache_store_failed", reason=str(exc))


async def replay(
    entry: Entry,
    exchange: Exchange,
    downstream: Downstream,
    headers: list[tuple[bytes, bytes]],
    *,
    include_usage: bool,
) -> None:
    """Answer from the entry: its exact body (a stream event by event, as fast as the client
    reads), with `Age`; the exchange metered with the original answer's usage, nothing spent."""
    exchange.status = 200
    exchange.usage = Usage(entry.prompt_tokens, entry.completion_tokens, entry.total_tokens,
                           entry.cached_tokens, entry.reasoning_tokens,
                           entry.cache_write_tokens)  # fmt: skip
    exchange.provider = entry.provider
    exchange.provider_name = entry.provider_name
    exchange.upstream_model = entry.upstream_model
    exchange.response_model = entry.response_model
    exchange.saved_cost_usd = None if entry.cost_usd is None else Decimal(entry.cost_usd)
    pieces = entry.replayed(include_usage=include_usage)
    started = [(b"content-type", entry.content_type.encode("latin-1")),
               (b"age", str(entry.age()).encode()), (b"x-llm-attempts", b"0"),
               *headers]  # fmt: skip
    if entry.stream:
        started += SSE_HEADERS
    else:
        started.append((b"content-length", str(len(pieces[0])).encode()))
    await downstream.start(200, started, event_stream=entry.stream)
    exchange.mark_first_byte()
    for piece in pieces[:-1]:
        await downstream.body(piece, more=True)
    await downstream.body(pieces[-1] if pieces else b"", more=False)
    exchange.response_bytes = downstream.sent_bytes


def _is_stream(recording: Recording) -> bool:
    return recording.content_type.startswith("text/event-stream")


def _usable(entry: Entry, decision: Decision, include_usage: bool) -> bool:
    if decision.max_age is not None and entry.age() > decision.max_age:
        return False
    return not (entry.stream and include_usage and not entry.usage_chunk)


def _finished(body: bytes, *, stream: bool) -> bool:
    """Whether an answer ended for a reason worth replaying: not cut by its length or a
    content filter, and carrying no error."""
    payloads: list[Any] = []
    if stream:
        parser = SSEParser()
        try:
            events = parser.feed(body if body.endswith(b"\n\n") else body + b"\n\n")
        except SSEOverflow:
            return False
        for event in events:
            if event.name == "error":
                return False
            if event.data and event.data != b"[DONE]":
                try:
                    payloads.append(orjson.loads(event.data))
                except orjson.JSONDecodeError:
                    return False
    else:
        try:
            payloads.append(orjson.loads(body))
        except orjson.JSONDecodeError:
            return False
    return all(_payload_finished(payload) for payload in payloads)


def _payload_finished(payload: Any) -> bool:
    if not isinstance(payload, dict) or "error" in payload or payload.get("type") == "error":
        return False
    for choice in payload.get("choices") or ():
        if isinstance(choice, dict) and choice.get("finish_reason") in _CUT_FINISHES:
            return False
    reasons = [payload.get("stop_reason")]  # a Messages answer
    delta = payload.get("delta")
    if isinstance(delta, dict):  # a Messages stream's message_delta
        reasons.append(delta.get("stop_reason"))
    return not any(reason in _CUT_FINISHES for reason in reasons)
