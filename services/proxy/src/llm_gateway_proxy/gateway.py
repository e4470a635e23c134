"""What every handler shares for the life of the process: router, publisher, settings."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import msgspec
import structlog

from llm_gateway_common.events import UsageEvent
from llm_gateway_common.logs import LogOutput
from llm_gateway_proxy.access import Access
from llm_gateway_proxy.cache import ResponseCache
from llm_gateway_proxy.exchange import Exchange
from llm_gateway_proxy.ids import IdSource
from llm_gateway_proxy.keystore import KeyStore
from llm_gateway_proxy.metering import EventPublisher
from llm_gateway_proxy.metrics import ProxyMetrics
from llm_gateway_proxy.prices import PENDING, Price, PriceBook
from llm_gateway_proxy.ratelimit import RateLimiter
from llm_gateway_proxy.router import Router
from llm_gateway_proxy.settings import ProxySettings
from llm_gateway_proxy.tracing import Tracing
from llm_gateway_proxy.usage import Usage

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
        prices: PriceBook | None = None,
        log_output: LogOutput | None = None,
        tracing: Tracing | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.publisher = publisher
        self.access = access
        self.stopping = stopping
        self.metrics = metrics
        self.tracing = tracing  # None: tracing is off (tracing.py)
        self.cache = cache  # None: no response cache (an app built in a test without one)
        self.ids = IdSource()
        self.prices = prices if prices is not None else PriceBook()
        self._unpriced: set[asyncio.Task[None]] = set()  # events waiting for a first price
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
        raises into the handler. An event whose model has no price resolved yet is published
        once it has (`_publish_priced`), off the request path."""
        names = (exchange.upstream_model, exchange.response_model, exchange.model)
        quote = (
            self.prices.quote(exchange.provider_name, exchange.provider, names)
            if exchange.attempts
            else None
        )
        price = quote if isinstance(quote, Price) else None
        event = exchange.to_event(self.settings.metering_capture_bytes, price)
        if quote is PENDING:
            # Tokens are charged now (a token budget must not wait for a price); the spend is
            # charged with the event, once its price is known.
            self._charge(exchange, event.total_tokens, None)
            task = asyncio.create_task(self._publish_priced(exchange, event, names))
            self._unpriced.add(task)
            task.add_done_callback(self._unpriced.discard)
        else:
            self._publish(exchange, event)
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
                "cache_status": event.cache_status,
                "cost_usd": None if event.cost_usd is None else str(event.cost_usd),
                "latency_ms": event.latency_ms,
                "ttfb_ms": event.ttfb_ms,
            },
        )
        return event

    def _publish(self, exchange: Exchange, event: UsageEvent, *, tokens: bool = True) -> None:
        """The event, with the charges of its key: its tokens (unless charged already) and its
        cost."""
        key = exchange.key
        charges = (
            ()
            if key is None or exchange.cache_status == "hit"  # a hit charges no budget
            else self.access.limiter.charges(
                key, exchange.tenant_limits, event.total_tokens if tokens else 0, event.cost_usd
            )
        )
        self.publisher.publish(event, charges)

    def _charge(self, exchange: Exchange, tokens: int, cost: Decimal | None) -> None:
        if exchange.key is not None:
            self.publisher.charge(
                self.access.limiter.charges(exchange.key, exchange.tenant_limits, tokens, cost)
            )

    async def _publish_priced(self, exchange: Exchange, event: UsageEvent,
                              names: tuple[str | None, ...]) -> None:  # fmt: skip
        try:
            price = await self.prices.settle(exchange.provider_name, exchange.provider, names)
            if price is not None:
                usage = Usage(event.prompt_tokens, event.completion_tokens, event.total_tokens,
                              event.cached_tokens, event.reasoning_tokens,
                              event.cache_write_tokens)  # fmt: skip
                event = msgspec.structs.replace(event, cost_usd=price.cost(usage),
                                                price_source=price.source)  # fmt: skip
        finally:  # published priced or not, never lost
            self._publish(exchange, event, tokens=False)

    async def settle(self, timeout: float) -> None:
        """At shutdown: let events waiting for a price be published (unpriced past `timeout`),
        and the cache's stores under way finish."""
        if self.cache is not None:
            await self.cache.close()
        if self._unpriced:
            await asyncio.wait(set(self._unpriced), timeout=timeout)
        for task in set(self._unpriced):
            task.cancel()  # its `finally` publishes the event as it is
        if self._unpriced:
            await asyncio.wait(set(self._unpriced))


def _structlog_info(event: str, fields: dict[str, Any]) -> None:
    log.info(event, **fields)
