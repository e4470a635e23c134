"""The proxy's request handler: one ASGI callable per OpenAI API, and one generic pass-through.

Every request reads top to bottom: read the body -> validate -> forward -> relay -> meter.
Whatever happens (bad input, upstream failure, client disconnect), the request produces exactly
one usage event and one log line, in `__call__`'s `finally`.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import aiohttp
import orjson
import structlog

from llm_gateway_proxy.apis import Api, client_asked_for_usage, wants_stream
from llm_gateway_proxy.downstream import ClientDisconnected, Downstream, Receive, Send
from llm_gateway_proxy.errors import GatewayError, MissingParameter
from llm_gateway_proxy.exchange import Exchange
from llm_gateway_proxy.gateway import Gateway
from llm_gateway_proxy.streaming import SSETap
from llm_gateway_proxy.upstream import (
    is_event_stream,
    map_exceptions,
    read_body,
    response_headers,
)
from llm_gateway_proxy.usage import estimate_tokens, model_from_payload, usage_from_payload

Scope = MutableMapping[str, Any]

# Keep every intermediary (nginx, ingress controllers, CDNs) from buffering or compressing SSE.
_SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_SSE_REPLACED = frozenset({b"cache-control", b"x-accel-buffering"})
_CLIENT_CLOSED = 499  # nginx's "client closed request"; no response status was sent

log = structlog.get_logger("llm_gateway.proxy")


class ProxyHandler:
    """Serves one OpenAI API (`api`), or, with `api=None`, any other `/v1/*` path untouched."""

    def __init__(self, api: Api | None) -> None:
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway: Gateway = scope["state"]["gateway"]
        endpoint = self.api.path if self.api is not None else scope["path"]
        exchange = Exchange(
            gateway.ids.pair(), scope["headers"], endpoint, scope["method"],
            gateway.settings.provider, metered=self.api is not None,
        )  # fmt: skip
        downstream = Downstream(receive, send)
        try:
            await self._serve(gateway, scope, exchange, downstream)
        except asyncio.CancelledError:
            if not downstream.gone:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            exchange.fail("client_disconnected", "client_disconnected")
        finally:
            downstream.stop_watching()
            if exchange.outcome == "client_disconnected" and not downstream.started:
                exchange.status = _CLIENT_CLOSED
            gateway.record(exchange)

    async def _serve(
        self, gateway: Gateway, scope: Scope, exchange: Exchange, downstream: Downstream
    ) -> None:
        id_header = [(b"x-llm-request-id", exchange.request_id.encode())]
        access = gateway.access
        try:
            key = await access.authenticate(scope["headers"])
            if key is not None:
                exchange.key = key
                exchange.tenant = access.tenant(key, exchange.requested_tenant)
            body = await downstream.read_body(
                gateway.settings.max_request_body_bytes, scope["headers"]
            )
            forward_body = self._prepare(body, exchange, gateway.settings.metering_capture_bytes)
            if key is not None:
                access.authorize_model(key, exchange.model)
                exchange.tenant_limits = await access.admit(key)
            downstream.watch_disconnect()
            upstream = gateway.upstream
            response = await upstream.send(
                scope["method"],
                upstream.url(scope["path"], scope["query_string"]),
                upstream.headers(scope["headers"]),
                forward_body,
            )
            exchange.upstream_called = True
            await self._relay(response, exchange, downstream, id_header, gateway)
        except GatewayError as err:
            await _answer_error(err, exchange, downstream, id_header)
        except ClientDisconnected:
            exchange.fail("client_disconnected", "client_disconnected")
        except Exception as exc:
            log.exception("handler_failed", request_id=exchange.request_id)
            internal = GatewayError(f"The gateway failed the request ({type(exc).__name__}).")
            await _answer_error(internal, exchange, downstream, id_header)

    def _prepare(self, body: bytes, exchange: Exchange, capture_bytes: int) -> bytes:
        """Validate the body and return what to send upstream (with usage asked for, if needed)."""
        exchange.request_bytes = len(body)
        exchange.request_body = body
        if capture_bytes:
            exchange.captured_request = body[: capture_bytes + 1]
        if self.api is None:
            return body
        request = self.api.parse(body)
        if not request.model:
            raise MissingParameter("Missing required parameter: 'model'.", param="model")
        exchange.model = request.model
        exchange.user = request.user
        exchange.stream = wants_stream(request)
        if not (exchange.stream and self.api.usage_on_request):
            return body
        if client_asked_for_usage(request):
            return body
        exchange.strip_usage_chunk = True
        payload = orjson.loads(body)
        options = payload.get("stream_options")
        payload["stream_options"] = {**(options or {}), "include_usage": True}
        return orjson.dumps(payload)

    async def _relay(
        self,
        response: aiohttp.ClientResponse,
        exchange: Exchange,
        downstream: Downstream,
        id_header: list[tuple[bytes, bytes]],
        gateway: Gateway,
    ) -> None:
        """Pass the upstream's answer to the client, noting usage on the way; always closes it."""
        exchange.status = response.status
        exchange.upstream_request_id = response.headers.get("x-request-id")
        headers = response_headers(response)
        headers.extend(id_header)
        capture_bytes = gateway.settings.metering_capture_bytes
        completed = False
        try:
            if is_event_stream(response):
                await self._relay_stream(response, exchange, downstream, headers, capture_bytes)
            elif self.api is None:
                await _relay_chunks(response, exchange, downstream, headers)
            else:
                await _relay_body(response, exchange, downstream, headers, capture_bytes)
            completed = True
        finally:
            if completed:
                response.release()
            else:
                response.close()  # drop the connection: the provider stops generating

    async def _relay_stream(
        self,
        response: aiohttp.ClientResponse,
        exchange: Exchange,
        downstream: Downstream,
        headers: list[tuple[bytes, bytes]],
        capture_bytes: int,
    ) -> None:
        tap = SSETap(strip_usage_chunk=exchange.strip_usage_chunk)
        headers = [h for h in headers if h[0] not in _SSE_REPLACED]
        headers.extend(_SSE_HEADERS)
        captured = bytearray()
        await downstream.start(response.status, headers)
        try:
            with map_exceptions():
                async for chunk in response.content.iter_any():
                    if capture_bytes and len(captured) <= capture_bytes:
                        captured += chunk[: capture_bytes + 1 - len(captured)]
                    forward = tap.feed(chunk)
                    if forward:
                        exchange.mark_first_byte()
                        await downstream.body(forward, more=True)
            await downstream.body(tap.flush(), more=False)
        finally:
            exchange.usage = tap.usage
            exchange.response_model = tap.response_model
            exchange.completion_estimate = tap.events
            exchange.response_bytes = downstream.sent_bytes
            if capture_bytes:
                exchange.captured_response = bytes(captured)
            if tap.errored:
                exchange.fail("upstream_error", "stream_error")
        if response.status >= 400:
            exchange.fail("upstream_error", f"http_{response.status}")


async def _answer_error(
    err: GatewayError,
    exchange: Exchange,
    downstream: Downstream,
    id_header: list[tuple[bytes, bytes]],
) -> None:
    exchange.fail(err.outcome, err.code or err.type)
    exchange.status = exchange.status or err.status
    exchange.mark_first_byte()
    await downstream.error(err, id_header)


async def _relay_body(
    response: aiohttp.ClientResponse,
    exchange: Exchange,
    downstream: Downstream,
    headers: list[tuple[bytes, bytes]],
    capture_bytes: int,
) -> None:
    """A JSON answer from a metered API: read whole, usage taken from it, sent in one piece."""
    raw = await read_body(response)
    exchange.response_bytes = len(raw)
    if capture_bytes:
        exchange.captured_response = raw[: capture_bytes + 1]
    payload = _json(raw)
    if response.status < 400:
        exchange.usage = usage_from_payload(payload)
        exchange.response_model = model_from_payload(payload)
        if exchange.usage is None:
            exchange.completion_estimate = estimate_tokens(raw)
    else:
        exchange.fail("upstream_error", _upstream_error_type(payload, response.status))
    headers.append((b"content-length", str(len(raw)).encode()))
    exchange.mark_first_byte()
    await downstream.start(response.status, headers)
    await downstream.body(raw, more=False)


async def _relay_chunks(
    response: aiohttp.ClientResponse,
    exchange: Exchange,
    downstream: Downstream,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Any other answer (pass-through paths): streamed on as it arrives, never held whole."""
    await downstream.start(response.status, headers)
    exchange.mark_first_byte()
    with map_exceptions():
        async for chunk in response.content.iter_any():
            await downstream.body(chunk, more=True)
    await downstream.body(b"", more=False)
    exchange.response_bytes = downstream.sent_bytes
    if response.status >= 400:
        exchange.fail("upstream_error", f"http_{response.status}")


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _upstream_error_type(payload: Any, status: int) -> str:
    """The provider's error type (`rate_limit_error`, ...) when its body says, else the status."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        for key in ("type", "code"):
            if isinstance(error.get(key), str) and error[key]:
                return str(error[key])
    return f"http_{status}"
