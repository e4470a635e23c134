"""`llm-gateway-dispatcher`: consume the event stream into a JSONL file, Lunary or Helicone
until SIGTERM."""

from __future__ import annotations

import sys

import structlog
import uvloop

from llm_gateway_common.config import ConfigError
from llm_gateway_common.consumer import ConsumerSettings
from llm_gateway_common.consumer_service import serve_consumer
from llm_gateway_common.logs import configure_logging
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
    sink = make_sink(settings)
    handler = DeliveryHandler(
        sink, max_attempts=settings.max_attempts,
        backoff=Backoff(settings.backoff_min, settings.backoff_max),
    )  # fmt: skip
    structlog.get_logger(LOGGER).info("dispatcher_starting", settings=repr(settings))
    await serve_consumer(
        sink=sink,
        sink_kind=settings.sink,
        handler=handler,
        consumer=ConsumerSettings(
            stream=settings.events_stream, group=settings.group, consumer=settings.consumer,
            batch_size=settings.batch_size, linger=settings.flush_interval,
            claim_idle_ms=settings.claim_idle_ms, timeout=settings.redis_timeout,
        ),
        redis_url=settings.redis_url,
        redis_timeout=settings.redis_timeout,
        listen=(settings.listen_host, settings.listen_port),
        logger_name=LOGGER,
    )  # fmt: skip


if __name__ == "__main__":
    main()
