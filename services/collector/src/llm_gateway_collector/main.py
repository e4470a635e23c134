"""`llm-gateway-collector`: consume the event stream into NDJSON or Postgres until SIGTERM."""

from __future__ import annotations

import sys
from typing import Protocol

import uvloop

from llm_gateway_collector.ndjson_sink import NdjsonSink
from llm_gateway_collector.postgres_sink import PostgresSink
from llm_gateway_collector.settings import CollectorSettings
from llm_gateway_common.config import ConfigError
from llm_gateway_common.consumer import ConsumerSettings, Delivery
from llm_gateway_common.consumer_service import serve_consumer
from llm_gateway_common.logs import configure_logging


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
    sink = make_sink(settings)
    await serve_consumer(
        sink=sink,
        sink_kind=settings.sink,
        handler=sink.write,
        consumer=ConsumerSettings(
            stream=settings.events_stream, group=settings.group, consumer=settings.consumer,
            batch_size=settings.batch_size, block_ms=settings.block_ms,
            claim_idle_ms=settings.claim_idle_ms, timeout=settings.redis_timeout,
            progress_interval=settings.progress_interval,
        ),
        redis_url=settings.redis_url,
        redis_timeout=settings.redis_timeout,
        listen=(settings.listen_host, settings.listen_port),
        logger_name="llm_gateway.collector",
    )  # fmt: skip


if __name__ == "__main__":
    main()
