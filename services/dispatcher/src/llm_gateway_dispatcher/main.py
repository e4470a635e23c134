"""`llm-gateway-dispatcher`: consume the event stream into a JSONL file, Lunary or Helicone
until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog
import uvloop

from llm_gateway_common.config import ConfigError
from llm_gateway_common.consumer import ConsumerSettings, StreamConsumer
from llm_gateway_common.heap import settle_after_startup
from llm_gateway_common.logs import configure_logging
from llm_gateway_common.probes import start_probes
from llm_gateway_common.streams import connect_redis
from llm_gateway_dispatcher.backoff import Backoff
from llm_gateway_dispatcher.delivery import DeliveryHandler, Sink
from llm_gateway_dispatcher.file_sink import FileSink
from llm_gateway_dispatcher.helicone import HeliconeSink
from llm_gateway_dispatcher.lunary import LunarySink
from llm_gateway_dispatcher.settings import DispatcherSettings

LOGGER = "llm_gateway.dispatcher"


def main() -> None:
    try:
        settings = DispatcherSettings.from_env()
    except ConfigError as exc:
        print(f"llm-gateway-dispatcher: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    configure_logging(settings.log_level)
    uvloop.run(run(settings))


def make_sink(settings: DispatcherSettings) -> Sink:
    if settings.sink == "file":
        return FileSink(settings.endpoint)
    assert settings.api_key is not None  # from_env requires it for hosted sinks
    if settings.sink == "lunary":
        return LunarySink(settings.endpoint, settings.api_key, timeout=settings.timeout)
    return HeliconeSink(settings.endpoint, settings.api_key, timeout=settings.timeout,
                        concurrency=settings.concurrency)  # fmt: skip


async def run(settings: DispatcherSettings) -> None:
    """Serve probes and consume until SIGTERM/SIGINT; the batch in hand is finished first (or,
    if the sink cannot take it then, left pending for the next start or another replica)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sink = make_sink(settings)
    await sink.start()
    redis = connect_redis(settings.redis_url, timeout=settings.redis_timeout)
    handler = DeliveryHandler(
        sink, max_attempts=settings.max_attempts,
        backoff=Backoff(settings.backoff_min, settings.backoff_max),
    )  # fmt: skip
    consumer = StreamConsumer(
        redis,
        ConsumerSettings(
            stream=settings.events_stream, group=settings.group, consumer=settings.consumer,
            batch_size=settings.batch_size, linger=settings.flush_interval,
            claim_idle_ms=settings.claim_idle_ms, timeout=settings.redis_timeout,
        ),
        handler,
        name=LOGGER,
    )  # fmt: skip
    probes = await start_probes(settings.listen_host, settings.listen_port, redis, sink.ready,
                                settings.redis_timeout)  # fmt: skip
    structlog.get_logger(LOGGER).info("dispatcher_started", settings=repr(settings))
    settle_after_startup()
    try:
        await consumer.run(stop)
    finally:
        await probes.cleanup()
        await sink.close()
        await redis.aclose()


if __name__ == "__main__":
    main()
