"""Usage events and token charges leave the request path here, and land in Redis exactly once.

`publish` never blocks and never fails the request. A background batcher writes queued events,
and the token charges of gateway keys, lingering up to `flush_interval` for a batch to fill, so
light traffic does not pay a Redis round trip per request.

Each batch is one atomic Lua script: it XADDs the batch's events and applies its INCRBY/EXPIRE
charges, and records the batch's sequence number in a marker of this publisher's own
(`<stream>:batches:<publisher id>`). A batch that failed or timed out is retried as it was (same
sequence number, same content) before any later one, so when Redis had run it after all (a
stall longer than `timeout`: Redis runs what it was sent when it resumes), the retry finds the
marker at or past its number and writes nothing. Events and charges are therefore written once,
not at least once; consumers' dedupe on `event_id` stays as a second line of defence. One marker
per process, not per batch, keeps the cost one small key per replica. The script touches
several keys, so the events stream and the counters must live on one Redis (single or
Sentinel; a Redis Cluster would refuse it with CROSSSLOT).

While Redis is down or slow, events wait in the queue (up to `queue_size`, the batch in flight
included) and are written when it returns; past the bound, new events are dropped, and every
drop is counted and logged (at most once per `_DROP_LOG_INTERVAL`, so an outage cannot flood the
logs). Charges are never dropped with their event: pending charges are summed per counter key
(bounded by the number of distinct counters, not by requests) and go with the next batch. On
`close` the publisher keeps retrying with backoff until the grace period ends, then logs what
was lost, events and charges.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from llm_gateway_common.events import UsageEvent, encode_event
from llm_gateway_common.streams import ENTRY_FIELD
from llm_gateway_proxy.ratelimit import Charge

_RETRY_MIN = 0.05
_RETRY_MAX = 2.0
_DROP_LOG_INTERVAL = 10.0
# How long a publisher's marker outlives its last batch: longer than any retry of a batch could
# take, and costing one key per replica (restarted ones included) for that long.
_MARKER_TTL = 7 * 86_400

# KEYS: the stream, this publisher's marker, then one counter per charge.
# ARGV: the batch's sequence number, the marker's TTL, MAXLEN (0: none), the entry's field,
# the number of events n, the n encoded events, then per charge its amount and TTL (0: none).
# The stream is trimmed (MAXLEN ~) once per batch rather than at each XADD: the same bound.
# Returns {1, refused, first error} when written, {0} when this batch was written before. The
# marker is the first write: a Redis out of memory refuses the script before it writes anything.
# Past it, a refused XADD or INCRBY (a key of another type) is counted, not retried: retrying
# could never succeed, and it would write the rest of the batch again.
_WRITE_BATCH = """
local seq = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[2]) or '0') >= seq then return {0} end
redis.call('SET', KEYS[2], seq, 'EX', ARGV[2])
local refused, first_error = 0, ''
local function write(result)
  if type(result) == 'table' and result.err then
    refused = refused + 1
    if first_error == '' then first_error = result.err end
  end
end
local count = tonumber(ARGV[5])
for i = 6, 5 + count do
  write(redis.pcall('XADD', KEYS[1], '*', ARGV[4], ARGV[i]))
end
if ARGV[3] ~= '0' then write(redis.pcall('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[3])) end
local arg = 6 + count
for k = 3, #KEYS do
  write(redis.pcall('INCRBY', KEYS[k], ARGV[arg]))
  if ARGV[arg + 1] ~= '0' then write(redis.pcall('EXPIRE', KEYS[k], ARGV[arg + 1])) end
  arg = arg + 2
end
return {1, refused, first_error}
"""

log = structlog.get_logger("llm_gateway.metering")


class _Batch(NamedTuple):
    """One script call, built once and retried as it is until Redis confirms it."""

    seq: int
    events: int
    charges: dict[str, Charge]
    keys: list[str]
    args: list[Any]


class EventPublisher:
    """Owns the event queue, the pending charges, and the task that writes them to Redis."""

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
        self._stream = stream
        self._marker = f"{stream}:batches:{uuid.uuid4().hex}"
        self._maxlen = maxlen
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._timeout = timeout
        self._script: Any = redis.register_script(_WRITE_BATCH)
        self._queue: deque[UsageEvent] = deque()
        self._charges: dict[str, Charge] = {}
        self._batch: _Batch | None = None  # taken, not yet confirmed written
        self._seq = 0
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._last_drop_log = 0.0
        self.written = 0
        self.dropped = 0
        self.write_failures = 0
        self.batches_written_before = 0  # retries that found their batch already written
        self.redis_healthy = True

    @property
    def queue_limit(self) -> int:
        return self._queue_size

    @property
    def queued(self) -> int:
        """Events not yet written: queued, and in the batch being written."""
        return len(self._queue) + (self._batch.events if self._batch is not None else 0)

    @property
    def pending_charges(self) -> int:
        """Counters with tokens not yet written."""
        held = len(self._batch.charges) if self._batch is not None else 0
        return len(self._charges) + held

    def publish(self, event: UsageEvent, charges: Iterable[Charge] = ()) -> None:
        """Queue one event and the token charges of its key; never blocks. Past the queue bound
        the event is dropped (counted, logged); its charges never are."""
        self.charge(charges)
        if self.queued >= self._queue_size:
            self._drop(1)
        else:
            self._queue.append(event)
            if len(self._queue) >= self._batch_size:
                self._full.set()
        if not self._wakeup.is_set():
            self._wakeup.set()

    def charge(self, charges: Iterable[Charge]) -> None:
        """Queue charges without an event (summed per counter, written with the next batch)."""
        for charge in charges:
            pending = self._charges.get(charge.key)
            amount = charge.amount if pending is None else pending.amount + charge.amount
            self._charges[charge.key] = Charge(charge.key, amount, charge.ttl)
        if not self._wakeup.is_set():
            self._wakeup.set()

    async def run(self) -> None:
        """Write batches until `close` and nothing is left; retry a failed batch, as it is, with
        capped backoff while Redis fails (during `close` too, until it cancels this task)."""
        delay = _RETRY_MIN
        while True:
            if self._batch is None:
                if not (self._queue or self._charges):
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                if len(self._queue) < self._batch_size and not self._closing:
                    await self._linger()
                self._batch = self._take_batch()
            if await self._write(self._batch):
                self._batch = None
                delay = _RETRY_MIN
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)

    async def close(self, runner: asyncio.Task[None], grace: float) -> None:
        """Flush events and charges, retrying for up to `grace` seconds, then stop; log what
        could not be written (a batch cut off in flight may in fact have been)."""
        self._closing = True
        self._wakeup.set()
        self._full.set()
        try:
            await asyncio.wait_for(asyncio.shield(runner), grace)
        except TimeoutError:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if self.queued:
            log.error("events_lost_at_shutdown", count=self.queued, stream=self._stream)
        lost = [*self._charges.values(), *(self._batch.charges.values() if self._batch else ())]
        if lost:
            tokens = sum(charge.amount for charge in lost)
            counters = len({charge.key for charge in lost})
            log.error("charges_lost_at_shutdown", counters=counters, tokens=tokens)

    async def _linger(self) -> None:
        """Give a batch up to `flush_interval` to fill; a full queue or close ends it early."""
        self._full.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), self._flush_interval)

    def _take_batch(self) -> _Batch:
        count = min(self._batch_size, len(self._queue))
        payloads = [encode_event(self._queue.popleft()) for _ in range(count)]
        charges, self._charges = self._charges, {}
        self._seq += 1
        args: list[Any] = [self._seq, _MARKER_TTL, self._maxlen, ENTRY_FIELD, count, *payloads]
        for charge in charges.values():
            args += (charge.amount, charge.ttl or 0)
        return _Batch(self._seq, count, charges, [self._stream, self._marker, *charges], args)

    async def _write(self, batch: _Batch) -> bool:
        """One attempt at the batch; True once Redis confirms it is written (now or before)."""
        try:
            result = await asyncio.wait_for(
                self._script(keys=batch.keys, args=batch.args), self._timeout
            )
        except (RedisError, OSError, TimeoutError) as exc:
            self.write_failures += 1
            if self.redis_healthy:
                log.warning("event_write_failed", error=type(exc).__name__, queued=self.queued)
            self.redis_healthy = False
            return False
        if not self.redis_healthy:
            log.info("event_writes_resumed", queued=self.queued - batch.events)
        self.redis_healthy = True
        self.written += batch.events
        if not int(result[0]):
            self.batches_written_before += 1
            log.info("event_batch_written_before", batch=batch.seq, events=batch.events)
        elif int(result[1]):
            log.error("event_batch_writes_refused", refused=int(result[1]),
                      error=_text(result[2]), stream=self._stream)  # fmt: skip
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
                reason="event queue full; Redis unreachable or too slow (token charges are kept)",
            )


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
