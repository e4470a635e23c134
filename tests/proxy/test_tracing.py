"""Traces: off by default, on with OTEL_EXPORTER_OTLP_ENDPOINT. A proxy process exports to an
OTLP/HTTP receiver on loopback (protobuf, decoded with the OTLP protos): one SERVER span per
request, the client's `traceparent` its parent, one CLIENT span per attempt, whose context the
provider receives; the usage event and the log line name the trace. With tracing off, the
client's own `traceparent` goes to the provider untouched and names the event's trace.
The spans' own shape (attributes, names, the off path) is checked in-process, against the SDK's
in-memory exporter.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from yarl import URL

from llm_gateway_common.config import ConfigError
from llm_gateway_fakes.openai import FakeOpenAI, FakeOpenAIServer
from llm_gateway_proxy.paths import PathTable
from llm_gateway_proxy.settings import DEFAULT_PASSTHROUGH, ProxySettings
from llm_gateway_proxy.tracing import (
    Tracing,
    TracingSettings,
    client_trace_id,
    end_attempt,
    start_tracing,
)
from tests.conftest import ProxyFactory
from tests.support.events import event_for, make_event
from tests.support.services import ProxyProcess

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
MESSAGES = [{"role": "user", "content": "a secret of the user's"}]
KEY_A, KEY_B = "sk-trace-a-0123456789", "sk-trace-b-0123456789"


# --- configuration ------------------------------------------------------------------------


def test_off_unless_an_endpoint_is_set() -> None:
    assert TracingSettings.from_env({}).endpoint is None
    assert start_tracing(TracingSettings.from_env({})) is None
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    assert TracingSettings.from_env(on).endpoint == "http://collector:4318/v1/traces"
    traces = {**on, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://other:4318/custom"}
    assert TracingSettings.from_env(traces).endpoint == "http://other:4318/custom"
    assert TracingSettings.from_env({**on, "OTEL_SDK_DISABLED": "true"}).endpoint is None
    assert TracingSettings.from_env({**on, "OTEL_TRACES_EXPORTER": "none"}).endpoint is None
    proxy = ProxySettings.from_env({"AUTH_MODE": "none", **on})
    assert proxy.tracing.endpoint == "http://collector:4318/v1/traces"
    assert ProxySettings.from_env({"AUTH_MODE": "none"}).tracing.endpoint is None


def test_sampler_and_resource_come_from_the_standard_variables() -> None:
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    settings = TracingSettings.from_env(on)
    assert (settings.sampler, settings.sampler_ratio) == ("parentbased_always_on", 1.0)
    assert settings.service_name == "llm-gateway-proxy"
    settings = TracingSettings.from_env({
        **on, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1",
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=gw,deployment.environment=prod%20eu",
    })  # fmt: skip
    assert (settings.sampler, settings.sampler_ratio) == ("parentbased_traceidratio", 0.1)
    assert settings.service_name == "gw"
    assert ("deployment.environment", "prod eu") in settings.resource_attributes
    named = TracingSettings.from_env({**on, "OTEL_SERVICE_NAME": "edge",
                                      "OTEL_RESOURCE_ATTRIBUTES": "service.name=gw"})  # fmt: skip
    assert named.service_name == "edge"  # OTEL_SERVICE_NAME wins, as the specification says


@pytest.mark.parametrize(
    ("name", "value"),
    [("OTEL_TRACES_SAMPLER", "sometimes"), ("OTEL_TRACES_EXPORTER", "zipkin"),
     ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
     ("OTEL_RESOURCE_ATTRIBUTES", "novalue")],
)  # fmt: skip
def test_a_wrong_variable_is_named(name: str, value: str) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", name: value}
    with pytest.raises(ConfigError, match=name):
        TracingSettings.from_env(env)


def test_client_trace_ids() -> None:
    assert client_trace_id(TRACEPARENT.encode()) == CLIENT_TRACE
    assert client_trace_id(f"01-{CLIENT_TRACE}-{CLIENT_SPAN}-01-later".encode()) == CLIENT_TRACE
    for bad in (f"00-{'0' * 32}-{CLIENT_SPAN}-01", f"00-{CLIENT_TRACE}-{'0' * 16}-01",
                f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
                f"00-{CLIENT_TRACE.upper()}-{CLIENT_SPAN}-01",
                f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01-x", "00-abc", ""):  # fmt: skip
        assert client_trace_id(bad.encode()) is None, bad


# --- spans, in-process ----------------------------------------------------------------------


@pytest.fixture
def memory() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = start_tracing(TracingSettings(), exporter=exporter)
    assert tracing is not None
    yield tracing, exporter
    tracing.close()


def test_spans_hold_the_gen_ai_attributes_and_never_content(
    memory: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = memory
    target = PathTable(DEFAULT_PASSTHROUGH).resolve("POST", "/v1/chat/completions")
    client_headers = [(b"traceparent", TRACEPARENT.encode()), (b"tracestate", b"vendor=1"),
                      (b"authorization", b"Bearer sk-client")]  # fmt: skip
    request = tracing.request(client_headers, "POST", target)
    assert request.trace_id == CLIENT_TRACE
    adapter = SimpleNamespace(otel_name="azure.ai.openai", name="azure-eu")
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=1", "api-key": "sk-provider"}
    first = request.attempt(adapter, "POST", URL("https://eu.example:8443/openai"), "gpt-4o-eu",
                            headers)  # fmt: skip
    end_attempt(first, "http_503", 503)
    sent = dict(headers)
    second = request.attempt(adapter, "POST", URL("https://eu.example/openai"), "gpt-4o-eu",
                             headers)  # fmt: skip
    end_attempt(second, "ok", 200)
    request.finish(make_event(1, model="gpt-4o", response_model="gpt-4o-2024-08-06",
                              provider="azure.ai.openai", provider_name="azure-eu", attempts=2,
                              cached_tokens=3, reasoning_tokens=2, request_id="r1"))  # fmt: skip
    tracing._provider.force_flush()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"chat gpt-4o", "chat gpt-4o-eu"}
    server = spans["chat gpt-4o"]
    assert server.kind is SpanKind.SERVER
    assert server.parent is not None and format(server.parent.span_id, "016x") == CLIENT_SPAN
    assert dict(server.attributes or {}) == {
        "http.request.method": "POST", "http.route": "/v1/chat/completions",
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "azure.ai.openai",
        "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 11, "gen_ai.usage.output_tokens": 5,
        "gen_ai.usage.cache_read.input_tokens": 3, "gen_ai.usage.reasoning.output_tokens": 2,
        "http.response.status_code": 200, "llm_gateway.outcome": "ok",
        "llm_gateway.target": "azure-eu", "llm_gateway.attempts": 2,
        "llm_gateway.request_id": "r1", "llm_gateway.tenant": "tenant-1",
        "llm_gateway.usage_source": "provider",
    }  # fmt: skip
    assert server.status.status_code is StatusCode.UNSET
    attempts = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert len(attempts) == 2
    failed, ok = attempts
    assert failed.parent is not None and failed.parent.span_id == server.context.span_id
    assert dict(failed.attributes or {}) == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "azure.ai.openai",
        "gen_ai.request.model": "gpt-4o-eu", "llm_gateway.target": "azure-eu",
        "server.address": "eu.example", "server.port": 8443, "http.request.method": "POST",
        "http.response.status_code": 503, "llm_gateway.result": "http_503",
        "error.type": "http_503",
    }  # fmt: skip
    assert failed.status.status_code is StatusCode.ERROR
    assert (ok.attributes or {})["llm_gateway.result"] == "ok"
    # The provider gets the attempt's context, the client's replaced; keys stay where they were.
    first_id = format(first.get_span_context().span_id, "016x")
    assert sent["traceparent"] == f"00-{CLIENT_TRACE}-{first_id}-01"
    assert sent["tracestate"] == "vendor=1"  # the client's trace state travels with its trace
    assert headers["traceparent"].split("-")[2] == format(ok.context.span_id, "016x")
    recorded = repr([(s.name, s.attributes, s.events) for s in exporter.get_finished_spans()])
    assert "secret" not in recorded and "sk-" not in recorded


def test_a_failed_request_and_an_endpoint_without_a_model(
    memory: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = memory
    paths = PathTable(DEFAULT_PASSTHROUGH)
    request = tracing.request([], "POST", paths.resolve("POST", "/v1/embeddings"))
    request.finish(make_event(1, model="text-embedding-3-small", status_code=429,
                              outcome="gateway_error",
                              error_type="rate_limit_exceeded"))  # fmt: skip
    models_path = paths.resolve("GET", "/v1/models")
    listing = tracing.request([(b"traceparent", b"garbage")], "GET", models_path)
    listing.finish(make_event(2, model=None))
    unknown = tracing.request([], "GET", None)
    unknown.finish(make_event(3, status_code=404, outcome="gateway_error", error_type="not_found"))
    tracing._provider.force_flush()
    failed, models, other = exporter.get_finished_spans()
    assert failed.name == "embeddings text-embedding-3-small"
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "rate_limit_exceeded"
    assert models.name == "GET /v1/models" and models.parent is None  # a bad traceparent: a root
    assert "gen_ai.operation.name" not in (models.attributes or {})
    assert other.name == "GET"


def test_an_unsampled_trace_still_has_an_id_and_propagates() -> None:
    exporter = InMemorySpanExporter()
    tracing = start_tracing(TracingSettings(sampler="always_off"), exporter=exporter)
    assert tracing is not None
    request = tracing.request([], "POST", None)
    headers: dict[str, str] = {}
    span = request.attempt(SimpleNamespace(otel_name="openai", name="a"), "POST",
                           URL("http://p/v1"), "m", headers)  # fmt: skip
    end_attempt(span, "ok", 200)
    request.finish(make_event(1))
    tracing.close()
    assert exporter.get_finished_spans() == ()
    assert len(request.trace_id) == 32
    version, trace_id, _, flags = headers["traceparent"].split("-")
    assert (version, trace_id) == ("00", request.trace_id)
    assert int(flags, 16) & 1 == 0  # not sampled: the provider need not record it either


# --- a proxy process exporting to an OTLP/HTTP receiver ---------------------------------------


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP traces receiver: keeps every POST (path, content type, body)."""

    posts: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.posts.append((self.path, self.headers["content-type"], body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def exported() -> list[dict[str, Any]]:
    """Every span received so far, as plain values."""
    spans = []
    for _, _, body in list(Receiver.posts):
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            service = _values(resource.resource.attributes)["service.name"]
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append({
                        "name": span.name, "kind": span.kind, "service": service,
                        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex(), "status": span.status.code,
                        "attributes": _values(span.attributes),
                    })  # fmt: skip
    return spans


def _values(attributes: Any) -> dict[str, Any]:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in attributes}


async def spans_of(trace_id: str, count: int) -> list[dict[str, Any]]:
    """The trace's spans, once `count` of them arrived (the batch goes out every 50 ms)."""
    give_up = time.monotonic() + 10
    while True:
        spans = [s for s in exported() if s["trace_id"] == trace_id]
        if len(spans) >= count or time.monotonic() > give_up:
            return spans
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def providers() -> Iterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    a, b = FakeOpenAIServer().start(), FakeOpenAIServer().start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def traced(
    receiver: str,
    providers: tuple[FakeOpenAIServer, FakeOpenAIServer],
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    """A proxy with tracing on, two providers: `retried` tries A first, then B."""
    a, b = providers
    file = {
        "providers": {"a": {"type": "openai", "base_url": a.base_url, "api_key_env": "KEY_A"},
                      "b": {"type": "openai", "base_url": b.base_url, "api_key_env": "KEY_B"}},
        "models": {"retried": {"targets": [{"provider": "a", "model": "gpt-4o-mini",
                                            "weight": 1000}, {"provider": "b", "model": "gpt-4o"}],
                               "retries": 1, "backoff": {"base": 0.01, "max": 0.1},
                               "cooldown": {"failures": 1000, "seconds": 1}}},
        "default_provider": "a",
    }  # fmt: skip
    path: Path = tmp_path_factory.mktemp("tracing") / "models.yaml"
    path.write_text(yaml.safe_dump(file))
    proxy = ProxyProcess({
        "MODELS_FILE": str(path), "KEY_A": KEY_A, "KEY_B": KEY_B, "REDIS_URL": redis_url,
        "AUTH_MODE": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver,
        "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
    }).start()  # fmt: skip
    yield proxy
    proxy.stop()


@pytest.fixture
def fakes(providers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> tuple[FakeOpenAI, FakeOpenAI]:
    for server, key in zip(providers, (KEY_A, KEY_B), strict=True):
        server.fake.reset()
        server.fake.behaviour.api_key = key
    return providers[0].fake, providers[1].fake


async def chat(
    http: aiohttp.ClientSession, proxy: ProxyProcess, model: str, headers: dict[str, str]
) -> str:
    """POST a chat completion; returns the request id."""
    async with http.post(f"{proxy.base_url}/v1/chat/completions", headers=headers,
                         json={"model": model, "messages": MESSAGES}) as response:  # fmt: skip
        assert response.status == 200, await response.text()
        await response.read()
        return response.headers["x-llm-request-id"]


async def log_line(proxy: ProxyProcess, request_id: str) -> dict[str, object]:
    """The request's log line, once written (the log is flushed every few ms)."""
    for _ in range(200):
        for line in proxy.log_lines():
            if line.get("event") == "request" and line["request_id"] == request_id:
                return line
        await asyncio.sleep(0.05)
    raise AssertionError(f"no log line for {request_id}")


async def test_a_retried_request_is_one_server_span_and_a_client_span_per_attempt(
    traced: ProxyProcess,
    fakes: tuple[FakeOpenAI, FakeOpenAI],
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:
    a, b = fakes
    a.behaviour.fail_status, a.behaviour.fail_times = 503, 1
    request_id = await chat(http, traced, "retried",
                            {"traceparent": TRACEPARENT, "tracestate": "vendor=1"})  # fmt: skip
    spans = await spans_of(CLIENT_TRACE, 3)
    (server,) = [s for s in spans if s["attributes"].get("llm_gateway.request_id") == request_id]
    assert server["name"] == "chat retried" and server["parent"] == CLIENT_SPAN
    assert server["service"] == "llm-gateway-proxy"
    attributes = server["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "retried"
    assert attributes["gen_ai.response.model"].startswith("gpt-4o-")  # a dated snapshot
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["llm_gateway.target"] == "b" and attributes["llm_gateway.attempts"] == 2
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] == 8
    assert attributes["http.response.status_code"] == 200
    attempts = sorted((s for s in spans if s["parent"] == server["span_id"]),
                      key=lambda s: s["attributes"]["llm_gateway.target"])  # fmt: skip
    assert [(s["name"], s["attributes"]["llm_gateway.target"],
             s["attributes"]["http.response.status_code"], s["attributes"]["llm_gateway.result"])
            for s in attempts] == [("chat gpt-4o-mini", "a", 503, "http_503"),
                                   ("chat gpt-4o", "b", 200, "ok")]  # fmt: skip
    assert attempts[0]["attributes"]["server.address"] == "127.0.0.1"
    # Each provider saw its own attempt's context, in the client's trace.
    for fake, span in zip((a, b), attempts, strict=True):
        (received,) = fake.received
        assert received.headers["traceparent"] == f"00-{CLIENT_TRACE}-{span['span_id']}-01"
        assert received.headers["tracestate"] == "vendor=1"
    event = await event_for(redis, request_id)
    assert event.trace_id == CLIENT_TRACE
    line = await log_line(traced, request_id)
    assert line["trace_id"] == CLIENT_TRACE
    # What the exporter sent: OTLP protobuf to /v1/traces under OTEL_EXPORTER_OTLP_ENDPOINT.
    assert {(path, kind) for path, kind, _ in Receiver.posts} == {
        ("/v1/traces", "application/x-protobuf")
    }
    assert all(MESSAGES[0]["content"].encode() not in body for _, _, body in Receiver.posts)


async def test_without_a_client_trace_the_proxy_starts_one(
    traced: ProxyProcess,
    fakes: tuple[FakeOpenAI, FakeOpenAI],
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:
    a, _ = fakes
    request_id = await chat(http, traced, "retried", {})
    event = await event_for(redis, request_id)
    assert event.trace_id is not None and event.trace_id != CLIENT_TRACE
    spans = await spans_of(event.trace_id, 2)
    (server,) = [s for s in spans if s["kind"] == 2]  # SPAN_KIND_SERVER
    assert server["parent"] == "" and server["name"] == "chat retried"
    (received,) = a.received
    assert received.headers["traceparent"].split("-")[1] == event.trace_id
    async with http.get(f"{traced.base_url}/v1/models") as response:
        assert response.status == 200
        request_id = response.headers["x-llm-request-id"]
    event = await event_for(redis, request_id)
    assert event.trace_id is not None
    (listing,) = await spans_of(event.trace_id, 1)
    assert listing["name"] == "GET /v1/models"


async def test_with_tracing_off_the_clients_trace_passes_through(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession, redis: aioredis.Redis
) -> None:
    request_id = await chat(http, proxy, "gpt-4o-mini", {"traceparent": TRACEPARENT,
                                                         "tracestate": "vendor=1"})  # fmt: skip
    assert upstream.received[-1].headers["traceparent"] == TRACEPARENT  # as it always was
    assert upstream.received[-1].headers["tracestate"] == "vendor=1"
    assert (await event_for(redis, request_id)).trace_id == CLIENT_TRACE
    request_id = await chat(http, proxy, "gpt-4o-mini", {})
    assert "traceparent" not in upstream.received[-1].headers  # none invented
    assert (await event_for(redis, request_id)).trace_id is None
    request_id = await chat(http, proxy, "gpt-4o-mini", {"traceparent": "00-nonsense"})
    assert (await event_for(redis, request_id)).trace_id is None
    line = await log_line(proxy, request_id)
    assert line["trace_id"] is None


class _Stuck(InMemorySpanExporter):
    """A collector that never answers: every export hangs."""

    def export(self, spans: Any) -> Any:
        time.sleep(60)
        return super().export(spans)


def test_closing_is_bounded_when_the_collector_hangs() -> None:
    tracing = start_tracing(TracingSettings(), exporter=_Stuck())
    assert tracing is not None
    tracing.request([], "GET", None).finish(make_event(1))
    started = time.monotonic()
    tracing.close()
    assert time.monotonic() - started < 7


async def test_spans_still_queued_go_out_at_shutdown(
    receiver: str, proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    # A batch delay of ten minutes: nothing is exported before the proxy exits.
    proxy = proxy_factory(OTEL_EXPORTER_OTLP_ENDPOINT=receiver, OTEL_BSP_SCHEDULE_DELAY="600000")
    request_id = await chat(http, proxy, "gpt-4o-mini", {})
    await asyncio.sleep(0.2)
    assert not spans_of_request(request_id)
    assert await asyncio.to_thread(proxy.terminate) == 0
    (server,) = spans_of_request(request_id)
    assert server["name"] == "chat gpt-4o-mini"


def spans_of_request(request_id: str) -> list[dict[str, Any]]:
    return [s for s in exported() if s["attributes"].get("llm_gateway.request_id") == request_id]
