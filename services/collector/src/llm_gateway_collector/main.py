"""`llm-gateway-collector`: consume the event stream into NDJSON or Postgres until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Protocol

import uvloop

from llm_gateway_collector.ndjson_sink import NdjsonSink
from llm_gateway_collector.postgres_sink import PostgresSink
from llm_gateway_collector.settings import CollectorSettings
from llm_gateway_common.config import ConfigError
from llm_gateway_common.consumer import ConsumerSettings, Delivery, StreamConsumer
from llm_gateway_common.heap import settle_after_startup
from llm_gateway_common.logs import configure_logging
from llm_gateway_common.probes import start_probes
from llm_gateway_common.streams import connect_redis


class Sink(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ready(self) -> bool: ...
    async def write(self, deliveries: list[Delivery]) -> dict[str, str]: ...


def main() -> None:
    try:
        settings = CollectorSettings.from_env()
    except ConfigError as exc:
        print(f"llm-gateway-collector: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    events_on_stdout = settings.sink == "ndjson" and settings.event_log_path == "-"
    configure_logging(settings.log_level, sys.stderr.buffer if events_on_stdout else None)
    uvloop.run(run(settings))


def make_sink(settings: CollectorSettings) -> Sink:
    if settings.sink == "postgres":
        assert settings.database_url is not None
        return PostgresSink(settings.database_url, timeout=settings.database_timeout)
    return NdjsonSink(settings.event_log_path)


async def run(settings: CollectorSettings) -> None:
    """Serve probes and consume until SIGTERM/SIGINT; the batch in hand is finished first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sink = make_sink(settings)
    await sink.start()
    redis = connect_redis(settings.redis_url, timeout=settings.redis_timeout)
    consumer = StreamConsumer(
        redis,
        ConsumerSettings(
            stream=settings.events_stream, group=settings.group, consumer=settings.consumer,
            batch_size=settings.batch_size, block_ms=settings.block_ms,
            claim_idle_ms=settings.claim_idle_ms, timeout=settings.redis_timeout,
        ),
        sink.write,
        name="llm_gateway.collector",
    )  # fmt: skip
    probes = await start_probes(settings.listen_host, settings.listen_port, redis, sink.ready,
                                settings.redis_timeout)  # fmt: skip
    settle_after_startup()
    try:
        await consumer.run(stop)
    finally:
        await probes.cleanup()
        await sink.close()
        await redis.aclose()


if __name__ == "__main__":
    main()
