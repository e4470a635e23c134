"""The collector's `/metrics` on its operations listener: entries consumed, events written by sink,
dead-lettered, batch time, and the group's lag, pending entries and dead-letter length read from
Redis at scrape time; a hung Redis costs a scrape one bounded wait and leaves those gauges out."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from llm_gateway_common import metricnames as metric
from tests.collector.test_ndjson import lines, until
from tests.conftest import CollectorFactory
from tests.support.events import make_event, produce
from tests.support.metrics import names, scrape, value
from tests.support.servers import LocalRedis

SINK = {metric.SINK: "ndjson"}


async def test_counts_follow_the_stream_and_the_gauges_come_from_redis(
    collector_factory: CollectorFactory, redis: aioredis.Redis, stream_name: str,
    http: aiohttp.ClientSession, tmp_path: Path,
) -> None:  # fmt: skip
    path = tmp_path / "events.ndjson"
    good = [make_event(i) for i in range(40)]
    await produce(redis, stream_name, good[:20])
    await redis.xadd(stream_name, {"data": b"{not json"})
    await produce(redis, stream_name, good[20:])
    collector = collector_factory(EVENTS_STREAM=stream_name, EVENT_LOG_PATH=str(path))
    group = {metric.STREAM: stream_name, metric.GROUP: "collector"}

    async def written() -> bool:
        samples = await scrape(http, collector.base_url)
        return value(samples, metric.WRITTEN + "_total", **SINK) == len(good)

    await until(written, "every good event counted as written")
    assert len(lines(path)) == len(good)
    samples = await scrape(http, collector.base_url)
    assert value(samples, metric.CONSUMED + "_total", **group) == len(good) + 1
    assert value(samples, metric.DEAD_LETTERED + "_total", **SINK) == 1
    assert value(samples, metric.RETRIED + "_total", **SINK) == 0
    batches = value(samples, metric.BATCH_DURATION + "_count", **SINK)
    assert batches >= 1
    assert value(samples, metric.BATCH_DURATION + "_bucket", **SINK, le="+Inf") == batches
    assert value(samples, metric.DEAD_LETTER_LENGTH, **{metric.STREAM: stream_name}) == 1
    assert value(samples, metric.CONSUMER_PENDING, **group) == 0
    assert value(samples, metric.CONSUMER_LAG, **group) == 0

    assert await asyncio.to_thread(collector.terminate) == 0
    await produce(redis, stream_name, [make_event(i) for i in range(7)])
    restarted = collector_factory(EVENTS_STREAM=stream_name, EVENT_LOG_PATH=str(path),
                                  COLLECTOR_BLOCK_MS="100")  # fmt: skip

    async def caught_up() -> bool:
        samples = await scrape(http, restarted.base_url)
        return value(samples, metric.WRITTEN + "_total", **SINK) == 7

    await until(caught_up, "the events sent while it was down")
    samples = await scrape(http, restarted.base_url)
    assert value(samples, metric.CONSUMED + "_total", **group) == 7  # counters are per process
    assert value(samples, metric.DEAD_LETTER_LENGTH, **{metric.STREAM: stream_name}) == 1


async def test_lag_counts_what_the_group_has_not_read(
    collector_factory: CollectorFactory, redis: aioredis.Redis, stream_name: str,
    http: aiohttp.ClientSession, tmp_path: Path,
) -> None:  # fmt: skip
    """A collector whose sink cannot take anything (a full disk: /dev/full) reads one batch and
    keeps retrying it: that batch is pending, the rest is lag."""
    await produce(redis, stream_name, [make_event(i) for i in range(30)])
    collector = collector_factory(EVENTS_STREAM=stream_name, COLLECTOR_BATCH_SIZE="10",
                                  EVENT_LOG_PATH="/dev/full")  # fmt: skip
    group = {metric.STREAM: stream_name, metric.GROUP: "collector"}

    async def retrying() -> bool:
        samples = await scrape(http, collector.base_url)
        return value(samples, metric.RETRIED + "_total", **SINK) >= 20

    await until(retrying, "the batch retried")
    samples = await scrape(http, collector.base_url)
    assert value(samples, metric.CONSUMED + "_total", **group) == 10
    assert value(samples, metric.WRITTEN + "_total", **SINK) == 0
    assert value(samples, metric.CONSUMER_PENDING, **group) == 10
    assert value(samples, metric.CONSUMER_LAG, **group) == 20
    assert value(samples, metric.RETRIED + "_total", **SINK) % 10 == 0  # the batch, each time


async def test_a_hung_redis_costs_a_scrape_one_bounded_wait_and_the_gauges_are_left_out(
    collector_factory: CollectorFactory, stream_name: str, http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:  # fmt: skip
    redis_server = LocalRedis().start()
    try:
        collector = collector_factory(REDIS_URL=redis_server.url, EVENTS_STREAM=stream_name,
                                      EVENT_LOG_PATH=str(tmp_path / "events.ndjson"),
                                      REDIS_TIMEOUT="1")  # fmt: skip

        async def gauges_read() -> bool:
            return metric.CONSUMER_PENDING in names(await scrape(http, collector.base_url))

        await until(gauges_read, "a first scrape with the stream's state")
        redis_server.freeze()
        started = time.monotonic()
        samples = await asyncio.wait_for(scrape(http, collector.base_url), 5)
        waited = time.monotonic() - started
        assert waited < 2.5, waited  # REDIS_TIMEOUT bounds it
        assert metric.CONSUMER_PENDING not in names(samples)
        assert metric.CONSUMER_LAG not in names(samples)
        assert metric.DEAD_LETTER_LENGTH not in names(samples)
        assert metric.CONSUMED + "_total" in names(samples)  # what the process counts is there
    finally:
        redis_server.stop()
