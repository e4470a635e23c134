"""Anthropic's streamed Messages events in, OpenAI `chat.completion.chunk` SSE out. No I/O.

    SSEParser.feed(network bytes)          -> [SSEEvent(name, data), ...]
    StreamTranslator.feed(name, data)      -> OpenAI SSE bytes (often b"")

Anthropic streams `message_start`, then per content block `content_block_start|delta|stop`,
then `message_delta` (stop_reason, CUMULATIVE output_tokens) and `message_stop`, with `ping`
anywhere and `error` possible after the 200. OpenAI clients expect a role chunk first, tool
call fragments indexed by the count of tool calls (not Anthropic's block index), the
finish_reason chunk, the usage-only chunk when `include_usage` was asked, then `[DONE]`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from llm_gateway_proxy.providers.anthropic import JSONObject
from llm_gateway_proxy.providers.anthropic_response import (
    MalformedResponse,
    error_object,
    finish_reason,
    usage,
)

DONE = b"data: [DONE]\n\n"
MAX_EVENT_BYTES = 32 * 1024 * 1024


class SSEEvent(NamedTuple):
    name: str
    data: bytes


class SSEOverflow(ValueError):
    """One event grew past the parser's bound without ending."""


class SSEParser:
    """Server-sent events from a byte stream split anywhere (the WHATWG framing rules)."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self._name = ""
        self._data: list[bytes] = []
        self._size = 0
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events that `chunk` completes, in order."""
        buffer = self._buffer + chunk
        # A trailing CR may be the first half of CRLF: wait for the next chunk to tell.
        hold = buffer.endswith(b"\r")
        if hold:
            buffer = buffer[:-1]
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, rest = buffer.split(b"\n")
        self._buffer = rest + b"\r" if hold else rest
        events: list[SSEEvent] = []
        # One loop with locals, not a method call per line: this runs for every event.
        name, data, size = self._name, self._data, self._size
        for line in lines:
            if not line:
                if data:
                    events.append(SSEEvent(name or "message", b"\n".join(data)))
                name, data, size = "", [], 0
                continue
            field, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                data.append(value)
                size += len(value) + 1
            elif field == b"event":
                name = value.decode("utf-8", "replace")
            # comments (":"), id and retry do not matter here
        self._name, self._data, self._size = name, data, size
        if size + len(self._buffer) > self._max:
            raise SSEOverflow(f"an SSE event outgrew {self._max} bytes")
        return events


class StreamTranslator:
    """One streamed answer's translation; feed it every event in order.

    `content_started` tells the router whether a client already got content (after that a
    failure cannot be retried elsewhere); `usage` is the OpenAI usage seen so far, for metering.
    `json_tool` names the forced tool of `json_schema_mode="tool"`: its input streams as text.
    """

    def __init__(
        self,
        *,
        created: int,
        include_usage: bool,
        model: str | None = None,
        json_tool: str | None = None,
    ) -> None:
        self.created = created
        self.include_usage = include_usage
        self.model = model
        self.json_tool = json_tool
        self.content_started = False
        self.finished = False
        self.usage: JSONObject = usage({})
        self._anthropic_usage: JSONObject = {}
        self._id = ""
        self._prefix = b""  # 'data: {"id":...,"choices":[{"index":0,"delta":' for this stream
        self._suffix = b',"logprobs":null,"finish_reason":null}]}\n\n'
        self._tools = 0  # tool_use blocks seen: OpenAI's tool call index
        self._blocks: dict[int, int | None] = {}  # block index -> tool index (None: text)

    @property
    def usage_reported(self) -> bool:
        """Whether the provider reported any usage yet (message_start or message_delta)."""
        return bool(self._anthropic_usage)

    def feed(self, name: str, data: bytes) -> bytes:
        """OpenAI SSE bytes for one Anthropic event (b"" for those that carry nothing).

        An event that is not what the Messages format says raises `MalformedResponse`.
        """
        if self.finished:
            return b""
        try:
            return self._event(name, data)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise MalformedResponse(f"the provider sent a malformed {name!r} event") from exc

    def _event(self, name: str, data: bytes) -> bytes:
        if name == "content_block_delta":  # the hot path: most events are deltas
            return self._delta(orjson.loads(data))
        if name == "ping":
            return b""
        if name == "message_start":
            return self._start(orjson.loads(data)["message"])
        if name == "content_block_start":
            return self._block_start(orjson.loads(data))
        if name == "message_delta":
            return self._message_delta(orjson.loads(data))
        if name == "message_stop":
            return self._stop()
        if name == "error":
            return self._error(orjson.loads(data))
        return b""  # content_block_stop, and event types added later (Anthropic's versioning)

    def _start(self, message: JSONObject) -> bytes:
        self._id = message.get("id", "")
        self.model = self.model or message.get("model", "")
        head = {"id": self._id, "object": "chat.completion.chunk", "created": self.created}
        head["model"] = self.model
        # Every content chunk shares this head: build it once, splice each delta in.
        self._prefix = b"data: " + orjson.dumps(head)[:-1] + b',"choices":[{"index":0,"delta":'
        if self.include_usage:
            self._suffix = b',"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
        self._count(message.get("usage") or {})
        return self._chunk(b'{"role":"assistant","content":""}')

    def _block_start(self, event: JSONObject) -> bytes:
        block = event["content_block"]
        index = event["index"]
        if block.get("type") != "tool_use" or block.get("name") == self.json_tool:
            self._blocks[index] = None
            text = block.get("text") if block.get("type") == "text" else None
            return self._text(text) if text else b""
        tool = self._tools
        self._tools += 1
        self._blocks[index] = tool
        self.content_started = True
        call = {
            "index": tool,
            "id": block["id"],
            "type": "function",
            "function": {"name": block["name"], "arguments": ""},
        }
        return self._chunk(orjson.dumps({"tool_calls": [call]}))

    def _delta(self, event: JSONObject) -> bytes:
        delta = event["delta"]
        kind = delta.get("type")
        if kind == "text_delta":
            return self._text(delta["text"])
        if kind != "input_json_delta" or not delta["partial_json"]:
            return b""  # thinking and signature deltas have no chat/completions form
        tool = self._blocks.get(event["index"])
        if tool is None:  # the json_schema tool: its input is the answer's text
            return self._text(delta["partial_json"])
        call = {"index": tool, "function": {"arguments": delta["partial_json"]}}
        return self._chunk(orjson.dumps({"tool_calls": [call]}))

    def _text(self, text: str) -> bytes:
        if not text:
            return b""
        self.content_started = True
        return self._chunk(b'{"content":' + orjson.dumps(text) + b"}")

    def _message_delta(self, event: JSONObject) -> bytes:
        self._count(event.get("usage") or {})
        reason = event.get("delta", {}).get("stop_reason")
        if reason is None:
            return b""
        finish = finish_reason(reason)
        if finish == "tool_calls" and self._tools == 0:
            finish = "stop"  # only the json_schema tool was called
        tail = b',"logprobs":null,"finish_reason":' + orjson.dumps(finish) + b"}]"
        tail += b',"usage":null}\n\n' if self.include_usage else b"}\n\n"
        return self._prefix + b"{}" + tail

    def _stop(self) -> bytes:
        self.finished = True
        if not self.include_usage:
            return DONE
        head = {"id": self._id, "object": "chat.completion.chunk", "created": self.created}
        final = {**head, "model": self.model, "choices": [], "usage": self.usage}
        return b"data: " + orjson.dumps(final) + b"\n\n" + DONE

    def _error(self, event: JSONObject) -> bytes:
        self.finished = True
        error = event.get("error") or {}
        # An error inside a 200 is the provider's trouble: render it as its status would be.
        status = 503 if error.get("type") == "overloaded_error" else 500
        return b"data: " + orjson.dumps(error_object(error, status)) + b"\n\n"

    def _count(self, anthropic_usage: dict[str, Any]) -> None:
        # message_delta's counts are cumulative: the latest value replaces, never adds.
        self._anthropic_usage.update({k: v for k, v in anthropic_usage.items() if v is not None})
        self.usage = usage(self._anthropic_usage)

    def _chunk(self, delta: bytes) -> bytes:
        return self._prefix + delta + self._suffix
