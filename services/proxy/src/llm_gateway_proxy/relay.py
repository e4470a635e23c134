"""The answer's way back: from the attempt the router settled on to the client, noting usage.

OpenAI-format answers (openai, azure, every pass-through) go as they came: streams through the
SSE tap (which may remove the usage chunk the gateway asked for), metered JSON read whole,
anything else streamed on. Translated answers (anthropic) are rebuilt in OpenAI's shape:
errors, whole messages and streams (`providers/anthropic*.py`). Answers to the Messages API's
clients go by relay_messages.py.
The bytes the router already read from a stream (`Answer.prefetched`) go first.
"""

from __future__ import annotations

import time

import aiohttp

from llm_gateway_proxy.apis import Api
from llm_gateway_proxy.downstream import Downstream
from llm_gateway_proxy.errors import UpstreamIncomplete, UpstreamMalformed
from llm_gateway_proxy.exchange import Exchange
from llm_gateway_proxy.providers.anthropic_response import MalformedResponse, error_in, response_in
from llm_gateway_proxy.providers.anthropic_stream import SSEOverflow, SSEParser, StreamTranslator
from llm_gateway_proxy.relay_messages import relay_messages
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
from llm_gateway_proxy.streaming import SSETap, estimate_stream_tokens
from llm_gateway_proxy.upstream import (
    is_event_stream,
    map_exceptions,
    read_body,
    response_headers,
)
from llm_gateway_proxy.usage import estimate_tokens, model_from_payload, usage_from_payload

_USAGE_REPORT_BYTES = 1 << 20  # pass-through JSON answers up to this size are read for usage
# A stream's first bytes, kept in case it reports no usage: ~60 chat chunks, whose tokens per
# event are scaled to the whole stream (streaming.estimate_stream_tokens).
_ESTIMATE_SAMPLE_BYTES = 16 * 1024


async def relay(
    answer: Answer,
    api: Api | None,
    exchange: Exchange,
    downstream: Downstream,
    *,
    headers: Headers,
    capture_bytes: int,
) -> None:
    """Pass the answer to the client, noting usage on the way; always closes it."""
    response = answer.response
    exchange.status = response.status
    completed = False
    try:
        if api is not None and api.face == "anthropic":  # the Messages API (relay_messages.py)
            await relay_messages(answer, api, exchange, downstream, headers=headers,
                                 capture_bytes=capture_bytes)  # fmt: skip
        elif answer.choice.adapter.translates:
            exchange.upstream_request_id = response.headers.get("request-id")
            await _relay_translated(answer, exchange, downstream, headers, capture_bytes)
        else:
            exchange.upstream_request_id = response.headers.get("x-request-id")
            headers = merged(response_headers(response), headers)
            if is_event_stream(response):
                await _relay_stream(answer, exchange, downstream, headers, capture_bytes)
            elif api is None:
                await _relay_chunks(response, exchange, downstream, headers)
            else:
                await _relay_body(answer, exchange, downstream, headers, capture_bytes)
        completed = True
    finally:
        exchange.upstream_finished()
        if completed:
            response.release()
        else:
            response.close()  # drop the connection: the provider stops generating


async def _relay_stream(
    answer: Answer,
    exchange: Exchange,
    downstream: Downstream,
    headers: Headers,
    capture_bytes: int,
) -> None:
    response = answer.response
    exchange.strip_usage_chunk = answer.strip_usage_chunk
    tap = SSETap(strip_usage_chunk=answer.strip_usage_chunk)
    headers = [h for h in headers if h[0] not in SSE_REPLACED]
    headers.extend(SSE_HEADERS)
    captured = bytearray()
    sample = bytearray()
    await downstream.start(response.status, headers, event_stream=True)
    try:
        if answer.prefetched:
            if capture_bytes:
                captured += answer.prefetched[: capture_bytes + 1]
            sample += answer.prefetched[:_ESTIMATE_SAMPLE_BYTES]
            forward = tap.feed(answer.prefetched)
            if forward:
                exchange.mark_first_byte()
                await downstream.body(forward, more=True)
        with map_exceptions():
            async for chunk in response.content.iter_any():
                if capture_bytes and len(captured) <= capture_bytes:
                    captured += chunk[: capture_bytes + 1 - len(captured)]
                if len(sample) < _ESTIMATE_SAMPLE_BYTES:
                    sample += chunk[: _ESTIMATE_SAMPLE_BYTES - len(sample)]
                forward = tap.feed(chunk)
                if forward:
                    exchange.mark_first_byte()
                    await downstream.body(forward, more=True)
        await downstream.body(tap.flush(), more=False)
    finally:
        exchange.usage = tap.usage
        exchange.response_model = tap.response_model
        exchange.completion_estimate = (
            tap.events
            if tap.usage is not None
            else (estimate_stream_tokens(bytes(sample), tap.events, estimate_model(exchange)))
        )
        exchange.response_bytes = downstream.sent_bytes
        if capture_bytes:
            exchange.captured_response = bytes(captured)
        if tap.errored:
            exchange.fail("upstream_error", "stream_error")
    if response.status >= 400:
        exchange.fail("upstream_error", f"http_{response.status}")


async def _relay_body(
    answer: Answer,
    exchange: Exchange,
    downstream: Downstream,
    headers: Headers,
    capture_bytes: int,
) -> None:
    """A JSON answer from a metered API: read whole, usage taken from it, sent in one piece."""
    response = answer.response
    raw = answer.body if answer.body is not None else await read_body(response)
    payload = parse_json(raw)
    if response.status < 400:
        exchange.usage = usage_from_payload(payload)
        exchange.response_model = model_from_payload(payload)
        if exchange.usage is None:
            exchange.completion_estimate = estimate_tokens(raw, estimate_model(exchange))
    else:
        exchange.fail("upstream_error", upstream_error_type(payload, response.status))
    await send_whole(response.status, raw, exchange=exchange, downstream=downstream,
                      headers=headers, capture_bytes=capture_bytes)  # fmt: skip


async def _relay_chunks(
    response: aiohttp.ClientResponse,
    exchange: Exchange,
    downstream: Downstream,
    headers: Headers,
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
        payload = parse_json(bytes(tee))
        exchange.usage = usage_from_payload(payload)
        exchange.response_model = model_from_payload(payload)


# --- translated answers (anthropic) ------------------------------------------------------------


async def _relay_translated(
    answer: Answer,
    exchange: Exchange,
    downstream: Downstream,
    headers: Headers,
    capture_bytes: int,
) -> None:
    response = answer.response
    if response.status >= 400:
        sent = await read_body(response)
        status, raw = error_in(response.status, sent)
        exchange.status = status
        # The event names the provider's own type (`overloaded_error`), not the OpenAI one.
        exchange.fail("upstream_error", upstream_error_type(parse_json(sent), response.status))
        await send_whole(status, raw, exchange=exchange, downstream=downstream,
                         headers=[*error_headers(response), *headers],
                         capture_bytes=capture_bytes)  # fmt: skip
    elif is_event_stream(response):
        await _relay_translated_stream(answer, exchange, downstream, headers, capture_bytes)
    else:
        created = int(time.time())
        await send_translated(answer, lambda body: response_in(body, created=created),
                              metered="client", exchange=exchange, downstream=downstream,
                              headers=headers, capture_bytes=capture_bytes)  # fmt: skip


async def _relay_translated_stream(
    answer: Answer,
    exchange: Exchange,
    downstream: Downstream,
    headers: Headers,
    capture_bytes: int,
) -> None:
    translation = _Translation(answer, exchange, downstream, capture_bytes)
    await downstream.start(200, [EVENT_STREAM, *SSE_HEADERS, *headers], event_stream=True)
    try:
        with map_exceptions():
            async for chunk in stream_chunks(answer):
                await translation.feed(chunk)
                if translation.translator.finished:
                    break
        if not translation.translator.finished:
            raise UpstreamIncomplete("The upstream provider's stream ended before its end.")
        await downstream.body(b"", more=False)
    finally:
        translation.settle()


class _Translation:
    """One Messages stream on its way to the client as chat.completion chunks."""

    def __init__(
        self, answer: Answer, exchange: Exchange, downstream: Downstream, capture_bytes: int
    ) -> None:
        self.parser = SSEParser()
        self.translator = StreamTranslator(created=int(time.time()),
                                           include_usage=answer.include_usage)  # fmt: skip
        self.exchange = exchange
        self.downstream = downstream
        self.capture = Capture(capture_bytes)

    async def feed(self, chunk: bytes) -> None:
        try:
            events = self.parser.feed(chunk)
            out = b"".join(self.translator.feed(event.name, event.data) for event in events)
        except (MalformedResponse, SSEOverflow) as exc:
            raise UpstreamMalformed(f"The provider's stream was not usable: {exc}") from exc
        if any(event.name == "error" for event in events):
            self.exchange.fail("upstream_error", "stream_error")
        if out:
            self.capture.add(out)
            self.exchange.mark_first_byte()
            await self.downstream.body(out, more=True)

    def settle(self) -> None:
        """Note what the stream reported, however it ended."""
        exchange, translator = self.exchange, self.translator
        if translator.usage_reported:
            exchange.usage = usage_from_payload({"usage": translator.usage})
        exchange.response_model = translator.model or None
        exchange.response_bytes = self.downstream.sent_bytes
        self.capture.settle(exchange)
