"""The OpenAI APIs the gateway understands: how each request is validated and metered.

Validation is deliberately shallow: it rejects what the upstream would reject for certain (bad
JSON, a missing or mistyped `model`, a non-list `messages`) so that malformed requests never
leave the gateway, and lets every field it does not know pass through untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from llm_gateway_proxy.errors import InvalidJSON, InvalidRequest, MissingParameter


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ChatMessage(msgspec.Struct):
    role: str
    content: Any = None


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[ChatMessage]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None


class CompletionRequest(msgspec.Struct):
    model: str
    prompt: Any = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: str | list[Any]
    user: str | None = None


class ResponsesRequest(msgspec.Struct):
    model: str
    input: Any = None
    stream: bool | None = None
    user: str | None = None


ParsedRequest = ChatRequest | CompletionRequest | EmbeddingRequest | ResponsesRequest


@dataclass(frozen=True, slots=True)
class Api:
    """One OpenAI endpoint: its client path, request shape, and whether streams can carry usage
    only on request (`stream_options.include_usage`)."""

    path: str
    request_type: type[ParsedRequest]
    usage_on_request: bool
    decoder: msgspec.json.Decoder[Any]

    @classmethod
    def define(cls, path: str, request_type: type[ParsedRequest], *, usage_on_request: bool) -> Api:
        return cls(path, request_type, usage_on_request, msgspec.json.Decoder(request_type))

    def parse(self, body: bytes) -> ParsedRequest:
        """Validate a request body; raises an InvalidRequest naming the offending `param`."""
        try:
            parsed: ParsedRequest = self.decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise _validation_error(str(exc)) from exc
        except msgspec.DecodeError as exc:
            raise InvalidJSON(f"We could not parse the JSON body of your request: {exc}") from exc
        return parsed


CHAT = Api.define("/v1/chat/completions", ChatRequest, usage_on_request=True)
COMPLETIONS = Api.define("/v1/completions", CompletionRequest, usage_on_request=True)
EMBEDDINGS = Api.define("/v1/embeddings", EmbeddingRequest, usage_on_request=False)
RESPONSES = Api.define("/v1/responses", ResponsesRequest, usage_on_request=False)

_MISSING = re.compile(
    r"Object missing required field `(?P<field>[^`]+)`(?: - at `\$(?P<at>[^`]*)`)?"
)
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.S)


def _validation_error(message: str) -> InvalidRequest:
    """Turn msgspec's `... - at `$.messages[0].role`` into an OpenAI error with `param`."""
    missing = _MISSING.match(message)
    if missing:
        param = _param(missing["at"], missing["field"])
        return MissingParameter(f"Missing required parameter: '{param}'.", param=param)
    match = _AT.match(message)
    what = match["what"] if match else message
    at = match["at"] if match else None
    if at is None or at == "":
        return InvalidRequest(f"Invalid request body: {what}.", param=None)
    param = _param(at, None)
    return InvalidRequest(f"Invalid value for '{param}': {what}.", param=param)


def _param(at: str | None, field: str | None) -> str:
    path = (at or "").lstrip(".")
    if field:
        path = f"{path}.{field}" if path else field
    return path


def wants_stream(request: ParsedRequest) -> bool:
    return bool(getattr(request, "stream", False))


def client_asked_for_usage(request: ParsedRequest) -> bool:
    options = getattr(request, "stream_options", None)
    return bool(options is not None and options.include_usage)
