"""The client side of one request: reading its body, writing the response, noticing it leave.

Once the body is read, a watcher task waits on `receive()`; when the client disconnects it marks
the connection gone and cancels the handler, which stops awaiting the upstream at once (the
upstream request is then closed, so the provider stops generating). The watcher starts
`WATCH_AFTER` seconds after the body was read: most answers are out before then and need none
(a task per request costs more than the timer), and a client that left meanwhile is seen at
once when it starts, its disconnect waiting in the receive queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from llm_gateway_proxy.errors import GatewayError, RequestTooLarge, anthropic_client
from llm_gateway_proxy.exchange import new_request_id

if TYPE_CHECKING:
    from llm_gateway_proxy.cache import Lookup

Message = MutableMapping[str, Any]
WATCH_AFTER = 0.05  # seconds after the body was read before a disconnect is watched for
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ClientDisconnected(Exception):
    """The client went away before the gateway finished answering."""


class Downstream:
    __slots__ = (
        "_receive", "_send", "_start_timer", "_watcher", "anthropic", "cache", "event_stream",
        "gone", "sent_bytes", "started",
    )  # fmt: skip

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._watcher: asyncio.Task[None] | None = None
        self._start_timer: asyncio.TimerHandle | None = None
        self.gone = False
        self.started = False
        self.event_stream = False
        self.sent_bytes = 0
        self.anthropic = False  # errors in Anthropic's shape (the Messages endpoints)
        # The response cache's lookup (cache.py): its Cache-Status header on the response, and,
        # on a miss that may be stored, the recording of what the client is sent.
        self.cache: Lookup | None = None

    async def read_body(self, limit: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The whole request body; RequestTooLarge past `limit` (before reading, if declared)."""
        for name, value in headers:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                raise ClientDisconnected
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def watch_disconnect(self) -> None:
        """Cancel the current task when the client disconnects (call after the body is read)."""
        task = asyncio.current_task()
        if task is not None:
            self._start_timer = task.get_loop().call_later(WATCH_AFTER, self._start_watching, task)

    def _start_watching(self, handler: asyncio.Task[Any]) -> None:
        self._start_timer = None
        self._watcher = asyncio.create_task(self._watch(handler))

    async def _watch(self, handler: asyncio.Task[Any]) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                handler.cancel()
                return

    def stop_watching(self) -> None:
        if self._start_timer is not None:
            self._start_timer.cancel()
            self._start_timer = None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def start(
        self, status: int, headers: list[tuple[bytes, bytes]], *, event_stream: bool = False
    ) -> None:
        self.started = True
        self.event_stream = event_stream
        cache = self.cache
        if cache is not None:
            headers = [*headers, (b"cache-status", cache.header)]
            if cache.recording is not None:
                cache.recording.started(status, headers)
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, *, more: bool) -> None:
        self.sent_bytes += len(data)
        cache = self.cache
        if cache is not None and cache.recording is not None:
            cache.recording.add(data)
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def json(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """A whole JSON answer of the gateway's own."""
        length = str(len(body)).encode()
        await self.start(status, [(b"content-type", b"application/json"),
                                  (b"content-length", length), *headers])  # fmt: skip
        await self.body(body, more=False)

    async def error(self, err: GatewayError, extra_headers: list[tuple[bytes, bytes]]) -> None:
        """Answer with the OpenAI error JSON. Once a response has started, it can no longer be
        a clean answer: an event stream ends with a final `data: {"error": ...}` event (after a
        blank line, which closes whatever event was cut off); any other body is left unfinished,
        so the server drops the connection and the client sees an incomplete body (no final
        chunk, or fewer bytes than declared), never a complete-looking one."""
        if self.anthropic:
            payload, status, event = err.anthropic_body(), err.anthropic_status, b"event: error\n"
        else:
            payload, status, event = err.body(), err.status, b""
        if self.started:
            if self.event_stream:
                await self.body(b"\n\n" + event + b"data: " + payload + b"\n\n", more=False)
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            *extra_headers,
            *err.headers(),
            *err.extra_headers,
        ]
        await self.start(status, headers)
        await self.body(payload, more=False)


async def refuse(send: Send, err: GatewayError, scope: MutableMapping[str, Any]) -> None:
    """Answer a request turned away before any handler (a middleware's refusal): the error JSON
    (OpenAI's, or Anthropic's for its clients), its headers, and a fresh request id."""
    downstream = Downstream(_no_receive, send)
    downstream.anthropic = anthropic_client(scope.get("path", ""), scope.get("headers", []))
    await downstream.error(err, [(b"x-llm-request-id", new_request_id().encode())])


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"Request body exceeds the gateway's limit of {limit} bytes.")
