"""Anthropic Messages requests to OpenAI chat/completions, and the answers back. No I/O, no clock.

    request_to_chat(messages_body, model=..., include_usage=...) -> (chat/completions JSON, names)
    response_from_chat(chat_completion, model=..., names=...)    -> Messages `message` JSON
    error_from_openai(status, openai_error_body)                 -> Anthropic error JSON
    ChatStreamTranslator.feed(SSEEvent)                          -> Messages SSE bytes

The reverse of anthropic*.py: Messages clients (Claude Code, the anthropic SDKs) in front, an
OpenAI-compatible provider behind. What chat/completions cannot express raises `TranslationError`
(a 400 whose `param` is the Messages field); an answer that is not chat/completions raises
`MalformedResponse` (a 502). Mapping facts: REFERENCE.md section 9.

Request, Messages -> chat/completions:

    system, string or text blocks       a leading system message (blocks joined by a blank line)
    user string, text blocks            content: a string (one text block), else text parts
    image, base64 / url source          image_url part: data:<media_type>;base64,<data> / the URL
                                        (the gateway never fetches it)
    tool_result blocks                  role:tool messages (tool_call_id; text joined by "\\n"),
                                        BEFORE the rest of their user turn; is_error: text kept
    assistant text / tool_use blocks    content (null with only tool calls) / tool_calls, the
                                        input as JSON arguments; a turn left empty is not sent
    thinking, redacted_thinking blocks  dropped
    max_tokens (required, int >= 1)     `max_tokens_field` (max_tokens or max_completion_tokens)
    temperature, top_p                  the same
    stop_sequences                      stop
    metadata.user_id                    user (its sha256 hex when longer than OpenAI's 64 chars)
    stream: true                        stream: true, stream_options.include_usage if asked
    tools (type absent or custom)       function tools {name, description, parameters}
    tool_choice auto / any / none       "auto" / "required" / "none" (auto, none: only with tools)
    tool_choice tool                    {"type": "function", "function": {"name"}}
    disable_parallel_tool_use: true     parallel_tool_calls: false (only with tools)
    output_config.format json_schema    response_format json_schema (name "response", not strict)
    dropped                             top_k, thinking, service_tier, context_management,
                                        output_config.effort, tools' strict, cache_control and
                                        citations anywhere, any other field
    refused (TranslationError)          server tools (web_search_*, bash_*, text_editor_*,
                                        computer_*, code_execution_*...), mcp_servers, container,
                                        document, search_result and other blocks, images in a
                                        tool_result, sources other than base64 and url

Tool names longer than OpenAI's 64 characters or with characters outside ^[a-zA-Z0-9_-]+$ go out
renamed (`ToolNames`) and come back as the client wrote them, in whole answers and streams.

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

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

from llm_gateway_proxy.errors import anthropic_type
from llm_gateway_proxy.providers.anthropic import JSONObject, TranslationError, _as_object
from llm_gateway_proxy.providers.anthropic_response import MalformedResponse
from llm_gateway_proxy.providers.anthropic_stream import SSEEvent

OPENAI_TOOL_NAME_LIMIT = 64
OPENAI_USER_LIMIT = 64
_MIN_HEX = 8  # hex digits of the hash that ends a shortened name
_OPENAI_NAME = re.compile(r"[a-zA-Z0-9_-]+\Z")
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_-]")
_REFUSED_FIELDS = ("mcp_servers", "container")
_SYSTEM_JOINER = "\n\n"
_TOOL_RESULT_JOINER = "\n"
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


class ToolNames:
    """Reversible renaming of tool names for a target that limits them (OpenAI: 64 chars,
    ^[a-zA-Z0-9_-]+$).

    A name that breaks the rule becomes its first characters (any other character as "_"), "_"
    and 8 (more on a clash) hex digits of its sha256, at most `limit` long: the same name
    always gives the same one. No two of a request's names go out the same: a name that keeps
    to the rule but is already taken (by another's renaming) is renamed too.
    """

    __slots__ = ("_limit", "_originals", "_shorts")

    def __init__(self, limit: int = OPENAI_TOOL_NAME_LIMIT) -> None:
        if limit < _MIN_HEX + 1:
            raise ValueError(f"a tool name limit under {_MIN_HEX + 1} leaves no room for a hash")
        self._limit = limit
        self._shorts: dict[str, str] = {}  # the client's name -> the one sent
        self._originals: dict[str, str] = {}  # the one sent -> the client's name

    def short(self, name: str) -> str:
        """The name to send: `name` itself when it keeps to the rule and is not taken."""
        known = self._shorts.get(name)
        if known is not None:
            return known
        if len(name) <= self._limit and _OPENAI_NAME.match(name) and name not in self._originals:
            sent = name
        else:
            sent = self._renamed(name)
        self._shorts[name] = sent
        self._originals[sent] = name
        return sent

    def _renamed(self, name: str) -> str:
        digest = hashlib.sha256(name.encode()).hexdigest()
        safe = _NOT_IN_NAME.sub("_", name)
        width = _MIN_HEX
        candidate = f"{safe[: self._limit - 1 - width]}_{digest[:width]}"
        while candidate in self._originals and width < min(len(digest), self._limit - 1):
            width += 1
            candidate = f"{safe[: self._limit - 1 - width]}_{digest[:width]}"
        return candidate

    def original(self, name: str) -> str:
        """The name the client used (names this did not shorten come back as they are)."""
        return self._originals.get(name, name)


# --- request out ---------------------------------------------------------------------------------


def request_to_chat(
    body: bytes | Mapping[str, Any],
    *,
    model: str,
    include_usage: bool,
    max_tokens_field: str = "max_tokens",
) -> tuple[bytes, ToolNames]:
    """Messages request -> chat/completions body for upstream `model`. Raises TranslationError
    (message + param in the Messages API's terms, e.g. param="messages[2].content[0].type") for
    what chat/completions cannot express.

    The `ToolNames` returned restore shortened tool names in the answer.
    """
    request = _as_object(body)
    for field in _REFUSED_FIELDS:
        if request.get(field) is not None:
            raise TranslationError(
                f"The provider serving this model does not support '{field}'.", param=field
            )
    names = ToolNames()
    out: JSONObject = {"model": model}
    out["messages"] = _system(request.get("system")) + _messages(request.get("messages"), names)
    out[max_tokens_field] = _max_tokens(request.get("max_tokens"))
    _sampling(request, out)
    _tools(request, out, names)
    _output_format(request.get("output_config"), out)
    if request.get("stream") is True:
        out["stream"] = True
        if include_usage:
            out["stream_options"] = {"include_usage": True}
    return _dumps(out, "The request"), names


def _system(system: Any) -> list[JSONObject]:
    if system is None:
        return []
    if isinstance(system, str):
        text = system
    elif isinstance(system, list):
        texts = []
        for i, block in enumerate(system):
            if not isinstance(block, Mapping) or block.get("type") != "text":
                raise TranslationError("System blocks must be text blocks.", param=f"system[{i}]")
            texts.append(_text(block, f"system[{i}]"))
        text = _SYSTEM_JOINER.join(t for t in texts if t)
    else:
        raise TranslationError("'system' must be a string or text blocks.", param="system")
    return [{"role": "system", "content": text}] if text else []


def _messages(raw: Any, names: ToolNames) -> list[JSONObject]:
    if not isinstance(raw, list) or not raw:
        raise TranslationError("'messages' must be a non-empty array.", param="messages")
    out: list[JSONObject] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise TranslationError("Each message must be an object.", param=where)
        role = message.get("role")
        if role == "user":
            out.extend(_user_turn(message.get("content"), f"{where}.content"))
        elif role == "assistant":
            out.extend(_assistant_turn(message.get("content"), f"{where}.content", names))
        else:
            raise TranslationError(f"Unsupported message role {role!r}.", param=f"{where}.role")
    return out


def _user_turn(content: Any, where: str) -> list[JSONObject]:
    """The turn's tool results as tool messages (they answer the assistant turn just before, so
    they must follow it directly), then the rest as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[JSONObject] = []
    parts: list[JSONObject] = []
    for j, block in enumerate(_blocks(content, where)):
        at = f"{where}[{j}]"
        kind = block.get("type")
        if kind == "tool_result":
            out.append(_tool_message(block, at))
        elif kind == "text":
            parts.append({"type": "text", "text": _text(block, at)})
        elif kind == "image":
            parts.append(_image(block, at))
        else:
            raise _unsupported(kind, at)
    if len(parts) == 1 and parts[0]["type"] == "text":
        out.append({"role": "user", "content": parts[0]["text"]})
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _assistant_turn(content: Any, where: str, names: ToolNames) -> list[JSONObject]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    texts: list[str] = []
    calls: list[JSONObject] = []
    for j, block in enumerate(_blocks(content, where)):
        at = f"{where}[{j}]"
        kind = block.get("type")
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "tool_use":
            calls.append(_tool_call(block, at, names))
        elif kind not in ("thinking", "redacted_thinking"):  # chat/completions has no place
            raise _unsupported(kind, at)
    if not texts and not calls:
        return []  # only thinking: nothing the provider can read
    message: JSONObject = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _blocks(content: Any, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(content, list):
        raise TranslationError("'content' must be a string or an array of blocks.", param=where)
    for j, block in enumerate(content):
        if not isinstance(block, Mapping):
            raise TranslationError("Each content block must be an object.", param=f"{where}[{j}]")
    return content


def _text(block: Mapping[str, Any], at: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise TranslationError("'text' must be a string.", param=f"{at}.text")
    return text


def _image(block: Mapping[str, Any], at: str) -> JSONObject:
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise TranslationError("An image needs a 'source' object.", param=f"{at}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise TranslationError(
                "A base64 image needs 'media_type' and 'data' strings.", param=f"{at}.source"
            )
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        given = source.get("url")
        if not isinstance(given, str):
            raise TranslationError("'source.url' must be a string.", param=f"{at}.source.url")
        url = given
    else:
        raise TranslationError(
            f"The provider serving this model cannot take image sources of type {kind!r}.",
            param=f"{at}.source.type",
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_message(block: Mapping[str, Any], at: str) -> JSONObject:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError("A tool_result needs a 'tool_use_id'.", param=f"{at}.tool_use_id")
    content = block.get("content")
    where = f"{at}.content"
    if content is None or isinstance(content, str):
        text = content or ""
    else:
        texts = []
        for k, part in enumerate(_blocks(content, where)):
            kind = part.get("type")
            if kind == "image":
                raise TranslationError(
                    "The provider serving this model cannot take images inside a tool_result.",
                    param=f"{where}[{k}].type",
                )
            if kind != "text":
                raise _unsupported(kind, f"{where}[{k}]")
            texts.append(_text(part, f"{where}[{k}]"))
        text = _TOOL_RESULT_JOINER.join(texts)
    # is_error has no chat/completions form: the text, which says what failed, goes as it is.
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _tool_call(block: Mapping[str, Any], at: str, names: ToolNames) -> JSONObject:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError("A tool_use block needs an 'id'.", param=f"{at}.id")
    if not isinstance(name, str) or not name:
        raise TranslationError("A tool_use block needs a 'name'.", param=f"{at}.name")
    if not isinstance(arguments, dict):
        raise TranslationError("A tool_use 'input' must be an object.", param=f"{at}.input")
    function = {"name": names.short(name), "arguments": _dumps(arguments, "A tool input").decode()}
    return {"id": call_id, "type": "function", "function": function}


def _unsupported(kind: Any, at: str) -> TranslationError:
    return TranslationError(
        f"The provider serving this model cannot take content blocks of type {kind!r}.",
        param=f"{at}.type",
    )


def _max_tokens(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TranslationError("'max_tokens' must be an integer of at least 1.", param="max_tokens")
    return value


def _sampling(request: Mapping[str, Any], out: JSONObject) -> None:
    for field in ("temperature", "top_p"):
        value = request.get(field)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TranslationError(f"'{field}' must be a number.", param=field)
        out[field] = value
    stop = request.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise TranslationError(
                "'stop_sequences' must be an array of strings.", param="stop_sequences"
            )
        if stop:
            out["stop"] = stop
    metadata = request.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, Mapping) else None
    if isinstance(user, str) and user:
        # Claude Code's ids run past OpenAI's limit: a digest keeps them apart, and opaque.
        long = len(user) > OPENAI_USER_LIMIT
        out["user"] = hashlib.sha256(user.encode()).hexdigest() if long else user


def _tools(request: Mapping[str, Any], out: JSONObject, names: ToolNames) -> None:
    tools = request.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be an array.", param="tools")
    functions = [_function(tool, f"tools[{i}]", names) for i, tool in enumerate(tools)]
    if functions:  # OpenAI refuses an empty list
        out["tools"] = functions
    choice = request.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    if kind not in ("auto", "any", "none", "tool"):
        raise TranslationError(
            "'tool_choice.type' must be auto, any, tool or none.", param="tool_choice.type"
        )
    if not functions:
        if kind in ("any", "tool"):
            raise TranslationError("'tool_choice' needs 'tools'.", param="tool_choice")
        return  # OpenAI refuses a tool_choice without tools
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError("'tool_choice.name' must be a string.", param="tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": names.short(name)}}
    else:
        out["tool_choice"] = "required" if kind == "any" else kind
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _function(tool: Any, at: str, names: ToolNames) -> JSONObject:
    if not isinstance(tool, Mapping):
        raise TranslationError("Each tool must be an object.", param=at)
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise TranslationError(
            f"The provider serving this model cannot run Anthropic server tools ({kind!r}); "
            "only custom tools can be sent to it.",
            param=f"{at}.type",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise TranslationError("A tool needs a 'name'.", param=f"{at}.name")
    function: JSONObject = {"name": names.short(name)}
    description = tool.get("description")
    if isinstance(description, str) and description:
        function["description"] = description
    schema = tool.get("input_schema")
    if schema is not None:
        if not isinstance(schema, dict):
            raise TranslationError("'input_schema' must be an object.", param=f"{at}.input_schema")
        function["parameters"] = schema
    return {"type": "function", "function": function}


def _output_format(config: Any, out: JSONObject) -> None:
    spec = config.get("format") if isinstance(config, Mapping) else None
    if spec is None:
        return
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if kind != "json_schema" or not isinstance(schema, dict):
        raise TranslationError(
            "'output_config.format' must be a json_schema with a 'schema' object.",
            param="output_config.format",
        )
    # Not strict: OpenAI's strict mode refuses schemas Anthropic takes (optional properties).
    out["response_format"] = {"type": "json_schema", "json_schema": {"name": "response",
                                                                     "schema": schema}}  # fmt: skip


def _dumps(value: JSONObject, what: str) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise TranslationError(f"{what} cannot be encoded as JSON.") from exc


# --- answers in ----------------------------------------------------------------------------------


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
