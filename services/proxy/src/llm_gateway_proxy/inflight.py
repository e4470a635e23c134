"""The bound on concurrent API requests (`MAX_IN_FLIGHT`): past it, 503 with Retry-After at once.

Each request in flight holds its body (up to MAX_REQUEST_BODY_BYTES) and its upstream buffers;
without a bound, a burst grows the process until the pod's memory limit kills it with every
request it holds. Refusing early is cheap for the client to retry and keeps the ones admitted
fast. Only `/v1/*` counts and is refused: probes and the management listener always answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog

from llm_gateway_proxy.downstream import refuse
from llm_gateway_proxy.errors import Overloaded

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = structlog.get_logger("llm_gateway.proxy")


class InFlight:
    """The count, shared by the middleware and `/health`; one event loop, so no lock."""

    __slots__ = ("current", "limit", "refused", "saturated")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0
        self.refused = 0
        self.saturated = False  # a warning is logged when the bound is reached, not per refusal


class InFlightLimit:
    """ASGI middleware: admit a `/v1/*` request only while fewer than `limit` are in flight."""

    def __init__(self, app: ASGIApp, in_flight: InFlight) -> None:
        self.app = app
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        state = self.in_flight
        if state.current >= state.limit:
            await _refuse(state, send, scope)
            return
        state.current += 1
        if state.saturated and state.current <= state.limit // 2:
            state.saturated = False  # well below the bound again: warn when it is next reached
        try:
            await self.app(scope, receive, send)
        finally:
            state.current -= 1


async def _refuse(state: InFlight, send: Send, scope: Scope) -> None:
    state.refused += 1
    if not state.saturated:
        state.saturated = True
        log.warning("in_flight_limit_reached", max_in_flight=state.limit)
    err = Overloaded(
        f"The gateway is at its limit of {state.limit} requests in flight; retry shortly."
    )
    await refuse(send, err, scope)
