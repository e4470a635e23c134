"""What every handler shares for the life of the process: router, publisher, settings."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from llm_gateway_common.events import UsageEvent
from llm_gateway_common.logs import LogOutput
from llm_gateway_proxy.access import Access
from llm_gateway_proxy.exchange import Exchange
from llm_gateway_proxy.ids import IdSource
from llm_gateway_proxy.keystore import KeyStore
from llm_gateway_proxy.metering import EventPublisher
from llm_gateway_proxy.metrics import ProxyMetrics
from llm_gateway_proxy.ratelimit import RateLimiter
from llm_gateway_proxy.router import Router
from llm_gateway_proxy.settings import ProxySettings
from llm_gateway_proxy.tracing import Tracing

log = structlog.get_logger("llm_gateway.proxy")


class Gateway:
    def __init__(
        self,
        settings: ProxySettings,
        router: Router,
        publisher: EventPublisher,
        access: Access,
        stopping: asyncio.Event,
        *,
        metrics: ProxyMetrics,
        log_output: LogOutput | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.publisher = publisher
        self.access = access
        self.stopping = stopping
        self.metrics = metrics
        self.tracing = tracing  # None: tracing is off (tracing.py)
        self.ids = IdSource()
        # The per-request line goes straight to the log output when there is one (the service);
        # else (an app built in a test) through structlog, the same line either way.
        self._line = log_output.info if log_output is not None else _structlog_info

    @property
    def keys(self) -> KeyStore:
        return self.access.keys

    @property
    def limiter(self) -> RateLimiter:
        return self.access.limiter

    def record(self, exchange: Exchange) -> UsageEvent:
        """Meter one finished request and write its one log line; returns its event. Never
        raises into the handler."""
        event = exchange.to_event(self.settings.metering_capture_bytes)
        key = exchange.key
        charges = (
            ()
            if key is None
            else self.access.limiter.charges(key, exchange.tenant_limits, event.total_tokens)
        )
        self.publisher.publish(event, charges)
        self.metrics.record(exchange, event)
        self._line(
            "request",
            {
                "request_id": event.request_id,
                "trace_id": event.trace_id,
                "tenant": event.tenant,
                "key_id": event.key_id,
                "endpoint": event.endpoint,
                "model": event.model,
                "provider": event.provider_name,
                "attempts": event.attempts,
                "stream": event.stream,
                "status": event.status_code,
                "outcome": event.outcome,
                "error_type": event.error_type,
                "total_tokens": event.total_tokens,
                "usage_source": event.usage_source,
                "latency_ms": event.latency_ms,
                "ttfb_ms": event.ttfb_ms,
            },
        )
        return event


def _structlog_info(event: str, fields: dict[str, Any]) -> None:
    log.info(event, **fields)
