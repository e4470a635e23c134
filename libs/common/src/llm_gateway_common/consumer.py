"""Consuming the event stream as one member of a consumer group, at least once.

    start ──▶ re-read own pending (id 0) ──▶ loop: reclaim idle entries of dead consumers
                                                   (XAUTOCLAIM), read new ones (XREADGROUP >)
    each batch ──▶ decode ──▶ sink ──▶ XACK (and XADD <stream>:dlq for the dead, in one MULTI)

An entry is acknowledged only after the sink took it. A sink that cannot take a batch now
raises `RetryLater`; the batch stays in hand, unacknowledged, and is retried with capped
backoff until it succeeds or the consumer is stopped (then it stays pending in Redis and is
re-read on restart, or reclaimed by another replica). Entries that cannot be decoded, and those
the sink refuses for good, go to the dead-letter stream with the reason, and are acknowledged.
Redis failures are retried the same way; a group lost with Redis's data is created again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import msgspec
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from llm_gateway_common.consumer_metrics import ConsumerMetrics
from llm_gateway_common.events import UsageEvent
from llm_gateway_common.streams import dead_letter_stream, event_from_fields

_RETRY_MIN = 0.1
_RETRY_MAX = 5.0


class Delivery(NamedTuple):
    entry_id: str
    event: UsageEvent


class RetryLater(Exception):
    """The sink cannot take this batch now (down, slow, rate-limited); keep it and retry."""

    def __init__(
        self, reason: str, *, after: float | None = None, events: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after = after
        self.events = events  # how many of the batch's events wait for the retry (None: all)


# A sink's answer: the entries it refuses for good, by entry id, with the reason.
Handler = Callable[[list[Delivery]], Awaitable[dict[str, str]]]


@dataclass(frozen=True, kw_only=True)
class ConsumerSettings:
    stream: str
    group: str
    consumer: str
    batch_size: int = 1000
    block_ms: int = 1000
    claim_idle_ms: int = 60_000
    claim_interval: float = 15.0
    timeout: float = 5.0
    progress_interval: float = 10.0
    # Seconds a partial batch waits to fill before it goes to the sink (0: send what one read
    # returns). Fewer, larger sink calls for sinks that pay per request (hosted HTTP APIs).
    linger: float = 0.0


@dataclass
class ConsumerStats:
    """What the consumer has done so far, for logs and probes."""

    batches: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    retries: int = 0
    redis_healthy: bool = True
    sink_healthy: bool = True
    last_error: str | None = None
    started: float = field(default_factory=time.monotonic)


class StreamConsumer:
    def __init__(
        self, redis: aioredis.Redis, settings: ConsumerSettings, handler: Handler, *, name: str,
        metrics: ConsumerMetrics | None = None,
    ) -> None:  # fmt: skip
        self._redis = redis
        self._metrics = metrics
        self._settings = settings
        self._handler = handler
        self._dlq = dead_letter_stream(settings.stream)
        self._log = structlog.get_logger(name).bind(
            stream=settings.stream, group=settings.group, consumer=settings.consumer
        )
        self._next_claim = 0.0
        self._next_progress = time.monotonic() + settings.progress_interval
        self.stats = ConsumerStats()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished (and acknowledged) first."""
        await self._redis_call(self._ensure_group, stop)
        await self._drain_own_pending(stop)
        while not stop.is_set():
            if time.monotonic() >= self._next_claim:
                await self._claim_abandoned(stop)
            entries = await self._redis_call(partial(self._read, ">"), stop)
            if entries and self._settings.linger > 0:
                await self._linger(entries, stop)
            if entries:
                await self._process(entries, stop)
            await self._report_progress()

    # --- reading --------------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(
                self._settings.stream, self._settings.group, id="0", mkstream=True
            )
            self._log.info("consumer_group_created")
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _drain_own_pending(self, stop: asyncio.Event) -> None:
        """Entries delivered to this consumer name before a crash, not yet acknowledged."""
        cursor = "0"
        while not stop.is_set():
            entries = await self._redis_call(partial(self._read, cursor), stop)
            if not entries:
                return
            self._log.info("pending_reread", count=len(entries))
            await self._process(entries, stop)
            cursor = entries[-1][0]

    async def _read(
        self, cursor: str, *, count: int | None = None, block_ms: int | None = None
    ) -> list[tuple[str, dict[bytes, bytes]]]:
        settings = self._settings
        block = (block_ms or settings.block_ms) if cursor == ">" else None
        reply: Any = await self._redis.xreadgroup(
            settings.group, settings.consumer, {settings.stream: cursor},
            count=count or settings.batch_size, block=block,
        )  # fmt: skip
        if not reply:
            return []
        _, entries = reply[0]
        return [(_text(entry_id), fields) for entry_id, fields in entries if fields is not None]

    async def _linger(
        self, entries: list[tuple[str, dict[bytes, bytes]]], stop: asyncio.Event
    ) -> None:
        """Let a partial batch fill for up to `linger` seconds; what is read is added in place."""
        settings = self._settings
        deadline = time.monotonic() + settings.linger
        while len(entries) < settings.batch_size and not stop.is_set():
            left_ms = min(int((deadline - time.monotonic()) * 1000), settings.block_ms)
            if left_ms <= 0:
                return
            more = await self._redis_call(
                partial(self._read, ">", count=settings.batch_size - len(entries),
                        block_ms=left_ms),
                stop,
            )  # fmt: skip
            entries.extend(more)

    async def _claim_abandoned(self, stop: asyncio.Event) -> None:
        """Take over entries idle longer than `claim_idle_ms` (their consumer died)."""
        self._next_claim = time.monotonic() + self._settings.claim_interval
        cursor = "0-0"
        while not stop.is_set():
            claimed = await self._redis_call(partial(self._autoclaim, cursor), stop)
            if not claimed:
                return  # stopping
            cursor, entries = claimed
            if entries:
                self.stats.claimed += len(entries)
                self._log.info("entries_claimed", count=len(entries))
                await self._process(entries, stop)
            if cursor == "0-0":
                return

    async def _autoclaim(self, cursor: str) -> tuple[str, list[tuple[str, dict[bytes, bytes]]]]:
        settings = self._settings
        reply: Any = await self._redis.xautoclaim(
            settings.stream, settings.group, settings.consumer,
            min_idle_time=settings.claim_idle_ms, start_id=cursor, count=settings.batch_size,
        )  # fmt: skip
        next_cursor, entries = reply[0], reply[1]
        claimed = [(_text(eid), fields) for eid, fields in entries if fields is not None]
        return _text(next_cursor), claimed

    # --- processing -----------------------------------------------------------------------

    async def _process(
        self, entries: Sequence[tuple[str, dict[bytes, bytes]]], stop: asyncio.Event
    ) -> None:
        started = time.monotonic()
        if self._metrics is not None:
            self._metrics.consumed(len(entries))
        deliveries: list[Delivery] = []
        dead: dict[str, str] = {}
        for entry_id, fields in entries:
            try:
                deliveries.append(Delivery(entry_id, event_from_fields(fields)))
            except (ValueError, msgspec.MsgspecError) as exc:
                dead[entry_id] = f"undecodable entry: {exc}"
        refused = await self._deliver(deliveries, stop)
        if refused is None:
            return  # stopped while the sink was down: the batch stays pending
        dead.update(refused)
        ids = [entry_id for entry_id, _ in entries]
        await self._redis_call(partial(self._acknowledge, ids, dead, entries), stop, always=True)
        self.stats.batches += 1
        self.stats.delivered += len(ids) - len(dead)
        self.stats.dead_lettered += len(dead)
        if self._metrics is not None:
            seconds = time.monotonic() - started
            self._metrics.batch(written=len(ids) - len(dead), dead_lettered=len(dead),
                                seconds=seconds)  # fmt: skip
        if dead:
            self._log.warning("entries_dead_lettered", count=len(dead), dlq=self._dlq,
                              reason=next(iter(dead.values())))  # fmt: skip

    async def _deliver(
        self, deliveries: list[Delivery], stop: asyncio.Event
    ) -> dict[str, str] | None:
        if not deliveries:
            return {}
        delay = _RETRY_MIN
        while True:
            try:
                refused = await self._handler(deliveries)
            except RetryLater as exc:
                self.stats.retries += 1
                if self._metrics is not None:
                    self._metrics.retried(exc.events if exc.events is not None else len(deliveries))
                self.stats.last_error = exc.reason
                if self.stats.sink_healthy:
                    self._log.warning("sink_unavailable", reason=exc.reason, batch=len(deliveries))
                self.stats.sink_healthy = False
                if stop.is_set():
                    return None
                wait = exc.after if exc.after is not None else delay
                await _sleep_unless(stop, wait)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            if not self.stats.sink_healthy:
                self._log.info("sink_recovered")
            self.stats.sink_healthy = True
            return refused

    async def _acknowledge(
        self,
        ids: list[str],
        dead: dict[str, str],
        entries: Sequence[tuple[str, dict[bytes, bytes]]],
    ) -> None:
        settings = self._settings
        pipe = self._redis.pipeline(transaction=True)
        if dead:
            raw = dict(entries)
            for entry_id, reason in dead.items():
                original = raw[entry_id].get(b"data", repr(raw[entry_id]).encode())
                pipe.xadd(self._dlq, {"entry_id": entry_id, "reason": reason[:2000],
                                      "consumer": settings.consumer, "data": original})  # fmt: skip
        pipe.xack(settings.stream, settings.group, *ids)
        await pipe.execute()

    # --- plumbing -------------------------------------------------------------------------

    async def _redis_call(
        self, call: Callable[[], Awaitable[Any]], stop: asyncio.Event, *, always: bool = False
    ) -> Any:
        """Run a Redis call with a timeout, retrying (capped backoff) while Redis fails. Gives up
        with an empty answer once `stop` is set, unless `always` (acknowledging a written batch)."""
        delay = _RETRY_MIN
        while True:
            try:
                result = await asyncio.wait_for(
                    call(), self._settings.timeout + self._settings.block_ms / 1000
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._log.warning("consumer_group_missing_recreating")
                await self._ensure_group()
                continue
            except (RedisError, OSError, TimeoutError) as exc:
                self.stats.retries += 1
                self.stats.last_error = f"redis: {type(exc).__name__}"
                if self.stats.redis_healthy:
                    self._log.warning("redis_unavailable", error=type(exc).__name__)
                self.stats.redis_healthy = False
                if stop.is_set() and not always:
                    return []
                await _sleep_unless(stop if not always else asyncio.Event(), delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            if not self.stats.redis_healthy:
                self._log.info("redis_recovered")
            self.stats.redis_healthy = True
            return result

    async def _report_progress(self) -> None:
        """Every `progress_interval` seconds: one line with the counters and the group's lag."""
        now = time.monotonic()
        if now < self._next_progress:
            return
        self._next_progress = now + self._settings.progress_interval
        try:
            lag = await asyncio.wait_for(self.lag(), self._settings.timeout)
        except (RedisError, OSError, TimeoutError):
            lag = None
        stats = self.stats
        self._log.info("progress", batches=stats.batches, delivered=stats.delivered,
                       dead_lettered=stats.dead_lettered, claimed=stats.claimed,
                       retries=stats.retries, lag=lag)  # fmt: skip

    async def lag(self) -> int | None:
        """Entries in the stream not yet delivered to the group (Redis >= 7), for logs."""
        groups = await self._redis.xinfo_groups(self._settings.stream)
        for group in groups:
            if _text(group.get("name", b"")) == self._settings.group:
                lag = group.get("lag")
                return int(lag) if lag is not None else None
        return None


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
