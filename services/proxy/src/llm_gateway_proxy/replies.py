"""What every relay shares (relay.py, relay_messages.py): whole answers, headers, and the
readings of an answer that do not depend on its API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import aiohttp
import orjson

from llm_gateway_proxy.downstream import Downstream
from llm_gateway_proxy.errors import UpstreamMalformed
from llm_gateway_proxy.exchange import Exchange
from llm_gateway_proxy.providers.anthropic_response import MalformedResponse
from llm_gateway_proxy.router import NO_RETRY, Answer
from llm_gateway_proxy.upstream import read_body
from llm_gateway_proxy.usage import model_from_payload, usage_from_payload

Headers = list[tuple[bytes, bytes]]

# Keep every intermediary (nginx, ingress controllers, CDNs) from buffering or compressing SSE.
SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
SSE_REPLACED = frozenset({b"cache-control", b"x-accel-buffering"})
JSON_HEADER = (b"content-type", b"application/json")
EVENT_STREAM = (b"content-type", b"text/event-stream; charset=utf-8")


async def send_whole(
    status: int,
    raw: bytes,
    *,
    exchange: Exchange,
    downstream: Downstream,
    headers: Headers,
    capture_bytes: int,
) -> None:
    exchange.response_bytes = len(raw)
    if capture_bytes:
        exchange.captured_response = raw[: capture_bytes + 1]
    headers.append((b"content-length", str(len(raw)).encode()))
    exchange.mark_first_byte()
    await downstream.start(status, headers)
    await downstream.body(raw, more=False)


async def send_translated(
    answer: Answer,
    translate: Callable[[bytes], bytes],
    *,
    metered: Literal["provider", "client"],
    exchange: Exchange,
    downstream: Downstream,
    headers: Headers,
    capture_bytes: int,
) -> None:
    """A whole 200 answer rebuilt in the client's format by `translate` (MalformedResponse:
    a 502), metered from its OpenAI-shaped side: the `provider`'s answer or the `client`'s."""
    body = answer.body if answer.body is not None else await read_body(answer.response)
    try:
        raw = translate(body)
    except MalformedResponse as exc:
        raise UpstreamMalformed(f"The provider's answer was not usable: {exc}") from exc
    payload = orjson.loads(body if metered == "provider" else raw)
    exchange.usage = usage_from_payload(payload)
    exchange.response_model = model_from_payload(payload)
    await send_whole(200, raw, exchange=exchange, downstream=downstream,
                     headers=[JSON_HEADER, *headers], capture_bytes=capture_bytes)  # fmt: skip


def merged(provider: Headers, ours: Headers) -> Headers:
    """The provider's headers, then the gateway's: where the gateway says whether to retry, the
    provider's say is dropped (a client would read both and retry)."""
    if NO_RETRY in ours:
        provider = [h for h in provider if h[0] != b"x-should-retry"]
    return provider + ours


def estimate_model(exchange: Exchange) -> str | None:
    """The model whose tokenizer an estimate uses: the upstream's name, else the client's."""
    return exchange.upstream_model or exchange.response_model or exchange.model


def parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def upstream_error_type(payload: Any, status: int) -> str:
    """The provider's error type (`rate_limit_error`, ...) when its body says, else the status."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        for key in ("type", "code"):
            if isinstance(error.get(key), str) and error[key]:
                return str(error[key])
    return f"http_{status}"


def error_headers(response: aiohttp.ClientResponse) -> Headers:
    """The headers of an error the gateway rebuilt in its client's shape: JSON, and the
    provider's Retry-After (a 429's, for the client's SDK)."""
    wait = response.headers.get("retry-after")
    return [JSON_HEADER, (b"retry-after", wait.encode("latin-1"))] if wait else [JSON_HEADER]


async def stream_chunks(answer: Answer) -> AsyncIterator[bytes]:
    """A stream's bytes: those the router already read, then the rest as they arrive."""
    if answer.prefetched:
        yield answer.prefetched
    async for chunk in answer.response.content.iter_any():
        yield chunk


class Capture:
    """The first bytes of what a client was sent, up to `limit` + 1 (CAPTURE_PAYLOADS; the one
    more says it was cut); nothing when the limit is 0."""

    __slots__ = ("kept", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()

    def add(self, chunk: bytes) -> None:
        if self.limit and len(self.kept) <= self.limit:
            self.kept += chunk[: self.limit + 1 - len(self.kept)]

    def settle(self, exchange: Exchange) -> None:
        if self.limit:
            exchange.captured_response = bytes(self.kept)
