"""The life of a stream-consuming service (collector, dispatcher): start the sink, consume until
SIGTERM/SIGINT while serving probes, then finish the batch in hand and close everything."""

from __future__ import annotations

import asyncio
import signal
from typing import Protocol

from llm_gateway_common.consumer import ConsumerSettings, Handler, StreamConsumer
from llm_gateway_common.consumer_metrics import ConsumerMetrics
from llm_gateway_common.heap import settle_after_startup
from llm_gateway_common.probes import start_probes
from llm_gateway_common.streams import connect_redis


class ServiceSink(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ready(self) -> bool: ...


async def serve_consumer(
    *,
    sink: ServiceSink,
    sink_kind: str,
    handler: Handler,
    consumer: ConsumerSettings,
    redis_url: str,
    redis_timeout: float,
    listen: tuple[str, int],
    logger_name: str,
) -> None:
    """Run until a stop signal; the batch in hand is finished (and acknowledged) first, or, if
    the sink cannot take it then, left pending for the next start or another replica."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await sink.start()
    redis = connect_redis(redis_url, timeout=redis_timeout)
    metrics = ConsumerMetrics(stream=consumer.stream, group=consumer.group, sink=sink_kind)
    stream_consumer = StreamConsumer(redis, consumer, handler, name=logger_name, metrics=metrics)
    probes = await start_probes(listen[0], listen[1], redis, sink.ready, redis_timeout,
                                metrics=metrics)  # fmt: skip
    settle_after_startup()
    try:
        await stream_consumer.run(stop)
    finally:
        await probes.cleanup()
        await sink.close()
        await redis.aclose()
