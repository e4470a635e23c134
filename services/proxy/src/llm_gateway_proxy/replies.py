"""What every relay shares (relay.py, relay_messages.py): whole answers, headers, and the
readings of an answer that do not depend on its API."""

from __future__ import annotations

from typing import Any

import orjson

from llm_gateway_proxy.downstream import Downstream
from llm_gateway_proxy.exchange import Exchange
from llm_gateway_proxy.router import NO_RETRY

Headers = list[tuple[bytes, bytes]]

# Keep every intermediary (nginx, ingress controllers, CDNs) from buffering or compressing SSE.
SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
SSE_REPLACED = frozenset({b"cache-control", b"x-accel-buffering"})
JSON_HEADER = (b"content-type", b"application/json")


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
