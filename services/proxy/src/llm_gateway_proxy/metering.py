"""Usage events leave the request path here: a bounded in-memory queue drained into Redis.

`publish` never blocks and never fails the request. A background batcher writes queued events
with one pipelined XADD per batch, lingering up to `flush_interval` for a batch to fill, so light
traffic does not pay a Redis round trip per request. While Redis is down or slow, events wait in
the queue (up to `queue_size`) and are written when it returns; past the bound, new events are
dropped, and every drop is counted and logged (at most once per `_DROP_LOG_INTERVAL`, so an
outage cannot flood the logs). A pipeline interrupted mid-way may be retried whole, so an event
can reach the stream twice; consumers are idempotent on `event_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from llm_gateway_common.events import UsageEvent
from llm_gateway_common.streams import entry_fields
from llm_gateway_proxy.ratelimit import Charge

_RETRY_MIN = 0.05
_RETRY_MAX = 2.0
_DROP_LOG_INTERVAL = 10.0

log = structlog.get_logger("llm_gateway.metering")


class EventPublisher:
    """Owns the event queue and the task that drains it into the stream."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        stream: str,
        maxlen: int,
        queue_size: int,
        batch_size: int,
        flush_interval: float,
        timeout: float,
    ) -> None:
        self._redis = redis
        self._stream = stream
        self._maxlen = maxlen or None
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._timeout = timeout
        self._queue: deque[UsageEvent] = deque()
        self._charges: deque[Charge] = deque()
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._last_drop_log = 0.0
        self.written = 0
        self.dropped = 0
        self.write_failures = 0
        self.redis_healthy = True

    @property
    def queued(self) -> int:
        return len(self._queue)

    def publish(self, event: UsageEvent, charges: Iterable[Charge] = ()) -> None:
        """Queue one event (and the token charges of its key); never blocks. Drops (counted,
        logged) only when the queue is full."""
        if len(self._queue) >= self._queue_size:
            self._drop(1)
            return
        self._queue.append(event)
        self._charges.extend(charges)
        if not self._wakeup.is_set():
            self._wakeup.set()
        if len(self._queue) >= self._batch_size:
            self._full.set()

    async def run(self) -> None:
        """Drain the queue until `close`; retry with capped backoff while Redis fails."""
        delay = _RETRY_MIN
        while not (self._closing and not self._queue):
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(self._queue) < self._batch_size and not self._closing:
                await self._linger()
            batch = self._take_batch()
            if await self._write(batch):
                delay = _RETRY_MIN
                continue
            self._queue.extendleft(reversed(batch))
            if self._closing:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)

    async def close(self, runner: asyncio.Task[None], grace: float) -> None:
        """Flush what is queued within `grace` seconds, then stop; log what could not be sent."""
        self._closing = True
        self._wakeup.set()
        self._full.set()
        try:
            await asyncio.wait_for(asyncio.shield(runner), grace)
        except TimeoutError:
            runner.cancel()
        if self._queue:
            log.error("events_lost_at_shutdown", count=len(self._queue), stream=self._stream)

    async def _linger(self) -> None:
        """Give a batch up to `flush_interval` to fill; a full queue or close ends it early."""
        self._full.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), self._flush_interval)

    def _take_batch(self) -> list[UsageEvent]:
        count = min(self._batch_size, len(self._queue))
        return [self._queue.popleft() for _ in range(count)]

    async def _write(self, batch: list[UsageEvent]) -> bool:
        pipe = self._redis.pipeline(transaction=False)
        for event in batch:
            pipe.xadd(self._stream, entry_fields(event), maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
        charges = [self._charges.popleft() for _ in range(len(self._charges))]
        for charge in charges:
            pipe.incrby(charge.key, charge.amount)
            if charge.ttl is not None:
                pipe.expire(charge.key, charge.ttl)
        try:
            await asyncio.wait_for(pipe.execute(), self._timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self._charges.extendleft(reversed(charges))
            self.write_failures += 1
            if self.redis_healthy:
                log.warning(
                    "event_write_failed",
                    error=type(exc).__name__,
                    queued=len(self._queue) + len(batch),
                )
            self.redis_healthy = False
            return False
        if not self.redis_healthy:
            log.info("event_writes_resumed", queued=len(self._queue))
        self.redis_healthy = True
        self.written += len(batch)
        return True

    def _drop(self, count: int) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
            self._last_drop_log = now
            log.error(
                "events_dropped",
                dropped_total=self.dropped,
                queue_size=self._queue_size,
                reason="event queue full; Redis unreachable or too slow",
            )
