"""One client request as it passes through the gateway: what becomes its usage event and log line.

Identity (request id, tenant, client request id) comes from the ASGI scope; the handler fills in
the rest as it learns it, and `to_event` closes the record exactly once.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from llm_gateway_common.events import Outcome, UsageEvent, UsageSource
from llm_gateway_proxy.keys import KeyRecord, Limits
from llm_gateway_proxy.prices import NO_PRICE, Price
from llm_gateway_proxy.tracing import RequestTrace, client_trace_id
from llm_gateway_proxy.usage import Usage, estimate_tokens

REQUEST_ID_HEADER = "X-LLM-Request-ID"
MAX_HEADER_ID = 256
_FREE = Decimal(0)
_ESTIMABLE = frozenset({"ok", "client_disconnected"})
_KEEP_BODY_BYTES = 64 * 1024
# The request headers the exchange reads (the last of a repeated one wins).
_READ_HEADERS = frozenset(
    {b"x-llm-tenant", b"x-tenant", b"x-request-id", b"traceparent", b"x-claude-code-session-id"}
)


class Exchange:
    """Mutable per-request state, owned by one handler invocation."""

    __slots__ = (
        "attempts",
        "cache_status",
        "captured_request",
        "captured_response",
        "client_request_id",
        "completion_estimate",
        "endpoint",
        "error_type",
        "event_id",
        "failed_targets",
        "finished",
        "key",
        "metered",
        "method",
        "model",
        "outcome",
        "prompt_estimate",
        "provider",
        "provider_name",
        "request_body",
        "request_bytes",
        "request_id",
        "requested_tenant",
        "response_bytes",
        "response_model",
        "saved_cost_usd",
        "session_id",
        "started",
        "started_at",
        "status",
        "stream",
        "strip_usage_chunk",
        "targets",
        "tenant",
        "tenant_limits",
        "trace",
        "trace_id",
        "ttfb",
        "upstream_called",
        "upstream_done",
        "upstream_model",
        "upstream_request_id",
        "upstream_started",
        "usage",
        "user",
    )  # fmt: skip

    def __init__(
        self,
        ids: tuple[str, str],
        scope_headers: list[tuple[bytes, bytes]],
        endpoint: str,
        method: str,
        provider: str,
        *,
        metered: bool,
    ) -> None:
        self.request_id, self.event_id = ids
        self.started_at = time.time()
        self.started = time.perf_counter()
        self.finished: float | None = None
        self.ttfb: float | None = None
        self.endpoint = endpoint
        self.method = method
        self.provider = provider  # the answering provider's type (OTel name); before any
        # attempt, the default provider's
        self.provider_name: str | None = None  # its entry in the model table
        # The response cache's part (cache.py): hit | miss | stored | bypass, None: no cache;
        # what a hit saved (the stored answer's cost).
        self.cache_status: str | None = None
        self.saved_cost_usd: Decimal | None = None
        self.upstream_model: str | None = None
        self.attempts = 0
        self.failed_targets: list[str] = []
        self.targets: list[str] = []  # every attempt's target id (`provider/model`), in order
        # The span the upstream had (first attempt sent .. answer read): overhead is the rest.
        self.upstream_started: float | None = None
        self.upstream_done: float | None = None
        self.metered = metered
        found = {name: value for name, value in scope_headers if name in _READ_HEADERS}
        self.requested_tenant = _header_text(found.get(b"x-llm-tenant") or found.get(b"x-tenant"))
        # a coding agent's session (Claude Code's)
        self.session_id = _header_text(found.get(b"x-claude-code-session-id"))
        self.tenant = self.requested_tenant or "default"
        self.key: KeyRecord | None = None
        self.tenant_limits: Limits | None = None
        self.client_request_id = _header_text(found.get(b"x-request-id"))
        # The trace the event names: the server span's (tracing.py) when tracing is on, else
        # the client's own, so that a bill line still leads to the client's trace.
        self.trace: RequestTrace | None = None
        traceparent = found.get(b"traceparent")
        self.trace_id = None if traceparent is None else client_trace_id(traceparent)
        self.upstream_request_id: str | None = None
        self.model: str | None = None
        self.response_model: str | None = None
        self.user: str | None = None
        self.stream = False
        self.status = 0
        self.outcome: Outcome = "ok"
        self.error_type: str | None = None
        self.strip_usage_chunk = False
        self.upstream_called = False
        self.usage: Usage | None = None
        self.completion_estimate: int | None = None
        self.request_body = b""
        self.prompt_estimate: int | None = None
        self.request_bytes = 0
        self.response_bytes = 0
        self.captured_request: bytes | None = None
        self.captured_response: bytes | None = None

    def keep_request(self, body: bytes, capture_bytes: int) -> None:
        """Note the request body: its size, its capture, and what an estimate of its tokens
        needs. A small body is kept for the estimate (made only if the provider reports no
        usage); a large one is estimated now and not held for the life of the request."""
        self.request_bytes = len(body)
        if capture_bytes:
            self.captured_request = body[: capture_bytes + 1]
        if not self.metered:
            return
        if len(body) <= _KEEP_BODY_BYTES:
            self.request_body = body
        else:
            self.prompt_estimate = estimate_tokens(body)

    def attempt(
        self, provider: str, provider_name: str, upstream_model: str | None, target: str
    ) -> None:
        """Note an upstream attempt; the last one is the provider the event names."""
        if self.upstream_started is None:
            self.upstream_started = time.perf_counter()
        self.targets.append(target)
        self.attempts += 1
        self.provider = provider
        self.provider_name = provider_name
        self.upstream_model = upstream_model

    def upstream_finished(self) -> None:
        """The answer was read to its end (or given up on): the upstream's part is over."""
        self.upstream_done = time.perf_counter()

    def overhead(self) -> float | None:
        """Seconds of the request the gateway spent itself, the upstream's span excluded; None
        for a request that never reached a provider. After `to_event`."""
        if self.upstream_started is None or self.finished is None:
            return None
        done = self.upstream_done or self.ttfb or self.finished
        return max(0.0, (self.finished - self.started) - (done - self.upstream_started))

    def mark_first_byte(self) -> None:
        if self.ttfb is None:
            self.ttfb = time.perf_counter()

    def fail(self, outcome: Outcome, error_type: str) -> None:
        """Record the first failure; a later one (cleanup after a disconnect) does not mask it."""
        if self.outcome == "ok":
            self.outcome = outcome
            self.error_type = error_type

    def _settled_usage(self) -> tuple[Usage, UsageSource]:
        """Provider usage when it reported some; else an estimate for a metered API call that
        reached the provider and did not fail there, or whose stream failed after content
        reached the client (the usage seen so far); else nothing."""
        if self.usage is not None:
            return self.usage, "cache" if self.cache_status == "hit" else "provider"
        streamed = self.stream and bool(self.completion_estimate) and self.ttfb is not None
        if not (self.metered and self.upstream_called and (self.outcome in _ESTIMABLE or streamed)):
            return Usage(), "none"
        prompt = self.prompt_estimate
        if prompt is None:
            prompt = estimate_tokens(self.request_body, self.upstream_model or self.model)
        completion = self.completion_estimate or 0
        return Usage(prompt, completion, prompt + completion), "estimated"

    def _cost(self, price: Price | None, usage: Usage) -> Decimal | None:
        if price is not None:
            return price.cost(usage)
        return None if self.attempts else _FREE

    def to_event(self, capture_bytes: int, price: Price | None = None) -> UsageEvent:
        """The usage event; priced with `price` (None: no price known). A request that reached
        no provider bought nothing: $0."""
        self.finished = finished = time.perf_counter()
        elapsed = finished - self.started
        usage, usage_source = self._settled_usage()
        self.request_body = b""
        request_capture, request_cut = _capture(self.captured_request, capture_bytes)
        response_capture, response_cut = _capture(self.captured_response, capture_bytes)
        return UsageEvent(
            event_id=self.event_id,
            request_id=self.request_id,
            client_request_id=self.client_request_id,
            trace_id=self.trace_id,
            session_id=self.session_id,
            upstream_request_id=self.upstream_request_id,
            tenant=self.tenant,
            key_id=None if self.key is None else self.key.id,
            user=self.user,
            endpoint=self.endpoint,
            method=self.method,
            provider=self.provider,
            provider_name=self.provider_name,
            upstream_model=self.upstream_model,
            attempts=self.attempts,
            failed_targets=tuple(self.failed_targets),
            model=self.model,
            response_model=self.response_model,
            stream=self.stream,
            status_code=self.status,
            outcome=self.outcome,
            error_type=self.error_type,
            prompt_tokens=usage.prompt,
            completion_tokens=usage.completion,
            total_tokens=usage.total,
            cached_tokens=usage.cached,
            reasoning_tokens=usage.reasoning,
            cache_write_tokens=usage.cache_write,
            cost_usd=self._cost(price, usage),
            price_source=NO_PRICE if price is None else price.source,
            usage_source=usage_source,
            cache_status=self.cache_status,
            saved_cost_usd=self.saved_cost_usd,
            started_at=datetime.fromtimestamp(self.started_at, UTC),
            finished_at=datetime.fromtimestamp(self.started_at + elapsed, UTC),
            latency_ms=_ms(elapsed),
            ttfb_ms=None if self.ttfb is None else _ms(self.ttfb - self.started),
            request_bytes=self.request_bytes,
            response_bytes=self.response_bytes,
            captured_request=request_capture,
            captured_request_truncated=request_cut,
            captured_response=response_capture,
            captured_response_truncated=response_cut,
        )


def _ms(seconds: float) -> float:
    """Milliseconds to the microsecond (as round(x, 3), in a third of its time)."""
    return round(seconds * 1e6) / 1000


def new_request_id() -> str:
    return uuid.uuid4().hex


def _header_text(value: bytes | None) -> str | None:
    if not value:
        return None
    return value[:MAX_HEADER_ID].decode("latin-1")


def _capture(body: bytes | None, limit: int) -> tuple[str | None, bool]:
    if body is None or limit <= 0:
        return None, False
    cut = len(body) > limit
    return body[:limit].decode("utf-8", errors="ignore"), cut
