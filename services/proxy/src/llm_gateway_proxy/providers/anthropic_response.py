"""Anthropic Messages answers and errors in, OpenAI chat.completion and error JSON out. No I/O.

Shared with `anthropic_stream`: the stop_reason, usage and error mappings (REFERENCE.md section 9).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from llm_gateway_proxy.providers.anthropic import JSONObject

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error type -> OpenAI error type (the SDKs pick exception classes by status alone).

_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_error",
    "billing_error": "insufficient_quota",
    "api_error": "api_error",
    "timeout_error": "api_error",
    "overloaded_error": "api_error",
}


class MalformedResponse(ValueError):
    """The provider answered 200 with something that is not the Messages format (a 502)."""


# --- response in ---------------------------------------------------------------------------------


def response_in(
    body: bytes, *, created: int, model: str | None = None, json_tool: str | None = None
) -> bytes:
    """Translate a Messages response into a chat.completion; `model` overrides the reported one.

    `json_tool` names the forced tool of `json_schema_mode="tool"`: its input becomes the text.
    A body that is not a Messages response raises `MalformedResponse`.
    """
    try:
        return _response(orjson.loads(body), created, model, json_tool)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise MalformedResponse("the provider's answer is not a Messages response") from exc


def _response(message: Any, created: int, model: str | None, json_tool: str | None) -> bytes:
    texts: list[str] = []
    calls: list[JSONObject] = []
    finish = finish_reason(message.get("stop_reason"))
    for block in message.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use" and block["name"] == json_tool:
            texts.append(orjson.dumps(block["input"]).decode())
            finish = "stop"
        elif kind == "tool_use":
            arguments = orjson.dumps(block["input"]).decode()
            function = {"name": block["name"], "arguments": arguments}
            calls.append({"id": block["id"], "type": "function", "function": function})
    reply: JSONObject = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        reply["tool_calls"] = calls
    choice = {"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}
    return orjson.dumps(
        {
            "id": message["id"],
            "object": "chat.completion",
            "created": created,
            "model": model or message["model"],
            "choices": [choice],
            "usage": usage(message.get("usage") or {}),
        }
    )


def finish_reason(stop_reason: str | None) -> str:
    """OpenAI's finish_reason for an Anthropic stop_reason (unknown ones end normally)."""
    return _FINISH_REASONS.get(stop_reason or "", "stop")


def usage(anthropic_usage: Mapping[str, Any]) -> JSONObject:
    """OpenAI usage from Anthropic's, whose input_tokens EXCLUDE cache reads and writes."""
    cache_read = anthropic_usage.get("cache_read_input_tokens") or 0
    cache_write = anthropic_usage.get("cache_creation_input_tokens") or 0
    prompt = (anthropic_usage.get("input_tokens") or 0) + cache_write + cache_read
    completion = anthropic_usage.get("output_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        # cache_write_tokens: not OpenAI's, an addition (OpenAI clients ignore unknown fields)
        # so that the cache writes, priced apart, reach the usage event.
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_write},
    }


# --- errors in -----------------------------------------------------------------------------------


def error_in(status: int, body: bytes) -> tuple[int, bytes]:
    """Translate an Anthropic error answer into OpenAI's error shape and status.

    529 overloaded becomes 503, so clients and the router treat it as the 5xx it is. A body
    that is not Anthropic's error JSON (a proxy's HTML page) is not echoed.
    """
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    if not isinstance(error, Mapping):
        error = {"message": f"The provider answered HTTP {status}."}
    return (503 if status == 529 else status), orjson.dumps(error_object(error, status))


def error_object(error: Mapping[str, Any], status: int) -> JSONObject:
    """`{"error": {...}}` in OpenAI's shape; Anthropic's own type is kept as `code`."""
    kind = error.get("type")
    default = "invalid_request_error" if 400 <= status < 500 else "api_error"
    mapped = _ERROR_TYPES.get(kind, default) if isinstance(kind, str) else default
    message = error.get("message")
    return {
        "error": {
            "message": message if isinstance(message, str) else "The provider failed.",
            "type": mapped,
            "param": None,
            "code": kind if isinstance(kind, str) else None,
        }
    }
