"""One adapter per provider entry of the model table: where a request goes, with which headers
and body, and how the answer's stream starts. No I/O here: the router sends, the relay reads.

    openai     any OpenAI-compatible server: the body as sent, but `model` (the target's) and
               `stream_options.include_usage` (unless `stream_usage: never`); Bearer key
    azure      the same body; classic `/openai/deployments/{deployment}/...?api-version=` or the
               v1 API `/openai/v1/...`; `api-key` header
    anthropic  chat/completions translated to the Messages API (providers/anthropic*.py);
               `x-api-key` and `anthropic-version`; nothing else is served
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar
from urllib.parse import quote

import orjson
from yarl import URL

from llm_gateway_proxy.apis import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    RESPONSES,
    Api,
    ParsedRequest,
    client_asked_for_usage,
    wants_stream,
    with_usage_requested,
)
from llm_gateway_proxy.errors import InvalidJSON, InvalidRequest
from llm_gateway_proxy.modelconfig import Provider
from llm_gateway_proxy.providers import anthropic
from llm_gateway_proxy.providers.streamstart import AnthropicStart, OpenAIStart, StreamStart
from llm_gateway_proxy.upstream import (
    client_timeout,
    dropped_headers,
    forwarded_headers,
    url_under,
)

# OpenTelemetry's gen_ai.provider.name of each provider type: the event's `provider`.
OTEL_NAMES = {"openai": "openai", "azure": "azure.ai.openai", "anthropic": "anthropic"}


class Outgoing:
    """What one attempt sends: the body for the API and upstream model, and whether the
    gateway asked for a usage chunk the client did not (the relay removes it)."""

    __slots__ = ("body", "strip_usage_chunk")

    def __init__(self, body: bytes, *, strip_usage_chunk: bool = False) -> None:
        self.body = body
        self.strip_usage_chunk = strip_usage_chunk


class Adapter:
    """A provider entry of the model table, as the router uses it."""

    translates: ClassVar[bool] = False  # whether answers must be translated to OpenAI's shape
    apis: ClassVar[frozenset[str]] = frozenset({CHAT.path, COMPLETIONS.path, EMBEDDINGS.path,
                                                RESPONSES.path})  # fmt: skip

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
        self._extra = dict(provider.headers)

    def serves(self, api: Api | None) -> bool:
        """Whether this provider can answer `api` (None: an OpenAI pass-through path)."""
        return api is None or api.path in self.apis

    def url(self, api: Api | None, forward_path: str, query: bytes, model: str | None) -> URL:
        return url_under(self.base, forward_path, query)

    def headers(self, client_headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
        headers = forwarded_headers(client_headers, self._drop)
        if self.api_key is not None:
            headers.update(self._key_header(self.api_key))
        if self._extra:
            headers.update(self._extra)
        return headers

    def _key_header(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def outgoing(
        self, api: Api | None, raw: bytes, request: ParsedRequest | None, model: str | None
    ) -> Outgoing:
        """The body to send for the upstream `model`: the client's, with `model` replaced when
        the target names another, and `include_usage` asked for when the stream needs it."""
        if api is None or request is None:
            return Outgoing(raw)
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

    def url(self, api: Api | None, forward_path: str, query: bytes, model: str | None) -> URL:
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
    apis = frozenset({CHAT.path})

    def serves(self, api: Api | None) -> bool:
        return api is not None and api.path in self.apis

    def url(self, api: Api | None, forward_path: str, query: bytes, model: str | None) -> URL:
        path = "/messages" if self.base.raw_path.endswith("/v1") else "/v1/messages"
        return url_under(self.base, path)

    def headers(self, client_headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        headers["anthropic-version"] = anthropic.DEFAULT_VERSION
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
