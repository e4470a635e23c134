"""How a 200 stream starts: with content (commit to it), or with an error before any content
(a failed attempt the router may still retry elsewhere, REFERENCE.md section 8).

The router feeds the first network chunks of a stream to a `StreamStart` until it answers
something other than WAIT; only then does any byte reach the client. The chunks are kept and
relayed as they came: this only decides, it never rewrites.

OpenAI-format streams (openai, azure, vLLM, OpenRouter, ...): role-only chunks, Azure's
prompt-filter chunk (`"choices": []`), SSE comments and Responses API set-up events carry no
content yet; an `error` member, a Responses `error`/`response.failed` event, is an error.
Anthropic streams: `message_start`, `ping` and the start of a block with nothing in it yet (the
empty text block, a thinking block) come before content; `event: error` is an error.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import orjson

from llm_gateway_proxy.providers.anthropic_stream import SSEEvent, SSEOverflow, SSEParser

# Past this many bytes without a verdict, commit: a start is never this long.
MAX_START_BYTES = 64 * 1024


class Verdict(Enum):
    WAIT = "wait"
    CONTENT = "content"
    ERROR = "error"


class StreamStart:
    """Feed chunks until the verdict is not WAIT; `error` holds the error object, if any."""

    def __init__(self) -> None:
        self._parser = SSEParser(MAX_START_BYTES)
        self._seen = 0
        self.error: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> Verdict:
        self._seen += len(chunk)
        try:
            events = self._parser.feed(chunk)
        except SSEOverflow:
            return Verdict.CONTENT
        for event in events:
            verdict = self._event(event)
            if verdict is not Verdict.WAIT:
                return verdict
        return Verdict.CONTENT if self._seen > MAX_START_BYTES else Verdict.WAIT

    def _event(self, event: SSEEvent) -> Verdict:
        raise NotImplementedError


class OpenAIStart(StreamStart):
    _SETUP = frozenset({"response.created", "response.in_progress", "response.queued"})

    def _event(self, event: SSEEvent) -> Verdict:
        if event.data == b"[DONE]":
            return Verdict.CONTENT
        payload = _json(event.data)
        if not isinstance(payload, dict):
            return Verdict.CONTENT  # not ours to judge: the client gets it as it is
        error = payload.get("error")
        kind = payload.get("type")
        if error or kind in ("error", "response.failed") or event.name == "error":
            self.error = error if isinstance(error, dict) else {"message": str(error or kind)}
            return Verdict.ERROR
        if isinstance(kind, str):  # the Responses API: set-up events, then output
            return Verdict.WAIT if kind in self._SETUP else Verdict.CONTENT
        if payload.get("usage"):
            return Verdict.CONTENT
        choices = payload.get("choices")
        if not isinstance(choices, list):
            return Verdict.CONTENT  # not the format: the client gets it as it is
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("finish_reason") or choice.get("text"):
                return Verdict.CONTENT
            delta = choice.get("delta")
            if isinstance(delta, dict) and any(
                delta.get(k) for k in ("content", "tool_calls", "function_call", "refusal",
                                       "reasoning_content", "reasoning")
            ):  # fmt: skip
                return Verdict.CONTENT
        return Verdict.WAIT  # a role-only or prompt-filter chunk


class AnthropicStart(StreamStart):
    def _event(self, event: SSEEvent) -> Verdict:
        if event.name in ("message_start", "ping"):
            return Verdict.WAIT
        if event.name == "content_block_start" and not _opens_with_content(event.data):
            return Verdict.WAIT  # the empty text block every answer opens with: nothing yet
        if event.name == "error":
            payload = _json(event.data)
            error = payload.get("error") if isinstance(payload, dict) else None
            self.error = error if isinstance(error, dict) else {"message": "stream error"}
            return Verdict.ERROR
        return Verdict.CONTENT


def _opens_with_content(data: bytes) -> bool:
    """Whether a `content_block_start` gives the client something: a tool call's id and name,
    or text (the API opens text blocks empty); an event not understood counts as content."""
    payload = _json(data)
    block = payload.get("content_block") if isinstance(payload, dict) else None
    if not isinstance(block, dict):
        return True
    kind = block.get("type")
    return kind == "tool_use" or (kind == "text" and bool(block.get("text")))


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
