"""The proxy's ASGI application: routes, middleware, and the lifespan that owns every resource."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from llm_gateway_common.heap import settle_after_startup
from llm_gateway_common.logs import LogOutput
from llm_gateway_common.streams import connect_redis
from llm_gateway_proxy import health
from llm_gateway_proxy.access import Access
from llm_gateway_proxy.bodyread import BodyReadDeadline
from llm_gateway_proxy.cache import ResponseCache
from llm_gateway_proxy.cooldowns import Cooldowns
from llm_gateway_proxy.errors import (
    GatewayError,
    HTTPStatusError,
    MethodNotAllowed,
    NotFound,
    anthropic_client,
)
from llm_gateway_proxy.exchange import REQUEST_ID_HEADER, new_request_id
from llm_gateway_proxy.gateway import Gateway
from llm_gateway_proxy.handlers import ProxyHandler
from llm_gateway_proxy.inflight import ASGIApp, InFlight, InFlightLimit, Receive, Scope, Send
from llm_gateway_proxy.keystore import KeyStore, load_static_keys
from llm_gateway_proxy.listeners import Listeners
from llm_gateway_proxy.manage import create_management_app
from llm_gateway_proxy.metering import EventPublisher
from llm_gateway_proxy.metrics import ProxyMetrics
from llm_gateway_proxy.modelconfig import ModelTable, Timeouts, single_provider
from llm_gateway_proxy.paths import CanonicalPaths, PathTable
from llm_gateway_proxy.prices import PriceBook, priced_targets, provider_urls
from llm_gateway_proxy.ratelimit import RateLimiter
from llm_gateway_proxy.redisgate import RedisGate
from llm_gateway_proxy.router import Router
from llm_gateway_proxy.settings import ProxySettings
from llm_gateway_proxy.tracing import start_tracing
from llm_gateway_proxy.upstream import Upstream

log = structlog.get_logger("llm_gateway.proxy")

_WARM_CONNECTIONS = 8  # Redis connections opened before traffic (a first burst's worth)
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_API_METHODS = frozenset(_ALL_METHODS)


def create_app(
    settings: ProxySettings,
    *,
    stopping: asyncio.Event | None = None,
    log_output: LogOutput | None = None,
) -> Listeners:
    """Build the proxy: the data-plane app (which owns the lifespan) and the management app,
    told apart by the port a request came on. `stopping` is set by the server on SIGTERM
    (readiness turns 503)."""
    stop_signal = stopping if stopping is not None else asyncio.Event()
    in_flight = InFlight(settings.max_in_flight)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        # The key file first: a malformed one stops start-up before anything is opened.
        static_keys = load_static_keys(settings.keys_file) if settings.keys_file else {}
        upstream = Upstream(settings.upstream_pool_size)
        await upstream.start()
        redis = connect_redis(settings.redis_url, timeout=settings.redis_timeout)
        table = settings.models or single_provider(
            settings.upstream_base_url, settings.upstream_api_key,
            Timeouts(connect=settings.connect_timeout, read=settings.read_timeout),
        )  # fmt: skip
        cooldowns = Cooldowns(None if table.single else redis, timeout=settings.redis_timeout)
        router = Router(table, upstream, cooldowns,
                        forward_account=settings.forward_account_headers)  # fmt: skip
        publisher = EventPublisher(
            redis,
            stream=settings.events_stream,
            maxlen=settings.events_maxlen,
            queue_size=settings.event_queue_size,
            batch_size=settings.event_batch_size,
            flush_interval=settings.event_flush_interval,
            timeout=settings.redis_timeout,
        )
        # One breaker for every request-path Redis call (key lookups and admission).
        gate = RedisGate(redis, timeout=settings.request_redis_timeout)
        await gate.warm(_WARM_CONNECTIONS, timeout=min(settings.redis_timeout, 1.0))
        metrics = ProxyMetrics(table, tenant_label=settings.metrics_tenant_label,
                               tenant_limit=settings.metrics_tenant_limit)  # fmt: skip
        access = Access(
            KeyStore(redis, cache_ttl=settings.key_cache_ttl, timeout=gate.timeout,
                     static=static_keys, gate=gate),
            RateLimiter(redis, timeout=gate.timeout, fail_open=settings.rate_limit_fail_open,
                        gate=gate),
            enabled=settings.auth_mode == "keys", on_soft_limit=metrics.budget_soft_limit,
        )  # fmt: skip
        if not access.enabled:
            detail = "every client can use the upstream key: for local demos only"
            log.warning("authentication_disabled", auth_mode="none", detail=detail)
        metrics.watch(publisher, gate, cooldowns, in_flight)
        prices = PriceBook(settings.prices, urls=provider_urls(table))
        await prices.prime(priced_targets(table))  # one child process, ~0.5 s, before serving
        runner = asyncio.create_task(publisher.run(), name="event-publisher")
        sharing = asyncio.create_task(cooldowns.run(), name="cooldown-sync")
        tracing = start_tracing(settings.tracing)  # None unless OTEL_* turn it on
        gateway = Gateway(settings, router, publisher, access, stop_signal, metrics=metrics,
                          prices=prices, log_output=log_output, tracing=tracing,
                          cache=_response_cache(settings, gate, table))  # fmt: skip
        settle_after_startup()
        try:
            yield {"gateway": gateway, "in_flight": in_flight}
        finally:
            stop_signal.set()
            sharing.cancel()
            await gateway.settle(timeout=settings.redis_timeout)  # events waiting for a price
            await prices.close()
            await publisher.close(runner, grace=max(settings.redis_timeout * 3, 5.0))
            await upstream.close()
            await gate.close()
            await redis.aclose()
            if tracing is not None:  # the last spans out (bounded), off the event loop
                await asyncio.to_thread(tracing.close)

    data_plane = _data_plane(settings, in_flight, lifespan)
    management = Starlette(
        routes=[
            Mount("/manage", app=create_management_app()),
            Route("/health", health.health, methods=["GET"]),
            Route("/metrics", health.metrics, methods=["GET"]),
            Route("/live", health.live, methods=["GET"]),
            Route("/ready", health.ready, methods=["GET"]),
        ],
        middleware=[Middleware(CanonicalPaths)],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    return Listeners(data_plane, management, management_port=settings.management_listen_port)


Lifespan = Callable[[Starlette], AbstractAsyncContextManager[dict[str, Any]]]


def _data_plane(settings: ProxySettings, in_flight: InFlight, lifespan: Lifespan) -> ASGIApp:
    """The public listener's app; the Starlette app in it owns the lifespan."""
    # Every `/v1/*` request goes to one handler, which resolves the (canonical) path itself:
    # a metered API, an allowed pass-through, or 404 (paths.py). It is reached through the
    # middleware below only, not Starlette's router and error middleware (`ApiFirst`); the
    # Starlette app keeps the probes, the 404s outside `/v1` and the 405s of odd methods.
    handler = ProxyHandler(PathTable(settings.passthrough_paths))
    routes = [
        Route("/v1/{path:path}", handler, methods=_ALL_METHODS),
        Route("/v1", handler, methods=_ALL_METHODS),  # 404 from the handler, not a redirect
        Route("/live", health.live, methods=["GET"]),
        Route("/ready", health.ready, methods=["GET"]),
    ]
    middleware = []
    if settings.cors_allow_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_allow_origins),
                allow_methods=_ALL_METHODS,
                allow_headers=["*"],
                expose_headers=["X-LLM-Request-ID"],
                max_age=600,
            )
        )
    # After CORS, so that a refusal still carries its headers; before the handlers, so that a
    # refused request costs nothing but the answer.
    middleware.append(Middleware(InFlightLimit, in_flight=in_flight))
    middleware.append(Middleware(BodyReadDeadline, timeout=settings.client_read_timeout))
    others = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    api: ASGIApp = handler
    for cls, args, kwargs in reversed(middleware):
        api = cls(api, *args, **kwargs)
    # Outermost: nothing behind it ever sees a path with two readings.
    return CanonicalPaths(ApiFirst(api, others))


class ApiFirst:
    """ASGI app: `/v1` and `/v1/*` requests (canonical paths) of the methods the API answers go
    to `api`, the handler behind its middleware; everything else (the lifespan, probes, other
    paths and methods) to `others`, the Starlette app. Starlette's router and error middleware
    cost ~4% of a request's instructions and wrap every message sent, each streamed chunk
    included; the handler maps its own errors (handlers.py)."""

    def __init__(self, api: ASGIApp, others: ASGIApp) -> None:
        self.api = api
        self.others = others

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _API_METHODS:
            path = scope["path"]
            if path.startswith("/v1/") or path == "/v1":
                await self.api(scope, receive, send)
                return
        await self.others(scope, receive, send)


def _response_cache(settings: ProxySettings, gate: RedisGate, table: ModelTable) -> ResponseCache:
    """The response cache, on the request path's Redis and breaker, or on a Redis (and a
    breaker) of its own when CACHE_REDIS_URL names another."""
    url = settings.cache_redis_url
    own = url is not None and url != settings.redis_url
    if url is not None and own:
        gate = RedisGate(connect_redis(url, timeout=settings.redis_timeout), timeout=gate.timeout)
    return ResponseCache(gate, table, max_entry_bytes=settings.cache_max_entry_bytes,
                         wait=settings.cache_wait, owns_gate=own)  # fmt: skip


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own HTTP errors (404/405 outside `/v1/*`, and any other status it raises),
    rendered as OpenAI errors with the same status."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    err: GatewayError
    if status == 405:
        err = MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}.")
    elif status == 404:
        err = NotFound(f"Unknown request URL: {request.method} {request.url.path}.")
    elif 400 <= status < 600:
        detail = str(getattr(exc, "detail", "")) or "Request failed."
        err = HTTPStatusError(detail, status=status)
    else:
        err = GatewayError("Request failed.")
    return _render(request, err)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _render(request, GatewayError("The gateway failed to handle the request."))


def _render(request: Request, err: GatewayError) -> Response:
    """The error in OpenAI's shape, or Anthropic's for its clients."""
    headers = {REQUEST_ID_HEADER: new_request_id()}
    if anthropic_client(request.url.path, request.headers.raw):
        return Response(err.anthropic_body(), status_code=err.anthropic_status,
                        media_type="application/json", headers=headers)  # fmt: skip
    return Response(err.body(), status_code=err.status, media_type="application/json",
                    headers=headers)  # fmt: skip
