"""What tracing costs a request: the hooks with tracing off, and the spans with it on.

Off: the three `is None` checks the request path makes (handler start, handler end, each
attempt), the Exchange's header scan, and `client_trace_id` for a request that carries a
`traceparent`. On: one SERVER span (context extracted from the client's `traceparent`), one
CLIENT span with `traceparent` injected, both ended with their attributes, through the real
BatchSpanProcessor (its exporter drops the batches: the export runs on the SDK's thread, off
the request path); sampled, and with a sampler that drops every trace.

Run: `uv run python bench/tracing.py`
"""

from __future__ import annotations

import timeit
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from yarl import URL

from llm_gateway_proxy.exchange import Exchange
from llm_gateway_proxy.paths import PathTable
from llm_gateway_proxy.settings import DEFAULT_PASSTHROUGH
from llm_gateway_proxy.tracing import TracingSettings, client_trace_id, end_attempt, start_tracing
from tests.support.events import make_event

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HEADERS = [
    (b"host", b"gateway"), (b"user-agent", b"OpenAI/Python 1.99.0"), (b"accept", b"*/*"),
    (b"content-type", b"application/json"), (b"authorization", b"Bearer sk-llmgw-x"),
    (b"x-stainless-lang", b"python"), (b"x-stainless-os", b"Linux"), (b"content-length", b"99"),
]  # fmt: skip


class _Dropped(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _per_call(fn: Callable[[], Any], number: int) -> float:
    """Microseconds per call: the best of 5 runs."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    target = PathTable(DEFAULT_PASSTHROUGH).resolve("POST", "/v1/chat/completions")
    gateway = SimpleNamespace(tracing=None)
    exchange = SimpleNamespace(trace=None)
    event = make_event(1, provider_name="openai", response_model="gpt-4o-2024-08-06")

    def off_hooks() -> None:
        if gateway.tracing is not None:
            raise AssertionError
        if exchange.trace is not None:  # handler end
            raise AssertionError
        if exchange.trace is not None:  # one attempt
            raise AssertionError

    traced_headers = [*HEADERS, (b"traceparent", TRACEPARENT)]

    def exchange_without() -> Exchange:
        return Exchange(("r", "e"), HEADERS, "/v1/chat/completions", "POST", "openai",
                        metered=True)  # fmt: skip

    def exchange_with() -> Exchange:
        return Exchange(("r", "e"), traced_headers, "/v1/chat/completions", "POST", "openai",
                        metered=True)  # fmt: skip

    results = {
        "off: the 3 hook checks": _per_call(off_hooks, 1_000_000),
        "off: Exchange(), no traceparent": _per_call(exchange_without, 200_000),
        "off: Exchange(), with a traceparent": _per_call(exchange_with, 200_000),
        "off: client_trace_id alone": _per_call(lambda: client_trace_id(TRACEPARENT), 200_000),
    }
    adapter = SimpleNamespace(otel_name="openai", name="openai")
    url = URL("https://api.openai.com/v1/chat/completions")
    for label, sampler in (("on, sampled", "parentbased_always_on"),
                           ("on, not sampled", "always_off")):  # fmt: skip
        tracing = start_tracing(TracingSettings(sampler=sampler), exporter=_Dropped())
        assert tracing is not None

        def request(tracing: Any = tracing) -> None:
            trace = tracing.request(traced_headers, "POST", target)
            span = trace.attempt(adapter, "POST", url, "gpt-4o", {"traceparent": "x"})
            end_attempt(span, "ok", 200)
            trace.finish(event)

        results[f"{label}: a request, one attempt"] = _per_call(request, 20_000)
        tracing.close()
    width = max(map(len, results))
    for name, micros in results.items():
        print(f"{name:<{width}}  {micros:8.3f} us")


if __name__ == "__main__":
    main()
