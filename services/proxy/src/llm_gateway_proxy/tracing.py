"""Traces: OpenTelemetry spans of each request and of each upstream attempt, off by default.

On when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set, unless
OTEL_SDK_DISABLED is true or OTEL_TRACES_EXPORTER is `none`. Spans go out over OTLP/HTTP
(protobuf) from a BatchSpanProcessor: its thread exports, never a request. The provider is the
lifespan's (`start_tracing` .. `Tracing.close`); the global tracer provider is never set.

    SERVER  `chat gpt-4o` (`{gen_ai.operation.name} {model}`; `GET /v1/models` for the
            endpoints that run no model), the client's `traceparent` its parent; ended after the
            usage event is built, with what the event says (model, usage, outcome, attempts)
    CLIENT  one per upstream attempt, the server span's child; its context replaces any
            `traceparent`/`tracestate` the client sent in the request to the provider

Message content, keys and headers are never recorded. With tracing off nothing here runs on the
request path but `client_trace_id`, and only for a request that carries a `traceparent`: the
event then names the client's trace (its own `traceparent` is forwarded as it always was).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import unquote

import msgspec
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from llm_gateway_common.config import ConfigError, Env
from llm_gateway_common.events import UsageEvent

if TYPE_CHECKING:
    from yarl import URL

    from llm_gateway_proxy.paths import Target
    from llm_gateway_proxy.providers.adapters import Adapter

DEFAULT_SERVICE_NAME = "llm-gateway-proxy"
_SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
             "parentbased_always_off", "parentbased_traceidratio")  # fmt: skip
_CLOSE_SECONDS = 5.0  # at exit: what the batch holds gets this long to go out
# A later version may append fields after a dash; version 00 has none.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(?:-.*)?", re.S)
_NO_TRACE, _NO_SPAN = b"0" * 32, b"0" * 16


class TracingSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What decides whether and where spans go; the SDK reads the exporter's own variables
    (OTEL_EXPORTER_OTLP_*HEADERS, *TIMEOUT, *COMPRESSION, *CERTIFICATE) and OTEL_BSP_*."""

    endpoint: str | None = None  # the OTLP/HTTP traces URL; None: tracing is off
    sampler: str = "parentbased_always_on"
    sampler_ratio: float = 1.0
    service_name: str = DEFAULT_SERVICE_NAME
    resource_attributes: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TracingSettings:
        """Read the OTEL_* variables; raises ConfigError naming the one that is wrong."""
        env = Env(environ)
        exporter = env.text("OTEL_TRACES_EXPORTER", "otlp").lower()
        if exporter not in ("otlp", "none"):
            raise ConfigError(f"OTEL_TRACES_EXPORTER must be otlp or none, got {exporter!r}")
        endpoint = _endpoint(env)
        if env.flag("OTEL_SDK_DISABLED", False) or exporter == "none" or endpoint is None:
            return cls()
        protocol = env.text("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                            env.text("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))  # fmt: skip
        if protocol != "http/protobuf":
            raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported, "
                              f"got {protocol!r}")  # fmt: skip
        sampler = env.text("OTEL_TRACES_SAMPLER", "parentbased_always_on").lower()
        if sampler not in _SAMPLERS:
            raise ConfigError(f"OTEL_TRACES_SAMPLER must be one of {', '.join(_SAMPLERS)}, "
                              f"got {sampler!r}")  # fmt: skip
        ratio = 1.0
        if sampler.endswith("traceidratio"):
            ratio = env.number("OTEL_TRACES_SAMPLER_ARG", 1.0, minimum=0.0)
            if ratio > 1.0:
                raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG must be within 0..1, got {ratio}")
        attributes = _resource_attributes(env)
        service = env.optional_text("OTEL_SERVICE_NAME") or dict(attributes).get(
            "service.name", DEFAULT_SERVICE_NAME
        )
        return cls(endpoint=endpoint, sampler=sampler, sampler_ratio=ratio,
                   service_name=service, resource_attributes=attributes)  # fmt: skip


def _endpoint(env: Env) -> str | None:
    """The traces URL: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, or `/v1/traces` under
    OTEL_EXPORTER_OTLP_ENDPOINT (the OTLP exporter specification's rule)."""
    name = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    url = env.optional_text(name)
    if url is None:
        name = "OTEL_EXPORTER_OTLP_ENDPOINT"
        base = env.optional_text(name)
        url = None if base is None else base.rstrip("/") + "/v1/traces"
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http(s) URL, got {url!r}")
    return url


def _resource_attributes(env: Env) -> tuple[tuple[str, str], ...]:
    """OTEL_RESOURCE_ATTRIBUTES: `key=value,...`, values percent-encoded."""
    pairs = []
    for item in env.csv("OTEL_RESOURCE_ATTRIBUTES"):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"OTEL_RESOURCE_ATTRIBUTES: {item!r} is not key=value")
        pairs.append((key.strip(), unquote(value.strip())))
    return tuple(pairs)


def start_tracing(
    settings: TracingSettings, *, exporter: SpanExporter | None = None
) -> Tracing | None:
    """The process's tracing, or None when it is off. `exporter` replaces OTLP (tests)."""
    if settings.endpoint is None and exporter is None:
        return None
    if exporter is None:
        exporter = OTLPSpanExporter(endpoint=settings.endpoint)
    return Tracing(settings, exporter)


class Tracing:
    """The tracer provider and the one propagator (W3C trace context) the proxy uses."""

    def __init__(self, settings: TracingSettings, exporter: SpanExporter) -> None:
        resource = Resource.create(
            {**dict(settings.resource_attributes), "service.name": settings.service_name}
        )
        self._provider = TracerProvider(sampler=_sampler(settings), resource=resource,
                                        shutdown_on_exit=False)  # fmt: skip
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self._provider.get_tracer("llm_gateway_proxy")
        self.propagator = TraceContextTextMapPropagator()

    def request(
        self, headers: Sequence[tuple[bytes, bytes]], method: str, target: Target | None
    ) -> RequestTrace:
        """Start a request's SERVER span, the child of the client's `traceparent` if valid."""
        carrier = {}
        for header, value in headers:
            if header in (b"traceparent", b"tracestate"):
                carrier[header.decode()] = value.decode("latin-1")
        parent = self.propagator.extract(carrier) if carrier else None
        api = target.api if target is not None else None
        operation = api.operation if api is not None else None
        if operation is None:  # an endpoint that runs no model of ours: HTTP's span name
            name = method if target is None else f"{method} {target.pattern}"
        else:
            name = operation
        attributes: dict[str, str] = {"http.request.method": method}
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
        if target is not None:
            attributes["http.route"] = target.pattern
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER,
                                      attributes=attributes)  # fmt: skip
        return RequestTrace(self, span, operation)

    def close(self) -> None:
        """Flush what the batch holds and stop its thread, for `_CLOSE_SECONDS` at most (an
        export stuck on a collector that does not answer is left to its daemon thread).
        Blocking: run it off the event loop."""
        closing = threading.Thread(target=self._shut_down, name="otel-close", daemon=True)
        closing.start()
        closing.join(_CLOSE_SECONDS)

    def _shut_down(self) -> None:
        self._provider.force_flush(int(_CLOSE_SECONDS * 1000))
        self._provider.shutdown()


class RequestTrace:
    """One request's SERVER span, and the CLIENT spans of its attempts."""

    __slots__ = ("_tracing", "operation", "span", "trace_id")

    def __init__(self, tracing: Tracing, span: Span, operation: str | None) -> None:
        self._tracing = tracing
        self.span = span
        self.operation = operation
        self.trace_id = format(span.get_span_context().trace_id, "032x")

    def attempt(
        self, adapter: Adapter, method: str, url: URL, model: str | None, headers: dict[str, str]
    ) -> Span:
        """Start an attempt's CLIENT span and put its context in the provider request's
        headers, replacing the client's."""
        operation = self.operation
        name = method if operation is None else f"{operation} {model}" if model else operation
        attributes: dict[str, str | int] = {
            "gen_ai.provider.name": adapter.otel_name,
            "llm_gateway.target": adapter.name,
            "server.address": url.host or "",
            "http.request.method": method,
        }
        if url.port is not None:
            attributes["server.port"] = url.port
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
        if model:
            attributes["gen_ai.request.model"] = model
        context = trace.set_span_in_context(self.span)
        span = self._tracing.tracer.start_span(name, context=context, kind=SpanKind.CLIENT,
                                               attributes=attributes)  # fmt: skip
        headers.pop("tracestate", None)  # the client's belongs with the client's traceparent
        self._tracing.propagator.inject(headers, context=trace.set_span_in_context(span))
        return span

    def finish(self, event: UsageEvent) -> None:
        """End the SERVER span with what the usage event says of the request."""
        span = self.span
        if span.is_recording():
            if self.operation is not None and event.model:
                span.update_name(f"{self.operation} {event.model}")
            span.set_attributes(_request_attributes(event))
            if event.failed:
                span.set_status(StatusCode.ERROR, event.error_type)
        span.end()


def end_attempt(span: Span, result: str, status: int | None) -> None:
    """End an attempt's CLIENT span: `ok` or why it failed (the router's reason), and the
    provider's HTTP status when it answered."""
    if span.is_recording():
        span.set_attribute("llm_gateway.result", result)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if result != "ok":
            span.set_attribute("error.type", result)
            span.set_status(StatusCode.ERROR)
    span.end()


def client_trace_id(traceparent: bytes) -> str | None:
    """The trace id of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), else None."""
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return None
    version, trace_id, parent_id = match.groups()
    if version == b"ff" or (version == b"00" and len(traceparent) != 55):
        return None
    if trace_id == _NO_TRACE or parent_id == _NO_SPAN:
        return None
    return trace_id.decode()


def _request_attributes(event: UsageEvent) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "gen_ai.provider.name": event.provider,
        "http.response.status_code": event.status_code,
        "llm_gateway.outcome": event.outcome,
        "llm_gateway.attempts": event.attempts,
        "llm_gateway.request_id": event.request_id,
        "llm_gateway.tenant": event.tenant,
        "llm_gateway.usage_source": event.usage_source,
        "gen_ai.usage.input_tokens": event.prompt_tokens,
        "gen_ai.usage.output_tokens": event.completion_tokens,
        "gen_ai.usage.cache_read.input_tokens": event.cached_tokens,
        "gen_ai.usage.reasoning.output_tokens": event.reasoning_tokens,
    }
    optional = (
        ("gen_ai.request.model", event.model),
        ("gen_ai.response.model", event.response_model),
        ("llm_gateway.target", event.provider_name),
        ("error.type", event.error_type if event.failed else None),
    )
    for name, value in optional:
        if value is not None:
            attributes[name] = value
    return attributes


def _sampler(settings: TracingSettings) -> Sampler:
    name, ratio = settings.sampler, settings.sampler_ratio
    root: Sampler = (
        TraceIdRatioBased(ratio) if name.endswith("traceidratio")
        else ALWAYS_OFF if name.endswith("always_off")
        else ALWAYS_ON
    )  # fmt: skip
    return ParentBased(root) if name.startswith("parentbased_") else root
