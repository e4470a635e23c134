"""OpenAI chat/completions answers back to Anthropic Messages: whole answers, errors and streams,
for the requests messages_openai.py translated. No I/O, no clock.

    response_from_chat(chat_completion, model=..., names=...)    -> Messages `message` JSON
    error_from_openai(status, openai_error_body)                 -> Anthropic error JSON
    ChatStreamTranslator.feed(SSEEvent)                          -> Messages SSE bytes

An answer that is not chat/completions raises `MalformedResponse` (a 502). Mapping facts:
REFERENCE.md section 9.

Answer, chat.completion -> message: id "msg_" + the chat id; model = the client's name; a text
block for the content (and one for a refusal), tool_use blocks with the parsed arguments;
finish_reason stop -> end_turn, length -> max_tokens, tool_calls and function_call -> tool_use,
content_filter -> refusal, missing or unknown -> end_turn; a tool_use block makes end_turn
tool_use (some servers say "stop" after tool calls) and tool_use without one is end_turn;
stop_sequence null (OpenAI does not say which sequence matched); usage: input_tokens =
prompt_tokens - cached_tokens, cache_read_input_tokens = cached_tokens, creation 0.

Stream, chunks -> events: message_start on the first chunk; content_block_start (then one ping
after the first) / content_block_delta (text_delta, input_json_delta) / content_block_stop per
text run or tool call (OpenAI's tool call `index` is not Anthropic's block index); finish_reason
closes the open block, but message_delta waits for [DONE], as the usage-only chunk comes between
them; then message_stop. Reasoning deltas, Azure's prompt-filter chunks and data that is not JSON
are skipped; an error payload ends the stream with `event: error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from llm_gateway_proxy.errors import anthropic_type
from llm_gateway_proxy.providers.anthropic import JSONObject
from llm_gateway_proxy.providers.anthropic_response import MalformedResponse
from llm_gateway_proxy.providers.anthropic_stream import SSEEvent
from llm_gateway_proxy.providers.messages_openai import ToolNames

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def response_from_chat(body: bytes, *, model: str, names: ToolNames) -> bytes:
    """chat.completion JSON -> Messages `message` JSON (type message, role assistant, content
    blocks, stop_reason, stop_sequence null, usage). Raises MalformedResponse if not a
    chat.completion; `model` is the client's name for it."""
    try:
        completion = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedResponse("the provider's answer is not JSON") from exc
    choices = completion.get("choices") if isinstance(completion, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        raise MalformedResponse("the provider's answer is not a chat.completion")
    message = choice["message"]
    content = _answer_texts(message) + _answer_calls(message.get("tool_calls"), names)
    called = any(block["type"] == "tool_use" for block in content)
    chat_id = completion.get("id")
    chat_id = chat_id if isinstance(chat_id, str) else ""
    return orjson.dumps(
        {
            "id": chat_id if chat_id.startswith("msg_") else f"msg_{chat_id}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": _stop_reason(choice.get("finish_reason"), called),
            "stop_sequence": None,
            "usage": _usage(completion.get("usage")),
        }
    )


def _answer_texts(message: Mapping[str, Any]) -> list[JSONObject]:
    texts = []
    content = message.get("content")
    if isinstance(content, list):  # some compatible servers answer with text parts
        parts = []
        for part in content:
            text = part.get("text") if isinstance(part, dict) else None
            if not isinstance(text, str):
                raise MalformedResponse("the answer's content is not text")
            parts.append(text)
        content = "".join(parts)
    for text in (content, message.get("refusal")):
        if text is not None and not isinstance(text, str):
            raise MalformedResponse("the answer's content is not text")
        if text:
            texts.append({"type": "text", "text": text})
    return texts


def _answer_calls(calls: Any, names: ToolNames) -> list[JSONObject]:
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise MalformedResponse("the answer's tool_calls is not an array")
    blocks = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise MalformedResponse("a tool call has no function")
        call_id, name = call.get("id"), function.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise MalformedResponse("a tool call has no id or function name")
        arguments = _arguments(function.get("arguments"))
        blocks.append({"type": "tool_use", "id": call_id, "name": names.original(name),
                       "input": arguments})  # fmt: skip
    return blocks


def _arguments(arguments: Any) -> Any:
    if isinstance(arguments, dict):  # some compatible servers send the object itself
        return arguments
    if not isinstance(arguments, str):
        raise MalformedResponse("tool call arguments are not a JSON object")
    if not arguments.strip():
        return {}  # a call without arguments
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError as exc:
        raise MalformedResponse("tool call arguments are not a JSON object") from exc
    if not isinstance(parsed, dict):
        raise MalformedResponse("tool call arguments are not a JSON object")
    return parsed


def _stop_reason(finish: Any, called: bool) -> str:
    reason = _STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    # Anthropic's stop_reason is tool_use exactly when the answer ends in tool calls, which
    # clients act on; some compatible servers finish tool calls with "stop".
    if called and reason == "end_turn":
        return "tool_use"
    if not called and reason == "tool_use":
        return "end_turn"
    return reason


def _usage(usage: Any) -> dict[str, int]:
    """Anthropic's usage from OpenAI's, whose prompt_tokens INCLUDE the cached ones."""
    if usage is not None and not isinstance(usage, dict):
        raise MalformedResponse("the usage is not an object")
    usage = usage or {}
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return {
        "input_tokens": max(prompt - cached, 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": completion,
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# --- errors --------------------------------------------------------------------------------------


def error_from_openai(status: int, body: bytes) -> bytes:
    """An OpenAI-format error answer -> Anthropic error JSON {"type":"error","error":{"type",
    "message"}}; the caller keeps the status. A body without a message (a proxy's HTML page)
    is not echoed."""
    message = _error_message(body) or f"The provider answered HTTP {status}."
    return orjson.dumps(
        {"type": "error", "error": {"type": anthropic_type(status), "message": message}}
    )


def _error_message(body: bytes) -> str | None:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    # OpenAI's {"error": {"message"}}; some compatible servers' {"error": "..."}, or vLLM's
    # {"object": "error", "message": "..."}.
    error = payload.get("error")
    if isinstance(error, dict):
        message = error.get("message")
    elif isinstance(error, str):
        message = error
    else:
        message = payload.get("message")
    return message if isinstance(message, str) and message else None


# --- streams -------------------------------------------------------------------------------------

# The hot path splices each delta between prefixes built once: one orjson.loads per chunk, one
# orjson.dumps per text fragment.
_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_DELTA = b',"delta":{"type":"text_delta","text":'
_JSON_DELTA = b',"delta":{"type":"input_json_delta","partial_json":'
_DELTA_END = b"}}\n\n"
_BLOCK_START = b"event: content_block_start\ndata: "
_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'
_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_MESSAGE_DELTA = b"event: message_delta\ndata: "
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_DONE = b"[DONE]"


class ChatStreamTranslator:
    """OpenAI chat.completion.chunk SSE events in, Anthropic Messages SSE bytes out.

    `content_started` tells the relay a client got content; `usage` (Anthropic-shaped) and
    `usage_reported` are for metering; `finished` says the stream ended, `errored` that it ended
    with an error event. A chunk whose shape is not chat/completions raises `MalformedResponse`.
    """

    def __init__(self, *, model: str, names: ToolNames, message_id: str) -> None:
        self.model = model
        self.names = names
        self.message_id = message_id
        self.finished = False
        self.errored = False
        self.content_started = False
        self.usage: dict[str, int] = _usage(None)
        self.usage_reported = False
        self.stop_reason: str | None = None
        self._started = False
        self._blocks = 0  # blocks opened: the next one's index
        self._open: int | None = None  # the open block's index
        self._text_prefix = b""  # _DELTA + index + _TEXT_DELTA while a text block is open
        self._calls: dict[int | str, int] = {}  # OpenAI call index (or id) -> block index
        self._last_call: int | str | None = None

    def feed(self, event: SSEEvent) -> bytes:
        """One parsed OpenAI SSE event (data may be b"[DONE]") -> Anthropic SSE bytes."""
        if self.finished:
            return b""
        if event.data == _DONE:
            return self._done()
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            return self._error({}) if event.name == "error" else b""
        error = chunk.get("error")
        if error is not None or event.name == "error":
            return self._error(error if isinstance(error, dict) else chunk)
        try:
            return self._chunk(chunk)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise MalformedResponse("the provider sent a malformed chat.completion.chunk") from exc

    def _chunk(self, chunk: JSONObject) -> bytes:
        out = b"" if self._started else self._start()
        usage = chunk.get("usage")
        if usage:  # the usage-only chunk, or servers that count on every chunk (the last wins)
            self.usage = _usage(usage)
            self.usage_reported = True
        choices = chunk.get("choices")
        if not choices:  # the usage chunk; Azure's prompt-filter results
            return out
        choice = choices[0]
        delta = choice.get("delta")
        if delta:
            text = delta.get("content")
            if text:
                out += self._text(text)
            refusal = delta.get("refusal")
            if refusal:
                out += self._text(refusal)
            calls = delta.get("tool_calls")
            if calls:
                out += self._tool_calls(calls)
            # reasoning_content / reasoning: no Messages form without a signature; dropped
        finish = choice.get("finish_reason")
        if finish:
            out += self._close()
            self.stop_reason = _stop_reason(finish, bool(self._calls))
        return out

    def _start(self) -> bytes:
        self._started = True
        message: JSONObject = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},  # known only from the last chunk
        }
        event = {"type": "message_start", "message": message}
        return b"event: message_start\ndata: " + orjson.dumps(event) + b"\n\n"

    def _text(self, text: Any) -> bytes:
        if not isinstance(text, str):
            raise MalformedResponse("a chunk's content is not text")
        if self._text_prefix:
            return self._text_prefix + orjson.dumps(text) + _DELTA_END
        out = self._open_block({"type": "text", "text": ""})
        self._text_prefix = _DELTA + str(self._open).encode() + _TEXT_DELTA
        self.content_started = True
        return out + self._text_prefix + orjson.dumps(text) + _DELTA_END

    def _tool_calls(self, calls: Any) -> bytes:
        if not isinstance(calls, list):
            raise MalformedResponse("a chunk's tool_calls is not an array")
        out = b""
        for fragment in calls:
            function = fragment.get("function") or {}
            key = self._call_key(fragment)
            block = self._calls.get(key)
            if block is None:
                out += self._start_call(key, fragment.get("id"), function.get("name"))
                block = self._blocks - 1
            arguments = function.get("arguments")
            if arguments:
                if not isinstance(arguments, str):
                    raise MalformedResponse("a tool call's arguments are not a string")
                # A fragment of a call already closed still names its block: clients index by it.
                out += _DELTA + str(block).encode() + _JSON_DELTA
                out += orjson.dumps(arguments) + _DELTA_END
        return out

    def _call_key(self, fragment: JSONObject) -> int | str:
        index = fragment.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            return index
        # Some compatible servers leave `index` out: an id starts a call, else it continues.
        call_id = fragment.get("id")
        key = call_id if isinstance(call_id, str) and call_id else self._last_call
        if key is None:
            raise MalformedResponse("a tool call fragment has neither an index nor an id")
        return key

    def _start_call(self, key: int | str, call_id: Any, name: Any) -> bytes:
        if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
            raise MalformedResponse("a streamed tool call began without an id and a name")
        block = {"type": "tool_use", "id": call_id, "name": self.names.original(name), "input": {}}
        out = self._open_block(block)
        self._calls[key] = self._blocks - 1
        self._last_call = key
        self.content_started = True
        return out

    def _open_block(self, block: JSONObject) -> bytes:
        out = self._close()
        index = self._blocks
        self._blocks += 1
        self._open = index
        event = {"type": "content_block_start", "index": index, "content_block": block}
        out += _BLOCK_START + orjson.dumps(event) + b"\n\n"
        return out + _PING if index == 0 else out  # the real API pings after the first block

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        index = self._open
        self._open = None
        self._text_prefix = b""
        return _BLOCK_STOP + str(index).encode() + b"}\n\n"

    def _done(self) -> bytes:
        out = b"" if self._started else self._start()
        out += self._close()
        if self.stop_reason is None:
            self.stop_reason = _stop_reason(None, bool(self._calls))
        self.finished = True
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
            "usage": self.usage,  # the SDKs take input and cache counts from here too
        }
        return out + _MESSAGE_DELTA + orjson.dumps(delta) + b"\n\n" + _MESSAGE_STOP

    def _error(self, error: Mapping[str, Any]) -> bytes:
        self.finished = self.errored = True
        message = error.get("message")
        if not isinstance(message, str) or not message:
            message = "The provider's stream failed."
        # Inside a 200 there is no status to go by: what the error says is all there is.
        words = " ".join(str(error.get(k) or "") for k in ("type", "code", "message")).lower()
        overloaded = "overload" in words or "capacity" in words or error.get("code") in (503, 529)
        body = {
            "type": "error",
            "error": {"type": anthropic_type(503 if overloaded else 500), "message": message},
        }
        return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"
