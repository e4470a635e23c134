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
        await self.app(scope, _ReceiveBefore(receive, self.timeout), send)


class _ReceiveBefore:
    __slots__ = ("_deadline", "_done", "_receive", "_timeout")

    def __init__(self, receive: Receive, timeout: float) -> None:
        self._receive = receive
        self._timeout = timeout
        self._deadline: float | None = None
        self._done = False

    async def __call__(self) -> Message:
        if self._done:
            return await self._receive()
        if self._deadline is None:
            self._deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {self._timeout:g} seconds."
            ) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._done = True
        return message
