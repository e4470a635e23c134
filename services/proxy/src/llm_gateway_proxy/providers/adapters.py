"""One adapter per provider entry of the model table: where a request goes, with which headers
and body, and how the answer's stream starts. No I/O here: the router sends, the relay reads.

    openai     any OpenAI-compatible server: the body as sent, but `model` (the target's) and
               `stream_options.include_usage` (unless `stream_usage: never`); Bearer key
    azure      the same body; classic `/openai/deployments/{deployment}/...?api-version=` or the
               v1 API `/openai/v1/...`; `api-key` header
    anthropic  chat/completions translated to the Messages API (providers/anthropic*.py);
               `x-api-key` and `anthropic-version`; the Messages API itself (and its token
               count) as the client sent it but `model`, with its `anthropic-version` and the
               `anthropic-beta` flags the provider takes (`betas`)

Messages clients (`/v1/messages`, docs/anthropic.md) reach openai and azure providers through
chat/completions (providers/messages_openai.py); their `anthropic-*` headers are not forwarded
there (a beta flag dropped is logged once per adapter and flag).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar
from urllib.parse import quote

import orjson
import structlog
from yarl import URL

from llm_gateway_proxy.apis import (
    CHAT,
    COMPLETIONS,
    COUNT_TOKENS,
    EMBEDDINGS,
    MESSAGES,
    RESPONSES,
    Api,
    ParsedRequest,
    client_asked_for_usage,
    wants_stream,
    with_usage_requested,
)
from llm_gateway_proxy.errors import InvalidJSON, InvalidRequest
from llm_gateway_proxy.modelconfig import Provider
from llm_gateway_proxy.providers import anthropic, messages_openai
from llm_gateway_proxy.providers.messages_openai import ToolNames
from llm_gateway_proxy.providers.streamstart import AnthropicStart, OpenAIStart, StreamStart
from llm_gateway_proxy.upstream import (
    client_timeout,
    dropped_headers,
    forwarded_headers,
    url_under,
)

log = structlog.get_logger("llm_gateway.proxy")

# OpenTelemetry's gen_ai.provider.name of each provider type: the event's `provider`.
OTEL_NAMES = {"openai": "openai", "azure": "azure.ai.openai", "anthropic": "anthropic"}
_ANTHROPIC_HEADERS = frozenset({b"anthropic-version", b"anthropic-beta"})
_TOKEN = re.compile(rb"^[A-Za-z0-9._-]{1,128}$")  # a version or beta flag, as Anthropic names them
_LOGGED_BETAS = 256  # dropped beta flags remembered (logged once each), per adapter


class Outgoing:
    """What one attempt sends: the body for the API and upstream model, whether the gateway
    asked for a usage chunk the client did not (the relay removes it), and the tool names a
    translation shortened (restored in the answer)."""

    __slots__ = ("body", "strip_usage_chunk", "tool_names")

    def __init__(
        self, body: bytes, *, strip_usage_chunk: bool = False, tool_names: ToolNames | None = None
    ) -> None:
        self.body = body
        self.strip_usage_chunk = strip_usage_chunk
        self.tool_names = tool_names


class Adapter:
    """A provider entry of the model table, as the router uses it."""

    translates: ClassVar[bool] = False  # whether answers must be translated to OpenAI's shape
    apis: ClassVar[frozenset[str]] = frozenset({CHAT.path, COMPLETIONS.path, EMBEDDINGS.path,
                                                RESPONSES.path, MESSAGES.path})  # fmt: skip

    def __init__(
        self, name: str, provider: Provider, api_key: str | None, forward_account: Sequence[bytes]
    ) -> None:
        self.name = name
        self.provider = provider
        self.otel_name = OTEL_NAMES[provider.type]
        self.base = URL(provider.base_url.rstrip("/"))
        self.api_key = api_key
        self.timeout = client_timeout(provider.timeouts.connect, provider.timeouts.read)
        self.first_token = provider.timeouts.first_token
        self._drop = dropped_headers(forward_account)
        self._drop_anthropic = self._drop | _ANTHROPIC_HEADERS
        self._extra = dict(provider.headers)
        self._dropped_betas: set[str] = set()
        # chat/completions' cap on answer tokens: OpenAI's and Azure's current name (their
        # reasoning models refuse `max_tokens`); other servers know `max_tokens` (Mistral
        # refuses the newer name).
        official = provider.type == "azure" or self.base.host == "api.openai.com"
        self.max_tokens_field = "max_completion_tokens" if official else "max_tokens"

    def serves(self, api: Api | None) -> bool:
        """Whether this provider can answer `api` (None: an OpenAI pass-through path)."""
        return api is None or api.path in self.apis

    def url(self, api: Api | None, forward_path: str, query: bytes, model: str | None) -> URL:
        if api is MESSAGES:  # translated: chat/completions answers it
            return self._url(CHAT, "/chat/completions", b"", model)
        return self._url(api, forward_path, query, model)

    def _url(self, api: Api | None, forward_path: str, query: bytes, model: str | None) -> URL:
        return url_under(self.base, forward_path, query)

    def headers(
        self, client_headers: Sequence[tuple[bytes, bytes]], api: Api | None = None
    ) -> dict[str, str]:
        if api is not None and api.face == "anthropic":
            self._drop_betas(client_headers, ())
            headers = forwarded_headers(client_headers, self._drop_anthropic)
        else:
            headers = forwarded_headers(client_headers, self._drop)
        if self.api_key is not None:
            headers.update(self._key_header(self.api_key))
        if self._extra:
            headers.update(self._extra)
        return headers

    def _drop_betas(
        self, client_headers: Sequence[tuple[bytes, bytes]], accepted: Sequence[str] | None
    ) -> str | None:
        """The client's `anthropic-beta` flags this provider takes (`accepted`; None: all), as
        one header value (None: none); each flag dropped is logged once."""
        flags = [
            flag.strip()
            for name, value in client_headers
            if name == b"anthropic-beta"
            for flag in value.decode("latin-1").split(",")
            if _TOKEN.match(flag.strip().encode("latin-1"))
        ]
        if accepted is None or not flags:
            return ",".join(flags) or None
        kept = [flag for flag in flags if flag in accepted]
        for flag in flags:
            if flag not in accepted and flag not in self._dropped_betas:
                if len(self._dropped_betas) < _LOGGED_BETAS:
                    self._dropped_betas.add(flag)
                log.warning("anthropic_beta_dropped", provider=self.name, beta=flag[:128],
                            detail="the provider does not take this beta flag; the request "
                            "goes without it")  # fmt: skip
        return ",".join(kept) or None

    def _key_header(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def outgoing(
        self, api: Api | None, raw: bytes, request: ParsedRequest | None, model: str | None
    ) -> Outgoing:
        """The body to send for the upstream `model`: the client's, with `model` replaced when
        the target names another, and `include_usage` asked for when the stream needs it."""
        if api is None or request is None:
            return Outgoing(raw)
        if api is MESSAGES:
            return self._messages_out(raw, request, model)
        inject = (
            api.usage_on_request
            and self.provider.stream_usage == "inject"
            and wants_stream(request)
            and not client_asked_for_usage(request)
        )
        if model is None or model == request.model:
            body = with_usage_requested(raw, request) if inject else raw
            return Outgoing(body, strip_usage_chunk=inject)
        return Outgoing(_with_model(raw, model, include_usage=inject), strip_usage_chunk=inject)

    def _messages_out(self, raw: bytes, request: ParsedRequest, model: str | None) -> Outgoing:
        """A Messages request as chat/completions (providers/messages_openai.py)."""
        try:
            body, names = messages_openai.request_to_chat(
                raw, model=model or request.model,
                include_usage=self.provider.stream_usage == "inject",
                max_tokens_field=self.max_tokens_field,
            )  # fmt: skip
        except anthropic.TranslationError as exc:
            raise InvalidRequest(exc.message, param=exc.param) from exc
        return Outgoing(body, tool_names=names)

    def stream_start(self) -> StreamStart:
        """What tells, from a stream's first events, whether the attempt failed before content."""
        return OpenAIStart()


class OpenAIAdapter(Adapter):
    pass


class AzureAdapter(Adapter):
    """Classic paths take the deployment in the URL and `api-version` in the query; the v1 API
    takes the deployment as `model`, like OpenAI. Both take the key as `api-key`."""

    _CLASSIC = frozenset({CHAT.path, COMPLETIONS.path, EMBEDDINGS.path})

    def __init__(
        self, name: str, provider: Provider, api_key: str | None, forward_account: Sequence[bytes]
    ) -> None:
        super().__init__(name, provider, api_key, forward_account)
        self.v1 = provider.api_version == "v1"
        self._version = f"api-version={quote(provider.api_version or '', safe='')}".encode()

    def _url(self, api: Api | None, forward_path: str, query: bytes, model: str | None) -> URL:
        if self.v1:
            return url_under(self.base, "/openai/v1" + forward_path, query)
        if api is not None and api.path in self._CLASSIC:
            deployment = _segment(model)
            return url_under(self.base, f"/openai/deployments/{deployment}{forward_path}",
                             self._version)  # fmt: skip
        query = self._version + b"&" + query if query else self._version
        return url_under(self.base, "/openai" + forward_path, query)

    def _key_header(self, key: str) -> dict[str, str]:
        return {"api-key": key}


class AnthropicAdapter(Adapter):
    """Chat completions only, translated; the client's own headers are not the Messages API's
    and are not forwarded."""

    translates = True
    apis = frozenset({CHAT.path, MESSAGES.path, COUNT_TOKENS.path})

    def serves(self, api: Api | None) -> bool:
        return api is not None and api.path in self.apis

    def url(self, api: Api | None, forward_path: str, query: bytes, model: str | None) -> URL:
        if api is not None and api.face == "anthropic":  # /messages, /messages/count_tokens
            path = api.path  # with the client's query (`?beta=true`, as Claude Code sends)
            return url_under(self.base, path[3:] if self._v1_base else path, query)
        return url_under(self.base, "/messages" if self._v1_base else "/v1/messages")

    @property
    def _v1_base(self) -> bool:
        return self.base.raw_path.endswith("/v1")

    def headers(
        self, client_headers: Sequence[tuple[bytes, bytes]], api: Api | None = None
    ) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        headers["anthropic-version"] = anthropic.DEFAULT_VERSION
        if api is not None and api.face == "anthropic":  # the client's version and betas
            for name, value in client_headers:
                if name == b"anthropic-version" and _TOKEN.match(value):
                    headers["anthropic-version"] = value.decode("ascii")
            betas = self._drop_betas(client_headers, self.provider.betas)
            if betas is not None:
                headers["anthropic-beta"] = betas
        if self.api_key is not None:
            headers["x-api-key"] = self.api_key
        if self._extra:
            headers.update(self._extra)
        return headers

    def outgoing(
        self, api: Api | None, raw: bytes, request: ParsedRequest | None, model: str | None
    ) -> Outgoing:
        if request is None or model is None:
            raise InvalidRequest("This provider serves chat completions only.")
        if api is not None and api.face == "anthropic":  # as the client sent it, but `model`
            same = model == request.model
            return Outgoing(raw if same else _with_model(raw, model, include_usage=False))
        try:
            body, _ = anthropic.request_out(
                raw, model=model, default_max_tokens=self.provider.max_tokens
            )
        except anthropic.TranslationError as exc:
            raise InvalidRequest(exc.message, param=exc.param) from exc
        return Outgoing(body)

    def stream_start(self) -> StreamStart:
        return AnthropicStart()


_ADAPTERS: dict[str, type[Adapter]] = {
    "openai": OpenAIAdapter,
    "azure": AzureAdapter,
    "anthropic": AnthropicAdapter,
}


def adapter_for(
    name: str, provider: Provider, api_key: str | None, forward_account: Sequence[bytes]
) -> Adapter:
    return _ADAPTERS[provider.type](name, provider, api_key, forward_account)


def _with_model(raw: bytes, model: str, *, include_usage: bool) -> bytes:
    """The body with another `model` (and `include_usage`): decoded and re-encoded once; what
    cannot be re-encoded exactly (integers past 64 bits) is refused with a 400."""
    try:
        payload = orjson.loads(raw)
        payload["model"] = model
        if include_usage:
            payload["stream_options"] = {**(payload.get("stream_options") or {}),
                                         "include_usage": True}  # fmt: skip
        return orjson.dumps(payload)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError) as exc:
        raise InvalidJSON(f"We could not parse the JSON body of your request: {exc}") from exc


def _segment(model: str | None) -> str:
    """An Azure deployment name as one path segment, never a dot segment."""
    if not model or model in (".", ".."):
        raise InvalidRequest("Invalid value for 'model': not a deployment name.", param="model")
    return quote(model, safe="")
