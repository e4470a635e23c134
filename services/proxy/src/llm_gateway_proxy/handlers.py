"""The proxy's request handler: one ASGI callable for every `/v1/*` request.

Every request reads top to bottom: resolve the path -> authenticate -> read the body ->
validate -> authorize and admit -> forward -> relay -> meter.
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

from llm_gateway_proxy.apis import (
    Api,
    client_asked_for_usage,
    passthrough_model,
    wants_stream,
    with_usage_requested,
)
from llm_gateway_proxy.downstream import ClientDisconnected, Downstream, Receive, Send
from llm_gateway_proxy.errors import GatewayError, MissingParameter, ModelNotAllowed, NotFound
from llm_gateway_proxy.exchange import Exchange
from llm_gateway_proxy.gateway import Gateway
from llm_gateway_proxy.keys import KeyRecord
from llm_gateway_proxy.paths import PathTable, Target
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
_MAX_ENDPOINT = 256  # an unknown path is recorded cut to this length
_USAGE_REPORT_BYTES = 1 << 20  # pass-through JSON answers up to this size are read for usage

log = structlog.get_logger("llm_gateway.proxy")


class ProxyHandler:
    """Serves every `/v1/*` request: the path (already canonical, `paths.py`) picks an API we
    meter or an allowed pass-through; anything else is 404 once the caller is authenticated."""

    def __init__(self, paths: PathTable) -> None:
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway: Gateway = scope["state"]["gateway"]
        target = self.paths.resolve(scope["method"], scope["path"])
        endpoint = target.endpoint if target is not None else scope["path"][:_MAX_ENDPOINT]
        exchange = Exchange(
            gateway.ids.pair(), scope["headers"], endpoint, scope["method"],
            gateway.settings.provider, metered=target is not None and target.api is not None,
        )  # fmt: skip
        downstream = Downstream(receive, send)
        try:
            await self._serve(gateway, scope, target, exchange, downstream)
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
        self,
        gateway: Gateway,
        scope: Scope,
        target: Target | None,
        exchange: Exchange,
        downstream: Downstream,
    ) -> None:
        id_header = [(b"x-llm-request-id", exchange.request_id.encode())]
        try:
            key = await gateway.access.authenticate(scope["headers"])
            if key is not None:
                exchange.key = key
                exchange.tenant = gateway.access.tenant(key, exchange.requested_tenant)
            if target is None:
                raise NotFound(f"Unknown request URL: {scope['method']} {exchange.endpoint}.")
            response = await self._forward(gateway, scope, target, exchange, downstream, key=key)
            exchange.upstream_called = True
            await _relay(response, target.api, exchange, downstream, id_header=id_header,
                         capture_bytes=gateway.settings.metering_capture_bytes)  # fmt: skip
        except GatewayError as err:
            await _answer_error(err, exchange, downstream, id_header)
        except ClientDisconnected:
            exchange.fail("client_disconnected", "client_disconnected")
        except Exception as exc:
            log.exception("handler_failed", request_id=exchange.request_id)
            internal = GatewayError(f"The gateway failed the request ({type(exc).__name__}).")
            await _answer_error(internal, exchange, downstream, id_header)

    async def _forward(
        self,
        gateway: Gateway,
        scope: Scope,
        target: Target,
        exchange: Exchange,
        downstream: Downstream,
        *,
        key: KeyRecord | None,
    ) -> aiohttp.ClientResponse:
        """Read and check the request, admit it, send it; returns once the answer's headers are
        in. The body lives only as long as this call (the exchange keeps what metering needs)."""
        settings = gateway.settings
        upstream = gateway.upstream
        url = upstream.url(target.forward_path, scope["query_string"])
        headers = upstream.headers(scope["headers"])
        body = await downstream.read_body(settings.max_request_body_bytes, scope["headers"])
        exchange.keep_request(body, settings.metering_capture_bytes)
        if target.api is not None:
            body = _prepare(target.api, body, exchange)
        else:
            exchange.model = passthrough_model(body, _header(scope["headers"], b"content-type"))
        if key is not None:
            gateway.access.authorize_model(key, exchange.model)
            if exchange.model is None and target.runs_a_model(scope["method"]):
                _require_named_model(key)
            exchange.tenant_limits = await gateway.access.admit(key)
        downstream.watch_disconnect()
        return await upstream.send(scope["method"], url, headers, body)


def _prepare(api: Api, body: bytes, exchange: Exchange) -> bytes:
    """Validate a metered API's body; return what to send (with usage asked for, if needed)."""
    request = api.parse(body)
    if not request.model:
        raise MissingParameter("Missing required parameter: 'model'.", param="model")
    exchange.model = request.model
    exchange.user = request.user
    exchange.stream = wants_stream(request)
    if not (exchange.stream and api.usage_on_request) or client_asked_for_usage(request):
        return body
    exchange.strip_usage_chunk = True
    return with_usage_requested(body, request)


async def _relay(
    response: aiohttp.ClientResponse,
    api: Api | None,
    exchange: Exchange,
    downstream: Downstream,
    *,
    id_header: list[tuple[bytes, bytes]],
    capture_bytes: int,
) -> None:
    """Pass the upstream's answer to the client, noting usage on the way; always closes it."""
    exchange.status = response.status
    exchange.upstream_request_id = response.headers.get("x-request-id")
    headers = response_headers(response)
    headers.extend(id_header)
    completed = False
    try:
        if is_event_stream(response):
            await _relay_stream(response, exchange, downstream, headers, capture_bytes)
        elif api is None:
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
    await downstream.start(response.status, headers, event_stream=True)
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
    """Any other answer (pass-through paths): streamed on as it arrives, never held whole. A
    JSON answer small enough to be a usage report (images, audio) is also read for its usage."""
    await downstream.start(response.status, headers)
    exchange.mark_first_byte()
    tee: bytearray | None = bytearray() if response.content_type == "application/json" else None
    with map_exceptions():
        async for chunk in response.content.iter_any():
            if tee is not None:
                if len(tee) + len(chunk) <= _USAGE_REPORT_BYTES:
                    tee += chunk
                else:
                    tee = None
            await downstream.body(chunk, more=True)
    await downstream.body(b"", more=False)
    exchange.response_bytes = downstream.sent_bytes
    if response.status >= 400:
        exchange.fail("upstream_error", f"http_{response.status}")
    elif tee:
        payload = _json(bytes(tee))
        exchange.usage = usage_from_payload(payload)
        exchange.response_model = model_from_payload(payload)


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _require_named_model(key: KeyRecord) -> None:
    """A key limited to some models may not run one the request does not name."""
    if "*" not in key.models:
        raise ModelNotAllowed(
            "This API key may only use named models; this request does not name one.",
            param="model",
        )


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""


def _upstream_error_type(payload: Any, status: int) -> str:
    """The provider's error type (`rate_limit_error`, ...) when its body says, else the status."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        for key in ("type", "code"):
            if isinstance(error.get(key), str) and error[key]:
                return str(error[key])
    return f"http_{status}"
