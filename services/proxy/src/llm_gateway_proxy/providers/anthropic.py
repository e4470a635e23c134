"""OpenAI chat/completions <-> Anthropic Messages, as pure functions (no I/O, no clock).

    anthropic.request_out(openai_body, model=...)            -> (Messages JSON bytes, headers)
    anthropic_response.response_in(messages_body, created=...) -> chat.completion JSON bytes
    anthropic_response.error_in(status, anthropic_error_body)   -> (status, OpenAI error JSON)
    anthropic_stream.SSEParser / StreamTranslator               -> chat.completion.chunk SSE

What cannot be translated raises `TranslationError`, a 400 with a `param`; a provider answer
that is not the Messages format raises `anthropic_response.MalformedResponse`, a 502.
Mapping facts: REFERENCE.md section 9.
"""

from __future__ import annotations

import binascii
import itertools
from collections.abc import Mapping
from typing import Any, Literal

import orjson

DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
JSON_TOOL_NAME = "json_response"  # the forced tool that carries a json_schema answer

JSONObject = dict[str, Any]
JSONSchemaMode = Literal["output_config", "tool"]

# The image types the Messages API accepts as base64 sources.
_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


class TranslationError(Exception):
    """A request the Messages API cannot express: answer 400 invalid_request_error with `param`."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# --- request out -------------------------------------------------------------------------------


def request_out(
    body: bytes | Mapping[str, Any],
    *,
    model: str,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    version: str = DEFAULT_VERSION,
    json_schema_mode: JSONSchemaMode = "output_config",
) -> tuple[bytes, list[tuple[str, str]]]:
    """Translate an OpenAI chat/completions body into a Messages body for upstream `model`.

    Returns the body and the headers it needs (not the key: the transport adds that).
    `json_schema_mode` says how `response_format` json_schema travels: `output_config.format`
    (models with structured outputs) or a forced tool, which `response_in` and the stream
    translator then turn back into text when given `json_tool=JSON_TOOL_NAME`.
    """
    request = _as_object(body)
    out: JSONObject = {"model": model}
    system, messages = _messages(request.get("messages"))
    out["max_tokens"] = _max_tokens(request, default_max_tokens)
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    out["messages"] = messages
    _sampling(request, out)
    _tools(request, out)
    _response_format(request, out, json_schema_mode)
    if request.get("stream"):
        out["stream"] = True
    headers = [("anthropic-version", version), ("content-type", "application/json")]
    return orjson.dumps(out), headers


def _as_object(body: bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(body, Mapping):
        return body
    try:
        loaded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TranslationError("The request body is not valid JSON.") from exc
    if not isinstance(loaded, dict):
        raise TranslationError("The request body must be a JSON object.")
    return loaded


def _max_tokens(request: Mapping[str, Any], default: int) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = request.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TranslationError(f"'{name}' must be a positive integer.", param=name)
        return value
    return default


def _sampling(request: Mapping[str, Any], out: JSONObject) -> None:
    n = request.get("n")
    if n is not None and n != 1:
        raise TranslationError("This model returns one choice: 'n' must be 1.", param="n")
    if request.get("logprobs") or request.get("top_logprobs"):
        raise TranslationError("This model does not return logprobs.", param="logprobs")
    if request.get("logit_bias"):
        raise TranslationError("This model does not support 'logit_bias'.", param="logit_bias")
    temperature = request.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
            # Anthropic's range is 0-1; rescaling OpenAI's 0-2 would silently change the answer.
            raise TranslationError(
                "'temperature' must be between 0 and 1 for this model.", param="temperature"
            )
        out["temperature"] = temperature
    if request.get("top_p") is not None:
        out["top_p"] = request["top_p"]
    stop = request.get("stop")
    if stop is not None:
        sequences = [stop] if isinstance(stop, str) else stop
        if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
            raise TranslationError("'stop' must be a string or a list of strings.", param="stop")
        if any(not s.strip() for s in sequences):
            raise TranslationError(
                "This model rejects empty or whitespace-only stop sequences.", param="stop"
            )
        if sequences:
            out["stop_sequences"] = sequences
    user = request.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}


# --- messages ------------------------------------------------------------------------------------


def _messages(raw: Any) -> tuple[list[JSONObject], list[JSONObject]]:
    """System text blocks, and user/assistant turns that alternate, starting with the user."""
    if not isinstance(raw, list) or not raw:
        raise TranslationError("'messages' must be a non-empty array.", param="messages")
    system: list[JSONObject] = []
    turns: list[JSONObject] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise TranslationError("Each message must be an object.", param=where)
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_text_blocks(message.get("content"), f"{where}.content"))
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), f"{where}.content")
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
        elif role == "tool":
            blocks = [_tool_result(message, where, turns)]
            role = "user"
        else:
            raise TranslationError(f"Unsupported message role {role!r}.", param=f"{where}.role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            _merge(turns[-1]["content"], blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise TranslationError("At least one user message is required.", param="messages")
    if turns[0]["role"] != "user":
        raise TranslationError(
            "The first message after system messages must be from the user.", param="messages"
        )
    _check_answered(turns)
    return system, turns


def _check_answered(turns: list[JSONObject]) -> None:
    # Both APIs reject tool calls that the next turn does not answer; say which one.
    for asked, answer in itertools.pairwise(turns):
        if asked["role"] != "assistant":
            continue
        answered = {b["tool_use_id"] for b in answer["content"] if b["type"] == "tool_result"}
        for block in asked["content"]:
            if block["type"] == "tool_use" and block["id"] not in answered:
                raise TranslationError(
                    f"Tool call {block['id']!r} has no tool message answering it.",
                    param="messages",
                )


def _merge(into: list[JSONObject], blocks: list[JSONObject]) -> None:
    # Tool results must open the user turn that answers a tool_use, before any text.
    into.extend(blocks)
    into.sort(key=lambda block: block["type"] != "tool_result")


def _text_blocks(content: Any, where: str) -> list[JSONObject]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError("'content' must be a string or an array of parts.", param=where)
    blocks: list[JSONObject] = []
    for j, part in enumerate(content):
        blocks.extend(_text_part(part, f"{where}[{j}]"))
    return blocks


def _text_part(part: Any, where: str) -> list[JSONObject]:
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind not in ("text", "refusal"):
        raise TranslationError(
            f"Content part of type {kind!r} is not supported here.", param=f"{where}.type"
        )
    text = part.get(kind)
    if not isinstance(text, str):
        raise TranslationError(f"'{kind}' must be a string.", param=f"{where}.{kind}")
    return [{"type": "text", "text": text}] if text else []  # the API rejects empty text blocks


def _user_blocks(content: Any, where: str) -> list[JSONObject]:
    if not isinstance(content, list):
        return _text_blocks(content, where)
    blocks: list[JSONObject] = []
    for j, part in enumerate(content):
        if isinstance(part, Mapping) and part.get("type") == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}[{j}].image_url"))
        else:
            blocks.extend(_text_part(part, f"{where}[{j}]"))
    return blocks


def _image(image_url: Any, where: str) -> JSONObject:
    url = image_url.get("url") if isinstance(image_url, Mapping) else None
    if not isinstance(url, str):
        raise TranslationError("'image_url.url' must be a string.", param=f"{where}.url")
    if url.startswith("https://"):
        # Anthropic fetches it; the gateway never downloads client URLs (SSRF, latency).
        return {"type": "image", "source": {"type": "url", "url": url}}
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or media_type not in _IMAGE_MEDIA_TYPES:
            raise TranslationError(
                "Image data URLs must be base64 JPEG, PNG, GIF or WebP.", param=f"{where}.url"
            )
        try:
            binascii.a2b_base64(data, strict_mode=True)
        except binascii.Error as exc:
            raise TranslationError(
                "The image data is not valid base64.", param=f"{where}.url"
            ) from exc
        source = {"type": "base64", "media_type": media_type, "data": data}
        return {"type": "image", "source": source}
    raise TranslationError(
        "Image URLs must be https:// or base64 data: URLs.", param=f"{where}.url"
    )


def _assistant_blocks(message: Mapping[str, Any], where: str) -> list[JSONObject]:
    blocks = _text_blocks(message.get("content"), f"{where}.content")
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise TranslationError("'tool_calls' must be an array.", param=f"{where}.tool_calls")
    for k, call in enumerate(calls):
        at = f"{where}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(call.get("id"), str):
            raise TranslationError("A tool call needs an 'id' and a 'function'.", param=at)
        arguments = function.get("arguments") or "{}"
        try:
            parsed = orjson.loads(arguments)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise TranslationError(
                "Tool call arguments must be a JSON object.", param=f"{at}.function.arguments"
            ) from exc
        if not isinstance(parsed, dict):
            raise TranslationError(
                "Tool call arguments must be a JSON object.", param=f"{at}.function.arguments"
            )
        name = function.get("name")
        if not isinstance(name, str):
            raise TranslationError("A tool call needs a name.", param=f"{at}.function.name")
        blocks.append({"type": "tool_use", "id": call["id"], "name": name, "input": parsed})
    return blocks


def _tool_result(message: Mapping[str, Any], where: str, turns: list[JSONObject]) -> JSONObject:
    call_id = message.get("tool_call_id")
    # The Messages API rejects a tool_result that answers no tool_use of the assistant turn
    # just before it; say which message is wrong instead of relaying its generic 400.
    previous = turns[-1] if turns and turns[-1]["role"] == "assistant" else None
    if len(turns) >= 2 and turns[-1]["role"] == "user":
        previous = turns[-2]
    asked = {b["id"] for b in previous["content"] if b["type"] == "tool_use"} if previous else set()
    if call_id not in asked:
        raise TranslationError(
            "A tool message must answer a tool call of the assistant message before it.",
            param=f"{where}.tool_call_id",
        )
    content = _text_blocks(message.get("content"), f"{where}.content")
    return {"type": "tool_result", "tool_use_id": call_id, "content": content}


# --- tools and response_format -------------------------------------------------------------------


def _tools(request: Mapping[str, Any], out: JSONObject) -> None:
    tools = request.get("tools") or []
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be an array.", param="tools")
    translated = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or tool.get("type") != "function":
            raise TranslationError("Only function tools are supported.", param=f"tools[{i}].type")
        if not isinstance(function.get("name"), str):
            raise TranslationError("A tool needs a name.", param=f"tools[{i}].function.name")
        entry: JSONObject = {"name": function["name"]}
        if function.get("description"):
            entry["description"] = function["description"]
        entry["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
        translated.append(entry)
    choice = _tool_choice(request.get("tool_choice"), bool(translated))
    if translated:
        out["tools"] = translated
    if request.get("parallel_tool_calls") is False and translated:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice


def _tool_choice(choice: Any, have_tools: bool) -> JSONObject | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice} if have_tools else None
    if not have_tools:
        raise TranslationError("'tool_choice' needs 'tools'.", param="tool_choice")
    if choice == "required":
        return {"type": "any"}
    function = choice.get("function") if isinstance(choice, Mapping) else None
    if isinstance(function, Mapping) and isinstance(function.get("name"), str):
        return {"type": "tool", "name": function["name"]}
    raise TranslationError(
        "'tool_choice' must be auto, required, none or a named function.", param="tool_choice"
    )


def _response_format(request: Mapping[str, Any], out: JSONObject, mode: JSONSchemaMode) -> None:
    response_format = request.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if response_format is None or kind == "text":
        return
    if kind != "json_schema":
        raise TranslationError(
            "This model supports response_format 'text' and 'json_schema' only.",
            param="response_format.type",
        )
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if not isinstance(schema, Mapping):
        raise TranslationError(
            "'json_schema.schema' must be an object.", param="response_format.json_schema.schema"
        )
    if mode == "output_config":
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        return
    if "tools" in out:
        raise TranslationError(
            "This model cannot combine 'tools' with response_format json_schema.",
            param="response_format",
        )
    out["tools"] = [
        {"name": JSON_TOOL_NAME, "description": "Answer with this.", "input_schema": schema}
    ]
    out["tool_choice"] = {"type": "tool", "name": JSON_TOOL_NAME}
