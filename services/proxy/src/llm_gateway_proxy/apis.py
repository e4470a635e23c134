"""The OpenAI APIs the gateway understands: how each request is validated and metered.

The rule: the body must be valid JSON (UTF-8, a JSON object); the fields the gateway knows are
validated for type, as the provider would (`model`, `messages`, `max_tokens`, `n`, `tools`,
`stream`, ...), so a request the provider would refuse for certain never leaves the gateway;
fields it does not know pass through untouched (as valid JSON: providers add fields often, and
OpenAI-compatible servers take extras such as vLLM's sampling parameters). Values the provider
checks against its own state (model names, token limits, tool schemas) are left to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import orjson

from llm_gateway_proxy.errors import InvalidJSON, InvalidRequest, MissingParameter

Unset = msgspec.UnsetType
UNSET = msgspec.UNSET
JSONObject = dict[str, Any]


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ChatMessage(msgspec.Struct):
    role: str
    content: Any = None
    name: str | None = None
    tool_calls: list[JSONObject] | None = None
    tool_call_id: str | None = None


class _Sampled(msgspec.Struct, kw_only=True):
    """What chat and (legacy) completions share: the model, streaming, and sampling."""

    model: str
    stream: bool | None = None
    stream_options: StreamOptions | Unset | None = UNSET
    user: str | None = None
    max_tokens: int | None = None
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None


class ChatRequest(_Sampled, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    tools: list[JSONObject] | None = None
    tool_choice: str | JSONObject | None = None
    parallel_tool_calls: bool | None = None
    response_format: JSONObject | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None


class CompletionRequest(_Sampled, kw_only=True):
    prompt: Any = None
    best_of: int | None = None
    echo: bool | None = None
    logprobs: int | None = None
    suffix: str | None = None


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: str | list[Any]
    user: str | None = None
    dimensions: int | None = None
    encoding_format: str | None = None


class ResponsesRequest(msgspec.Struct):
    model: str
    input: Any = None
    stream: bool | None = None
    user: str | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[JSONObject] | None = None
    tool_choice: str | JSONObject | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    text: JSONObject | None = None
    reasoning: JSONObject | None = None


class AnthropicMessage(msgspec.Struct):
    role: str
    content: str | list[JSONObject]


class _MessagesBase(msgspec.Struct, kw_only=True):
    """What the Messages API and its token count share (Anthropic's fields)."""

    model: str
    messages: list[AnthropicMessage]
    system: str | list[JSONObject] | None = None
    tools: list[JSONObject] | None = None
    tool_choice: JSONObject | None = None
    thinking: JSONObject | None = None

    @property
    def user(self) -> str | None:
        return None


class MessagesRequest(_MessagesBase, kw_only=True):
    max_tokens: int
    stream: bool | None = None
    metadata: JSONObject | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None

    @property
    def user(self) -> str | None:
        """`metadata.user_id`: the event's `user`, as OpenAI's `user` is."""
        user = (self.metadata or {}).get("user_id")
        return user if isinstance(user, str) else None


class CountTokensRequest(_MessagesBase, kw_only=True):
    pass


ParsedRequest = (
    ChatRequest | CompletionRequest | EmbeddingRequest | ResponsesRequest | MessagesRequest
    | CountTokensRequest
)  # fmt: skip
Face = Literal["openai", "anthropic"]


@dataclass(frozen=True, slots=True)
class Api:
    """One endpoint: its client path, request shape, whether streams carry usage only on
    request (`stream_options.include_usage`), the API clients speak there (`face`: its errors'
    shape), whether it runs a model that uses tokens (`metered`; a token count does not), and
    its `gen_ai.operation.name` (metrics, spans; None for what runs no model)."""

    path: str
    request_type: type[ParsedRequest]
    usage_on_request: bool
    decoder: msgspec.json.Decoder[Any]
    face: Face = "openai"
    metered: bool = True
    operation: str | None = "chat"

    @classmethod
    def define(
        cls,
        path: str,
        request_type: type[ParsedRequest],
        *,
        usage_on_request: bool,
        face: Face = "openai",
        metered: bool = True,
        operation: str | None = "chat",
    ) -> Api:
        decoder = msgspec.json.Decoder(request_type)
        return cls(path, request_type, usage_on_request, decoder, face, metered, operation)

    def parse(self, body: bytes) -> ParsedRequest:
        """Validate a request body; raises an InvalidRequest naming the offending `param`."""
        if not body.isascii():  # msgspec skips unknown fields without checking their UTF-8
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidJSON(_NOT_UTF8) from exc
        try:
            parsed: ParsedRequest = self.decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise _validation_error(str(exc)) from exc
        except msgspec.DecodeError as exc:
            raise InvalidJSON(f"We could not parse the JSON body of your request: {exc}") from exc
        except RecursionError as exc:
            raise InvalidJSON(_TOO_DEEP) from exc
        return parsed


# The operation names are OpenTelemetry's (the Responses and Messages APIs are chats, as
# peers name them).
CHAT = Api.define("/v1/chat/completions", ChatRequest, usage_on_request=True)
COMPLETIONS = Api.define("/v1/completions", CompletionRequest, usage_on_request=True,
                         operation="text_completion")  # fmt: skip
EMBEDDINGS = Api.define("/v1/embeddings", EmbeddingRequest, usage_on_request=False,
                        operation="embeddings")  # fmt: skip
RESPONSES = Api.define("/v1/responses", ResponsesRequest, usage_on_request=False)
# Anthropic's Messages API (docs/anthropic.md): its streams always carry usage.
MESSAGES = Api.define("/v1/messages", MessagesRequest, usage_on_request=False, face="anthropic")
COUNT_TOKENS = Api.define("/v1/messages/count_tokens", CountTokensRequest, usage_on_request=False,
                          face="anthropic", metered=False, operation=None)  # fmt: skip
# The gen_ai.operation.name of each endpoint that runs a model.
OPERATIONS = {
    api.path: api.operation
    for api in (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, MESSAGES, COUNT_TOKENS)
    if api.operation is not None
}

_NOT_UTF8 = "We could not parse the JSON body of your request: it is not valid UTF-8."
_TOO_DEEP = "We could not parse the JSON body of your request: it is nested too deeply."
_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'

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
    return isinstance(options, StreamOptions) and bool(options.include_usage)


def with_usage_requested(body: bytes, request: ParsedRequest) -> bytes:
    """The body with `stream_options.include_usage` set, everything else as the client sent it.

    Without `stream_options` in the body (the usual case) the member is spliced in after the
    opening brace, so the client's bytes are never re-serialised (no number or nesting limit of
    a JSON library can turn a valid request into a 500). With one, the body is re-encoded once,
    and what cannot be re-encoded exactly is refused with a 400."""
    if getattr(request, "stream_options", UNSET) is UNSET:
        brace = body.index(b"{")  # the body decoded as an object: the first `{` opens it
        return body[: brace + 1] + _INCLUDE_USAGE + body[brace + 1 :]
    try:
        payload = orjson.loads(body)
        options = payload.get("stream_options")
        payload["stream_options"] = {**(options or {}), "include_usage": True}
        return orjson.dumps(payload)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError) as exc:
        raise InvalidJSON(
            f"We could not parse the JSON body of your request: {exc}", param="stream_options"
        ) from exc


class _ModelField(msgspec.Struct):
    model: str | None = None


_model_field = msgspec.json.Decoder(_ModelField)
_BOUNDARY = re.compile(rb'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.I)
_MODEL_PART = re.compile(rb'^content-disposition:[ \t]*form-data;[ \t]*name="?model"?[ \t]*(?:;|$)',
                         re.I | re.M)  # fmt: skip
MAX_MODEL_NAME = 256  # a model name longer than this is refused (it travels into URLs, headers)


def passthrough_model(body: bytes, content_type: bytes) -> str | None:
    """The `model` a pass-through request names (a JSON body, or a multipart form field as the
    images and audio APIs take), or None. A body that names it ambiguously is refused."""
    if not body:
        return None
    media = content_type.split(b";", 1)[0].strip().lower()
    if media == b"application/json":
        if not body.isascii():
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidJSON(_NOT_UTF8) from exc
        try:
            model = _model_field.decode(body).model
        except msgspec.ValidationError as exc:
            raise _validation_error(str(exc)) from exc
        except (msgspec.DecodeError, RecursionError) as exc:
            raise InvalidJSON(f"We could not parse the JSON body of your request: {exc}") from exc
        if model is not None and len(model) > MAX_MODEL_NAME:
            raise InvalidRequest(f"Invalid value for 'model': at most {MAX_MODEL_NAME} "
                                 "characters.", param="model")  # fmt: skip
        return model
    if media == b"multipart/form-data":
        return _form_model(body, content_type)
    return None


def _form_model(body: bytes, content_type: bytes) -> str | None:
    """The value of the `model` part of a multipart/form-data body (RFC 7578)."""
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise InvalidRequest("Invalid request body: multipart form without a boundary.")
    delimiter = b"--" + (found[1] or found[2])
    models = []
    for part in body.split(delimiter)[1:]:
        head, sep, value = part.partition(b"\r\n\r\n")
        if sep and _MODEL_PART.search(head):
            models.append(value.removesuffix(b"\r\n"))
    if not models:
        return None
    if len(models) > 1 or len(models[0]) > MAX_MODEL_NAME:
        raise InvalidRequest("Invalid value for 'model': one model field, at most 256 bytes.",
                             param="model")  # fmt: skip
    try:
        return models[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest("Invalid value for 'model': not valid UTF-8.", param="model") from exc
