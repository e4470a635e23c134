"""Anthropic Messages requests to OpenAI chat/completions; the answers come back through
messages_openai_answer.py. No I/O, no clock.

    request_to_chat(messages_body, model=..., include_usage=...) -> (chat/completions JSON, names)

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
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

from llm_gateway_proxy.providers.anthropic import JSONObject, TranslationError, _as_object

OPENAI_TOOL_NAME_LIMIT = 64
OPENAI_USER_LIMIT = 64
_MIN_HEX = 8  # hex digits of the hash that ends a shortened name
_OPENAI_NAME = re.compile(r"[a-zA-Z0-9_-]+\Z")
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_-]")
_REFUSED_FIELDS = ("mcp_servers", "container")
_SYSTEM_JOINER = "\n\n"
_TOOL_RESULT_JOINER = "\n"


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
