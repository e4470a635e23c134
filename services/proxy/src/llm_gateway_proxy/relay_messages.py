"""Answers to the Messages API's clients (`/v1/messages`, `/v1/messages/count_tokens`).

    anthropic provider   passed on as it came: errors unmodified (Claude Code's recovery matches
                         on their wording), whole answers as sent, streams byte for byte through
                         a tap that reads usage from `message_start` and the cumulative
                         `message_delta`, and sees the first content event (the time to first
                         token) and the end (`message_stop`; a stream cut before it ends with an
                         `event: error`)
    openai, azure        chat/completions answers rebuilt as Messages
                         (providers/messages_openai_answer.py)

Usage is normalised as everywhere (prompt = input + cache reads + cache writes, the reads as
`cached_tokens`, the writes as `cache_write_tokens`).
"""

from __future__ import annotations

from typing import Any

from llm_gateway_proxy.apis import Api
from llm_gateway_proxy.downstream import Downstream
from llm_gateway_proxy.errors import UpstreamIncomplete, UpstreamMalformed
from llm_gateway_proxy.exchange import Exchange
from llm_gateway_proxy.providers.anthropic_response import MalformedResponse, usage
from llm_gateway_proxy.providers.anthropic_stream import SSEOverflow, SSEParser
from llm_gateway_proxy.providers.messages_openai import ToolNames
from llm_gateway_proxy.providers.messages_openai_answer import (
    ChatStreamTranslator,
    error_from_openai,
    response_from_chat,
)
from llm_gateway_proxy.replies import (
    EVENT_STREAM,
    SSE_HEADERS,
    SSE_REPLACED,
    Capture,
    Headers,
    error_headers,
    estimate_model,
    merged,
    parse_json,
    send_translated,
    send_whole,
    stream_chunks,
    upstream_error_type,
)
from llm_gateway_proxy.router import Answer
from llm_gateway_proxy.streaming import estimate_stream_tokens
from llm_gateway_proxy.upstream import is_event_stream, map_exceptions, read_body, response_headers
from llm_gateway_proxy.usage import Usage, model_from_payload, usage_from_payload

_ESTIMATE_SAMPLE_BYTES = 16 * 1024  # as relay.py: the first bytes of a stream without usage
# Events after which a client has content: a delta, or a block that opens with some.
_CONTENT_EVENTS = frozenset({"content_block_delta", "content_block_start"})


async def relay_messages(
    answer: Answer,
    api: Api,
    exchange: Exchange,
    downstream: Downstream,
    *,
    headers: Headers,
    capture_bytes: int,
) -> None:
    """Pass the answer to a Messages client (relay.py closes the response)."""
    response = answer.response
    if answer.choice.adapter.translates:  # an anthropic provider: its own format
        exchange.upstream_request_id = response.headers.get("request-id")
        headers = merged(response_headers(response), headers)
        if response.status < 400 and is_event_stream(response):
            await _relay_native_stream(answer, exchange, downstream, headers, capture_bytes)
        else:
            await _relay_native_body(answer, api, exchange, downstream, headers=headers,
                                     capture_bytes=capture_bytes)  # fmt: skip
        return
    exchange.upstream_request_id = response.headers.get("x-request-id")
    if response.status >= 400:
        await _relay_openai_error(answer, exchange, downstream, headers, capture_bytes)
    elif is_event_stream(response):
        await _relay_translated_stream(answer, exchange, downstream, headers, capture_bytes)
    else:
        await _relay_translated_body(answer, exchange, downstream, headers, capture_bytes)


# --- an anthropic provider: passed on ----------------------------------------------------------


async def _relay_native_body(
    answer: Answer,
    api: Api,
    exchange: Exchange,
    downstream: Downstream,
    *,
    headers: Headers,
    capture_bytes: int,
) -> None:
    """A whole answer or an error, as the provider sent it; usage read from a message."""
    response = answer.response
    raw = answer.body if answer.body is not None else await read_body(response)
    payload = parse_json(raw)
    if response.status >= 400:
        exchange.fail("upstream_error", upstream_error_type(payload, response.status))
    elif api.metered:
        exchange.usage = message_usage(payload)
        exchange.response_model = model_from_payload(payload)
    await send_whole(response.status, raw, exchange=exchange, downstream=downstream,
                     headers=headers, capture_bytes=capture_bytes)  # fmt: skip


async def _relay_native_stream(
    answer: Answer,
    exchange: Exchange,
    downstream: Downstream,
    headers: Headers,
    capture_bytes: int,
) -> None:
    tap = MessagesTap()
    headers = [h for h in headers if h[0] not in SSE_REPLACED]
    headers.extend(SSE_HEADERS)
    capture = Capture(capture_bytes)
    await downstream.start(answer.response.status, headers, event_stream=True)
    try:
        with map_exceptions():
            async for chunk in stream_chunks(answer):
                capture.add(chunk)
                tap.feed(chunk)
                await downstream.body(chunk, more=True)
                if tap.content_started:
                    exchange.mark_first_byte()  # the first content event: time to first token
        if not tap.finished:
            raise UpstreamIncomplete("The upstream provider's stream ended before its end.")
        await downstream.body(b"", more=False)
    finally:
        if tap.usage:
            exchange.usage = usage_from_payload({"usage": usage(tap.usage)})
        exchange.response_model = tap.model
        exchange.response_bytes = downstream.sent_bytes
        capture.settle(exchange)
        if tap.errored:
            exchange.fail("upstream_error", "stream_error")


class MessagesTap:
    """Watches a Messages stream passing through untouched: its usage (message_start's, then
    message_delta's counts, which are CUMULATIVE: the latest replaces), its model, whether
    content began, and whether it ended (message_stop, or an error event)."""

    __slots__ = ("_blind", "_parser", "content_started", "errored", "finished", "model", "usage")

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._blind = False  # an event outgrew the parser's bound: bytes pass, nothing is read
        self.usage: dict[str, Any] = {}
        self.model: str | None = None
        self.content_started = False
        self.finished = False
        self.errored = False

    def feed(self, chunk: bytes) -> None:
        if self._blind:
            return
        try:
            events = self._parser.feed(chunk)
        except SSEOverflow:
            self._blind = self.finished = True  # unreadable, not cut: the client judges it
            return
        for event in events:
            name = event.name
            if name in _CONTENT_EVENTS:
                self.content_started = self.content_started or _has_content(name, event.data)
            elif name == "message_start":
                message = _object(event.data).get("message")
                if isinstance(message, dict):
                    self._count(message.get("usage"))
                    model = message.get("model")
                    self.model = model if isinstance(model, str) else None
            elif name == "message_delta":
                self._count(_object(event.data).get("usage"))
            elif name == "message_stop":
                self.finished = True
            elif name == "error":
                self.finished = self.errored = True

    def _count(self, counts: Any) -> None:
        if isinstance(counts, dict):
            self.usage.update({k: v for k, v in counts.items() if isinstance(v, int)})


def message_usage(payload: Any) -> Usage | None:
    """The normalised usage of a Messages `message` (or None when it has none)."""
    counts = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(counts, dict):
        return None
    return usage_from_payload({"usage": usage(counts)})


def _has_content(name: str, data: bytes) -> bool:
    if name == "content_block_delta":
        return True
    block = _object(data).get("content_block")
    if not isinstance(block, dict):
        return True
    kind = block.get("type")
    return kind == "tool_use" or (kind == "text" and bool(block.get("text")))


def _object(data: bytes) -> dict[str, Any]:
    loaded = parse_json(data)
    return loaded if isinstance(loaded, dict) else {}


# --- an openai or azure provider: translated ---------------------------------------------------


async def _relay_openai_error(
    answer: Answer,
    exchange: Exchange,
    downstream: Downstream,
    headers: Headers,
    capture_bytes: int,
) -> None:
    """The provider's error in Anthropic's shape, its status and Retry-After kept."""
    response = answer.response
    sent = answer.body if answer.body is not None else await read_body(response)
    exchange.fail("upstream_error", upstream_error_type(parse_json(sent), response.status))
    raw = error_from_openai(response.status, sent)
    await send_whole(response.status, raw, exchange=exchange, downstream=downstream,
                     headers=[*error_headers(response), *headers],
                     capture_bytes=capture_bytes)  # fmt: skip


async def _relay_translated_body(
    answer: Answer,
    exchange: Exchange,
    downstream: Downstream,
    headers: Headers,
    capture_bytes: int,
) -> None:
    names = answer.tool_names or ToolNames()
    model = exchange.model or ""
    await send_translated(
        answer, lambda body: response_from_chat(body, model=model, names=names),
        metered="provider", exchange=exchange, downstream=downstream, headers=headers,
        capture_bytes=capture_bytes,
    )  # fmt: skip


async def _relay_translated_stream(
    answer: Answer,
    exchange: Exchange,
    downstream: Downstream,
    headers: Headers,
    capture_bytes: int,
) -> None:
    parser = SSEParser()
    translator = ChatStreamTranslator(
        model=exchange.model or "", names=answer.tool_names or ToolNames(),
        message_id=f"msg_{exchange.request_id}",
    )  # fmt: skip
    capture = Capture(capture_bytes)
    sample = bytearray()
    events = 0
    await downstream.start(200, [EVENT_STREAM, *SSE_HEADERS, *headers], event_stream=True)
    try:
        with map_exceptions():
            async for chunk in stream_chunks(answer):
                if len(sample) < _ESTIMATE_SAMPLE_BYTES:
                    sample += chunk[: _ESTIMATE_SAMPLE_BYTES - len(sample)]
                try:
                    parsed = parser.feed(chunk)
                    events += len(parsed)
                    out = b"".join(translator.feed(event) for event in parsed)
                except (MalformedResponse, SSEOverflow) as exc:
                    raise UpstreamMalformed(f"The provider's stream was not usable: {exc}") from exc
                if out:
                    capture.add(out)
                    await downstream.body(out, more=True)
                    if translator.content_started:
                        exchange.mark_first_byte()
                if translator.finished:
                    break
        if not translator.finished:
            raise UpstreamIncomplete("The upstream provider's stream ended before its end.")
        await downstream.body(b"", more=False)
    finally:
        if translator.usage_reported:
            exchange.usage = usage_from_payload({"usage": usage(translator.usage)})
        else:
            model = estimate_model(exchange)
            exchange.completion_estimate = estimate_stream_tokens(bytes(sample), events, model)
        exchange.response_bytes = downstream.sent_bytes
        capture.settle(exchange)
        if translator.errored:
            exchange.fail("upstream_error", "stream_error")
