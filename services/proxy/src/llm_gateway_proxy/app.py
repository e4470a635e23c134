"""The proxy's ASGI application: routes, middleware, and the lifespan that owns every resource."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
from llm_gateway_common.streams import connect_redis
from llm_gateway_proxy import health
from llm_gateway_proxy.access import Access
from llm_gateway_proxy.apis import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES
from llm_gateway_proxy.errors import GatewayError, MethodNotAllowed, NotFound
from llm_gateway_proxy.exchange import REQUEST_ID_HEADER, new_request_id
from llm_gateway_proxy.gateway import Gateway
from llm_gateway_proxy.handlers import ProxyHandler
from llm_gateway_proxy.keystore import KeyStore, load_static_keys
from llm_gateway_proxy.manage import create_management_app
from llm_gateway_proxy.metering import EventPublisher
from llm_gateway_proxy.ratelimit import RateLimiter
from llm_gateway_proxy.settings import ProxySettings
from llm_gateway_proxy.upstream import Upstream

log = structlog.get_logger("llm_gateway.proxy")

_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def create_app(settings: ProxySettings, *, stopping: asyncio.Event | None = None) -> Starlette:
    """Build the proxy. `stopping` is set by the server on SIGTERM (readiness turns 503)."""
    stop_signal = stopping if stopping is not None else asyncio.Event()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        # The key file first: a malformed one stops start-up before anything is opened.
        static_keys = load_static_keys(settings.keys_file) if settings.keys_file else {}
        upstream = Upstream(settings)
        await upstream.start()
        redis = connect_redis(settings.redis_url, timeout=settings.redis_timeout)
        publisher = EventPublisher(
            redis,
            stream=settings.events_stream,
            maxlen=settings.events_maxlen,
            queue_size=settings.event_queue_size,
            batch_size=settings.event_batch_size,
            flush_interval=settings.event_flush_interval,
            timeout=settings.redis_timeout,
        )
        access = Access(
            KeyStore(redis, cache_ttl=settings.key_cache_ttl,
                     timeout=settings.request_redis_timeout, static=static_keys),
            RateLimiter(redis, timeout=settings.request_redis_timeout,
                        fail_open=settings.rate_limit_fail_open),
            enabled=settings.auth_mode == "keys",
        )  # fmt: skip
        if not access.enabled:
            detail = "every client can use the upstream key: for local demos only"
            log.warning("authentication_disabled", auth_mode="none", detail=detail)
        runner = asyncio.create_task(publisher.run(), name="event-publisher")
        settle_after_startup()
        try:
            yield {"gateway": Gateway(settings, upstream, publisher, access, stop_signal)}
        finally:
            stop_signal.set()
            await publisher.close(runner, grace=max(settings.redis_timeout * 3, 5.0))
            await upstream.close()
            await redis.aclose()

    routes = [
        Route(CHAT.path, ProxyHandler(CHAT), methods=["POST"]),
        Route(COMPLETIONS.path, ProxyHandler(COMPLETIONS), methods=["POST"]),
        Route(EMBEDDINGS.path, ProxyHandler(EMBEDDINGS), methods=["POST"]),
        Route(RESPONSES.path, ProxyHandler(RESPONSES), methods=["POST"]),
        Route("/v1/{path:path}", ProxyHandler(None), methods=_ALL_METHODS),
        Mount("/manage", app=create_management_app()),
        Route("/health", health.health, methods=["GET"]),
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
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (outside `/v1/*`), rendered as OpenAI errors."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    err: GatewayError
    if status == 405:
        err = MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}.")
    elif status == 404:
        err = NotFound(f"Unknown request URL: {request.method} {request.url.path}.")
    else:
        err = GatewayError(str(getattr(exc, "detail", "")) or "Request failed.")
    return _render(err)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _render(GatewayError("The gateway failed to handle the request."))


def _render(err: GatewayError) -> Response:
    return Response(
        err.body(), status_code=err.status, media_type="application/json",
        headers={REQUEST_ID_HEADER: new_request_id()},
    )  # fmt: skip
