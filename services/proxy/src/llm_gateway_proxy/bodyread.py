"""The deadline on reading a request body (`CLIENT_READ_TIMEOUT`): a `/v1/*` body must have
arrived in full within that many seconds of the handler starting to read it.

Without it, a client that trickles its body (a byte now and then) holds a request slot, a task
and the buffered bytes for as long as it likes. The deadline is on the whole body, not between
reads, so a trickle cannot extend it. When it passes, the read raises `RequestTimeout`: the
handler answers 408 (OpenAI error JSON) and records the request like any other failure, and
Hypercorn closes the connection, since the body was not read to its end.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llm_gateway_proxy.errors import RequestTimeout
from llm_gateway_proxy.inflight import ASGIApp, Message, Receive, Scope, Send


class BodyReadDeadline:
    """ASGI middleware: bounds the time the app waits on `receive()` for a `/v1/*` body.

    Once the body is complete, `receive()` is passed through unbounded: the handler then waits on
    it for the client's disconnect for as long as the response takes."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        bounded = _ReceiveBefore(receive, self.timeout)
        try:
            await self.app(scope, bounded, send)
        finally:
            bounded.stop()  # a handler that answered before reading the whole body


class _ReceiveBefore:
    """`receive()`, cancelled by a timer if the body is not complete `timeout` seconds after the
    first call. One timer per request (`call_later`, ~2 µs), not one per read: `asyncio.timeout`
    costs twice that, and almost every body arrives in the first read."""

    __slots__ = ("_done", "_expired", "_receive", "_timeout", "_timer", "_waiting")

    def __init__(self, receive: Receive, timeout: float) -> None:
        self._receive = receive
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._done = False
        self._expired = False
        self._waiting: asyncio.Task[Any] | None = None

    async def __call__(self) -> Message:
        if self._done:
            return await self._receive()
        if self._expired:
            raise self._timeout_error()
        self._waiting = task = asyncio.current_task()  # (its loop: no second look-up)
        if self._timer is None and task is not None:
            self._timer = task.get_loop().call_later(self._timeout, self._expire)
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if self._expired and task is not None and task.uncancel() == 0:
                raise self._timeout_error() from None
            raise
        finally:
            self._waiting = None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.stop()
        return message

    def stop(self) -> None:
        """The body is complete (or no longer wanted): no deadline from now on."""
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._expired = True
        if self._waiting is not None:
            self._waiting.cancel()

    def _timeout_error(self) -> RequestTimeout:
        return RequestTimeout(f"The request body did not arrive within {self._timeout:g} seconds.")
