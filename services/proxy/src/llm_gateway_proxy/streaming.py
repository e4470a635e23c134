"""Server-sent events passing through the gateway: watched, never rewritten, but for one chunk.

The tap looks at each upstream chunk as it is forwarded. It finds the response model and the
usage the provider reports, and, when the gateway added `stream_options.include_usage` on the
client's behalf, removes the usage-only chunk (`"choices": []`) the client did not ask for.

Bytes are forwarded as soon as they arrive. Only when a chunk may have to be removed does the tap
hold back an incomplete trailing event until its end arrives (upstreams send whole events, so in
practice nothing waits).

Parsing JSON is what costs, so complete events are only parsed when they may say something: until
the response model is known, and when they hold a `"usage"` that is not null or an `"error"`.
Every chunk of a stream with `include_usage` (which the gateway adds) carries `"usage":null`, so
the test counts occurrences rather than looking for the key (`bench/sse_tap.py` measures it).

A stream that reports no usage is estimated from the deltas in its first bytes, counted with the
model family's tokenizer (`estimate_stream_tokens`, tokencount.py).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from llm_gateway_proxy.tokencount import PROCESS_COUNTER, TokenCounter
from llm_gateway_proxy.usage import Usage, model_from_payload, usage_from_payload

_USAGE = b'"usage"'
_USAGE_NULL = b'"usage":null'  # as OpenAI writes it
_USAGE_SPACED_NULL = b'"usage": null'  # as Python's json.dumps does (vLLM and others)
_ERROR = b'"error"'
_DATA = b"data:"
_CRLF_EVENT = re.compile(rb".*?(?:\r\n\r\n|\n\n)|.+$", re.S)


# The largest event the tap holds back whole (Responses API `response.completed` events carry the
# whole response, image generation events a base64 image: megabytes, not more).
MAX_EVENT_BYTES = 32 * 1024 * 1024


class SSETap:
    """Watch an SSE byte stream; `feed` returns what to forward to the client now."""

    __slots__ = (
        "_blind", "_pending", "_strip_usage_chunk", "errored", "events", "response_model", "usage"
    )  # fmt: skip

    def __init__(self, *, strip_usage_chunk: bool) -> None:
        self._strip_usage_chunk = strip_usage_chunk
        self._pending = b""
        self._blind = False  # an event outgrew MAX_EVENT_BYTES: bytes pass, nothing is read
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.events = 0
        self.errored = False

    def feed(self, chunk: bytes) -> bytes:
        if self._blind:
            return chunk
        buffer = self._pending + chunk if self._pending else chunk
        end = _last_boundary(buffer)
        if end < 0:
            if len(buffer) > MAX_EVENT_BYTES:
                return self._go_blind(buffer, chunk)
            self._pending = buffer
            return chunk if not self._strip_usage_chunk else b""
        complete, self._pending = buffer[:end], buffer[end:]
        self.events += complete.count(b"\n\n") or complete.count(b"\r\n\r\n") or 1
        if self.response_model is None or _may_carry_usage(complete) or _ERROR in complete:
            kept = self._inspect(complete)
        else:
            kept = complete
        if not self._strip_usage_chunk:
            return chunk
        return kept

    def _go_blind(self, buffer: bytes, chunk: bytes) -> bytes:
        """An upstream that never ends its event (broken or hostile) must not make the gateway
        hold it in memory: forward what is held and stop reading the stream."""
        self._blind = True
        self._pending = b""
        forward = buffer if self._strip_usage_chunk else chunk
        self._strip_usage_chunk = False
        return forward

    def flush(self) -> bytes:
        """Whatever is still held back when the upstream ends."""
        rest, self._pending = self._pending, b""
        return rest if self._strip_usage_chunk else b""

    def _inspect(self, complete: bytes) -> bytes:
        kept: list[bytes] = []
        dropped = False
        for event in _split_events(complete):
            payload = _data_payload(event)
            if payload is None:
                kept.append(event)
                continue
            if self.response_model is None:
                self.response_model = model_from_payload(payload)
            if isinstance(payload, dict) and "error" in payload and payload.get("error"):
                self.errored = True
            if _may_carry_usage(event):
                usage = usage_from_payload(payload)
                if usage is not None:
                    self.usage = usage
                    if self._strip_usage_chunk and payload.get("choices") == []:
                        dropped = True
                        continue
            kept.append(event)
        return b"".join(kept) if dropped else complete


def estimate_stream_tokens(
    sample: bytes, events: int, model: str | None, counter: TokenCounter = PROCESS_COUNTER
) -> int:
    """Completion tokens of an SSE stream that reported no usage. `sample` is the stream's
    first bytes and `events` how many events it had in all: the text of the sample's deltas is
    counted with `model`'s tokenizer and, if the sample was cut short, scaled to all the events.
    One token per event (a chunk is about one token) until the tokenizer is loaded."""
    complete = sample.replace(b"\r\n", b"\n").split(b"\n\n")
    if complete and not sample.endswith((b"\n\n", b"\r\n\r\n")):
        complete.pop()  # the event the sample cut, or an unterminated last one
    sampled = [event for event in complete if event.strip()]
    parts: list[str] = []
    for event in sampled:
        _delta_text(_data_payload(event), parts)
    tokens = counter.count(["".join(parts)], model)
    if tokens is None:
        return events
    if sampled and len(sampled) < events:
        return round(tokens * events / len(sampled))
    return tokens


def _delta_text(payload: Any, parts: list[str]) -> None:
    """Append the generated text one stream event carries: chat deltas (content, reasoning, tool
    call arguments), completions' text, the Responses API's `*.delta` events (never the whole
    text that `response.completed` repeats)."""
    if not isinstance(payload, dict):
        return
    kind = payload.get("type")
    if isinstance(kind, str):
        delta = payload.get("delta")
        if kind.endswith(".delta") and isinstance(delta, str):
            parts.append(delta)
        return
    choices = payload.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        for key in ("reasoning_content", "reasoning", "content"):
            if isinstance(delta.get(key), str):
                parts.append(delta[key])
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                parts.append(function["arguments"])


def _may_carry_usage(data: bytes) -> bool:
    """Whether some `"usage"` in `data` is not null. Byte counts, C speed; a false positive
    (`"usage"` as a string value, other spacing) only costs a parse."""
    found = data.count(_USAGE)
    if not found:
        return False
    nulls = data.count(_USAGE_NULL)
    return found > nulls and found > nulls + data.count(_USAGE_SPACED_NULL)  # 3rd scan rarely


def _last_boundary(buffer: bytes) -> int:
    """Index just past the last complete event (`\\n\\n` or `\\r\\n\\r\\n`), or -1."""
    lf = buffer.rfind(b"\n\n")
    end = -1 if lf < 0 else lf + 2
    if b"\r" in buffer:
        crlf = buffer.rfind(b"\r\n\r\n")
        if crlf >= 0:
            end = max(end, crlf + 4)
    return end


def _split_events(complete: bytes) -> list[bytes]:
    """Complete events, each with its trailing blank line, so joining them restores the bytes."""
    if b"\r" in complete:
        return _CRLF_EVENT.findall(complete)
    parts = complete.split(b"\n\n")
    events = [part + b"\n\n" for part in parts[:-1]]
    if parts[-1]:
        events.append(parts[-1])
    return events


def _data_payload(event: bytes) -> Any:
    """The JSON of an event's `data:` lines, or None (comments, `[DONE]`, non-JSON)."""
    data_lines = [
        line[5:].lstrip(b" ")
        for line in event.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(_DATA)
    ]
    if not data_lines:
        return None
    data = b"\n".join(data_lines)
    if not data or data == b"[DONE]":
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
