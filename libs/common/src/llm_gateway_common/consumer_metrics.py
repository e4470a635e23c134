"""The stream consumers' Prometheus metrics (collector, dispatcher), served at `/metrics` on the
operations listener next to the probes.

Counted as batches go by (one `.inc()` per counter per batch, on children bound at start):
entries consumed, events written or delivered by sink, retried, dead-lettered, and each batch's
time from read to acknowledgement. Read from Redis at scrape time: the group's lag (entries not
yet delivered to it) and pending entries (delivered, not acknowledged), and the dead-letter
stream's length. Those reads are bounded by `timeout`: when Redis does not answer, the gauges are
left out of that scrape (absent, not a stale or a made-up value) and the scrape still answers.
Names are in `llm_gateway_common.metricnames`; every label value is configuration (stream, group,
sink kind), so the series are fixed for the life of the process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError

from llm_gateway_common import metricnames as names
from llm_gateway_common.streams import dead_letter_stream


class ConsumerMetrics:
    def __init__(self, *, stream: str, group: str, sink: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._consumed = Counter(
            names.CONSUMED, "Stream entries read by this consumer (new, re-read or reclaimed).",
            [names.STREAM, names.GROUP], registry=registry,
        ).labels(stream, group)  # fmt: skip
        self._written = Counter(
            names.WRITTEN, "Events the sink took (written to the ledger, or delivered).",
            [names.SINK], registry=registry,
        ).labels(sink)  # fmt: skip
        self._retried = Counter(
            names.RETRIED, "Events offered to the sink again after it could not take them.",
            [names.SINK], registry=registry,
        ).labels(sink)  # fmt: skip
        self._dead_lettered = Counter(
            names.DEAD_LETTERED, "Entries moved to the dead-letter stream (undecodable, or "
            "refused by the sink for good).", [names.SINK], registry=registry,
        ).labels(sink)  # fmt: skip
        self._batch_duration = Histogram(
            names.BATCH_DURATION, "A batch's time from read to acknowledgement, sink retries "
            "included.", [names.SINK], buckets=names.BATCH_BUCKETS, registry=registry,
        ).labels(sink)  # fmt: skip
        self._stream_state = _StreamState(stream, group)
        registry.register(self._stream_state)

    def consumed(self, entries: int) -> None:
        """A batch read from the stream (new, re-read after a restart, or reclaimed)."""
        self._consumed.inc(entries)

    def batch(self, *, written: int, dead_lettered: int, seconds: float) -> None:
        """A batch acknowledged: what the sink took, what went to the dead-letter stream."""
        self._written.inc(written)
        if dead_lettered:
            self._dead_lettered.inc(dead_lettered)
        self._batch_duration.observe(seconds)

    def retried(self, events: int) -> None:
        self._retried.inc(events)

    async def render(self, redis: aioredis.Redis, timeout: float) -> bytes:
        """The text exposition, with the stream's state read from Redis within `timeout`."""
        await self._stream_state.refresh(redis, timeout)
        return generate_latest(self.registry)


class _StreamState:
    """The gauges read from Redis: the last scrape's reading, or nothing when Redis did not
    answer in time."""

    def __init__(self, stream: str, group: str) -> None:
        self._stream = stream
        self._group = group
        self._dlq = dead_letter_stream(stream)
        self._reading: tuple[int | None, int, int] | None = None

    async def refresh(self, redis: aioredis.Redis, timeout: float) -> None:
        try:
            self._reading = await asyncio.wait_for(self._read(redis), timeout)
        except (RedisError, OSError, TimeoutError):
            self._reading = None

    async def _read(self, redis: aioredis.Redis) -> tuple[int | None, int, int]:
        pipe = redis.pipeline(transaction=False)
        pipe.xinfo_groups(self._stream)
        pipe.xlen(self._dlq)
        groups, dlq_length = await pipe.execute(raise_on_error=False)
        if isinstance(groups, Exception):  # no stream yet: nothing consumed, nothing pending
            groups = []
        if isinstance(dlq_length, Exception):
            raise dlq_length
        lag: int | None = None
        pending = 0
        for group in groups:
            if _text(group.get("name", b"")) == self._group:
                lag = _number(group.get("lag"))
                pending = _number(group.get("pending")) or 0
        return lag, pending, int(dlq_length)

    def collect(self) -> Iterator[Metric]:
        if self._reading is None:
            return
        lag, pending, dlq_length = self._reading
        labels = [names.STREAM, names.GROUP]
        if lag is not None:  # Redis < 7, or a group whose lag Redis cannot tell, reports none
            family = GaugeMetricFamily(
                names.CONSUMER_LAG, "Stream entries not yet delivered to the consumer group "
                "(XINFO GROUPS lag).", labels=labels,
            )  # fmt: skip
            family.add_metric([self._stream, self._group], lag)
            yield family
        family = GaugeMetricFamily(
            names.CONSUMER_PENDING, "Entries delivered to the group, not yet acknowledged.",
            labels=labels,
        )  # fmt: skip
        family.add_metric([self._stream, self._group], pending)
        yield family
        family = GaugeMetricFamily(
            names.DEAD_LETTER_LENGTH, "Entries in the stream's dead-letter stream.",
            labels=[names.STREAM],
        )  # fmt: skip
        family.add_metric([self._stream], dlq_length)
        yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())  # read at scrape time; nothing to check at registration


def _number(value: Any) -> int | None:
    return int(value) if value is not None else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
