"""The dispatcher's `/metrics`: events delivered by sink, and retried counting the events that
wait for another try (not the whole batch), dead-lettered after the last attempt."""

from __future__ import annotations

import aiohttp
import redis.asyncio as aioredis

from llm_gateway_common import metricnames as metric
from llm_gateway_fakes.lunary import FakeLunary
from tests.collector.test_ndjson import until
from tests.dispatcher.conftest import DispatcherFactory
from tests.dispatcher.test_lunary import all_completed
from tests.support.events import make_event, produce
from tests.support.metrics import scrape, value

SINK = {metric.SINK: "lunary"}


async def test_delivered_retried_and_dead_lettered_are_counted_by_sink(
    dispatcher_factory: DispatcherFactory, lunary: FakeLunary, lunary_env: dict[str, str],
    redis: aioredis.Redis, stream_name: str, http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    lunary.fail_events_next(1_000)  # every event of the first batch refused inside a 200
    await produce(redis, stream_name, [make_event(0)])
    dispatcher = dispatcher_factory(**lunary_env, DISPATCHER_MAX_ATTEMPTS="3")

    async def dead() -> bool:
        samples = await scrape(http, dispatcher.base_url)
        return value(samples, metric.DEAD_LETTERED + "_total", **SINK) == 1

    await until(dead, "the refused event counted as dead-lettered")
    lunary.stop_failing()
    healthy = [make_event(i) for i in range(1, 6)]
    await produce(redis, stream_name, healthy)
    await all_completed(lunary, len(healthy))

    async def delivered() -> bool:
        samples = await scrape(http, dispatcher.base_url)
        return value(samples, metric.WRITTEN + "_total", **SINK) == len(healthy)

    await until(delivered, "the healthy events counted as delivered")
    samples = await scrape(http, dispatcher.base_url)
    group = {metric.STREAM: stream_name, metric.GROUP: "dispatcher"}
    assert value(samples, metric.CONSUMED + "_total", **group) == 1 + len(healthy)
    assert value(samples, metric.RETRIED + "_total", **SINK) == 2  # attempts 1 and 2; 3 gave up
    assert value(samples, metric.DEAD_LETTER_LENGTH, **{metric.STREAM: stream_name}) == 1
    assert value(samples, metric.CONSUMER_LAG, **group) == 0
