"""The proxy's Prometheus metrics: what each finished request adds, and the state read at scrape.

Names and buckets are in `llm_gateway_common.metricnames`. Every request is recorded once, from
its usage event (`Gateway.record`), into series that are plain slots: the proxy serves from one
event loop thread, so an observation is a bisect and two additions, not prometheus-client's
locked `.labels().observe()` (~2-4 µs each, several per request). prometheus-client renders them
(its text format, content type and parser are the reference), through `collect()` at scrape
time, when the gauges (queue, breaker, cooldowns, in flight) are also read from the objects that
own that state.

Every label value comes from a bounded set: the configured model names (patterns by their entry,
anything else `other`), provider types, target ids from the model table, the gateway's own error
codes and HTTP status classes, endpoints the gateway meters. The tenant label is opt-in and capped.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from llm_gateway_common import metricnames as names
from llm_gateway_common.events import UsageEvent
from llm_gateway_proxy.apis import COUNT_TOKENS, OPERATIONS
from llm_gateway_proxy.exchange import Exchange
from llm_gateway_proxy.modelconfig import ModelTable

if TYPE_CHECKING:
    from llm_gateway_proxy.cooldowns import Cooldowns
    from llm_gateway_proxy.inflight import InFlight
    from llm_gateway_proxy.metering import EventPublisher
    from llm_gateway_proxy.redisgate import RedisGate

# Paths that run no model but are worth an endpoint label of their own.
_LISTED = frozenset({"/v1/models", COUNT_TOKENS.path})
_REFUSALS = frozenset({"rate_limit_exceeded", "budget_exceeded"})
_RESULTS = {"ok": "ok", "client_disconnected": "cancelled"}  # the last attempt's; else error
_MODEL_NAMES = 4096  # raw model names remembered with their label (names clients make up fold)
Labels = tuple[str, ...]


class Histogram:
    """One histogram series: per-bucket counts (the last is +Inf), their sum, no lock."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return buckets


class ProxyMetrics:
    """The per-request series and the sources of the scrape-time gauges."""

    def __init__(
        self,
        table: ModelTable,
        *,
        tenant_label: bool = False,
        tenant_limit: int = 100,
    ) -> None:
        self._table = table
        self._tenant_limit = tenant_limit if tenant_label else 0
        self._tenants: set[str] = set()
        self._models: dict[str, str] = {}
        self.requests: dict[Labels, list[int]] = {}
        self.duration: dict[Labels, Histogram] = {}
        self.tokens: dict[Labels, tuple[Histogram, Histogram]] = {}
        self.first_chunk: dict[Labels, Histogram] = {}
        self.overhead: dict[Labels, Histogram] = {}
        self.attempts: dict[Labels, list[int]] = {}
        self.fallbacks: dict[str, list[int]] = {}
        self.refusals: dict[str, list[int]] = {}
        self.soft_limited: dict[str, list[int]] = {"key": [0], "tenant": [0]}
        self.cache: dict[str, list[int]] = {status: [0] for status in names.CACHE_STATUSES}
        self.cache_bytes = [0]
        self.cache_saved = [0.0]  # US dollars (a metric, never summed for money)
        self._targets = _model_targets(table)
        # The series whose label values are known now start at 0, so that rate() and alerts
        # see them before the first increment.
        for error_type in _REFUSALS:
            self.refusals[error_type] = [0]
        for entry, ids in self._targets.items():
            self.fallbacks[entry] = [0]
            for target in ids:
                self.attempts[(target, "ok")] = [0]
                self.attempts[(target, "error")] = [0]
        self._sources: _Sources | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Exporter(self))

    def watch(
        self,
        publisher: EventPublisher,
        gate: RedisGate,
        cooldowns: Cooldowns,
        in_flight: InFlight,
    ) -> None:
        """Where the gauges are read from at scrape time (set once the lifespan built them)."""
        self._sources = _Sources(publisher, gate, cooldowns, in_flight)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def budget_soft_limit(self, scope: str) -> None:
        """A request admitted while its key's (or tenant's) spend is past its soft limit."""
        self.soft_limited[scope][0] += 1

    # --- one finished request -----------------------------------------------------------------

    def record(self, exchange: Exchange, event: UsageEvent) -> None:
        """Count one request: called once, with its event, when it is finished."""
        endpoint = event.endpoint
        operation = OPERATIONS.get(endpoint)
        label = endpoint if operation is not None or endpoint in _LISTED else names.OTHER
        key: Labels = (label, names.status_class(event.status_code), event.outcome)
        if self._tenant_limit:
            key = (*key, self._tenant(event.tenant))
        counter = self.requests.get(key)
        if counter is None:
            counter = self.requests[key] = [0]
        counter[0] += 1
        error_type = event.error_type
        if error_type in _REFUSALS:
            _inc(self.refusals, error_type)
        if event.cache_status is not None:
            self._cached(event)
        targets = exchange.targets
        if not targets:
            return
        self._attempted(targets, event)
        overhead = exchange.overhead()
        if overhead is not None:
            series_key = (label, "true" if event.stream else "false")
            histogram = self.overhead.get(series_key)
            if histogram is None:
                histogram = self.overhead[series_key] = Histogram(names.OVERHEAD_BUCKETS)
            histogram.observe(overhead)
        if operation is not None:
            self._genai(operation, event)

    def _cached(self, event: UsageEvent) -> None:
        status = event.cache_status
        counter = self.cache.get(status) if status is not None else None
        if counter is None:
            return
        counter[0] += 1
        if status == "stored":
            self.cache_bytes[0] += event.response_bytes
        elif status == "hit" and event.saved_cost_usd is not None:
            self.cache_saved[0] += float(event.saved_cost_usd)

    def _attempted(self, targets: list[str], event: UsageEvent) -> None:
        last = len(targets) - 1
        outcome = event.outcome
        final = _RESULTS.get(outcome, "error")
        for number, target in enumerate(targets):
            key = (target, final if number == last else "error")
            counter = self.attempts.get(key)
            if counter is None:
                counter = self.attempts[key] = [0]
            counter[0] += 1
        if last and outcome == "ok" and targets[-1] != targets[0]:
            _inc(self.fallbacks, self._model(event.model))

    def _genai(self, operation: str, event: UsageEvent) -> None:
        model = self._model(event.model)
        provider = event.provider
        key = (operation, provider, model, event.error_type or names.NO_ERROR)
        duration = self.duration.get(key)
        if duration is None:
            duration = self.duration[key] = Histogram(names.DURATION_BUCKETS)
        duration.observe(event.latency_ms / 1000)
        short = (operation, provider, model)
        if event.usage_source != "none":
            tokens = self.tokens.get(short)
            if tokens is None:
                tokens = self.tokens[short] = (
                    Histogram(names.TOKEN_BUCKETS), Histogram(names.TOKEN_BUCKETS),
                )  # fmt: skip
            tokens[0].observe(event.prompt_tokens)
            tokens[1].observe(event.completion_tokens)
        if event.stream and event.ttfb_ms is not None and event.outcome == "ok":
            first = self.first_chunk.get(short)
            if first is None:
                first = self.first_chunk[short] = Histogram(names.TTFC_BUCKETS)
            first.observe(event.ttfb_ms / 1000)

    def _model(self, model: str | None) -> str:
        """The label of a request's model: its entry in the table (a pattern's for a name it
        matched), `other` for anything else and for a proxy without MODELS_FILE."""
        if model is None:
            return names.OTHER
        label = self._models.get(model)
        if label is None:
            named = None if self._table.single else self._table.named_route(model)
            label = names.OTHER if named is None else named[0]
            if len(self._models) < _MODEL_NAMES:
                self._models[model] = label
        return label

    def _tenant(self, tenant: str) -> str:
        if tenant in self._tenants:
            return tenant
        if len(self._tenants) < self._tenant_limit:
            self._tenants.add(tenant)
            return tenant
        return names.OTHER

    # --- the scrape -----------------------------------------------------------------------------

    def families(self) -> Iterator[Metric]:
        yield from self._request_families()
        if self._sources is not None:
            yield from self._sources.families(self._targets)

    def _request_families(self) -> Iterator[Metric]:
        request_labels = [names.ENDPOINT, names.STATUS_CLASS, names.OUTCOME]
        if self._tenant_limit:
            request_labels.append(names.TENANT)
        yield _counter(names.REQUESTS, "Requests by endpoint, status class and outcome.",
                       request_labels, self.requests.items())  # fmt: skip
        genai = list(names.GENAI_LABELS)
        yield _histogram(names.OPERATION_DURATION, "Duration of GenAI operations (seconds).",
                         genai, self.duration.items())  # fmt: skip
        tokens = HistogramMetricFamily(
            names.TOKEN_USAGE, "Tokens per GenAI operation, input and output.",
            labels=[*genai[:3], names.TOKEN_TYPE],
        )  # fmt: skip
        for labels, (prompt, completion) in self.tokens.items():
            tokens.add_metric([*labels, "input"], prompt.cumulative(), prompt.total)
            tokens.add_metric([*labels, "output"], completion.cumulative(), completion.total)
        yield tokens
        yield _histogram(names.TIME_TO_FIRST_CHUNK, "Time to the first chunk of a stream "
                         "(seconds).", genai[:3], self.first_chunk.items())  # fmt: skip
        yield _histogram(names.OVERHEAD, "The gateway's own time per request, the upstream's "
                         "excluded (seconds).", [names.ENDPOINT, names.STREAM],
                         self.overhead.items())  # fmt: skip
        yield _counter(names.UPSTREAM_ATTEMPTS, "Upstream attempts by target and result.",
                       [names.TARGET, names.RESULT], self.attempts.items())  # fmt: skip
        yield _counter(names.FALLBACKS, "Requests answered by another target than the first "
                       "tried.", [names.REQUEST_MODEL],
                       (((m,), c) for m, c in self.fallbacks.items()))  # fmt: skip
        yield _counter(names.LIMIT_REFUSALS, "Requests refused by a rate limit or budget.",
                       [names.ERROR_TYPE],
                       (((e,), c) for e, c in self.refusals.items()))  # fmt: skip
        yield _counter(names.CACHE_REQUESTS, "Requests that used the response cache, by what "
                       "it did (stored: a miss whose answer was stored).", [names.CACHE_STATUS],
                       (((s,), c) for s, c in self.cache.items()))  # fmt: skip
        yield _plain_counter(names.CACHE_STORED_BYTES, "Bytes of the answers stored in the "
                             "response cache.", self.cache_bytes[0])  # fmt: skip
        yield _plain_counter(names.CACHE_SAVED_USD, "US dollars the cache's hits would have "
                             "cost.", self.cache_saved[0])  # fmt: skip
        yield _counter(names.BUDGET_SOFT_LIMIT, "Requests admitted while the key's or the "
                       "tenant's spend is past its soft limit (budget_soft_limit_percent of "
                       "budget_usd).", [names.SCOPE],
                       (((s,), c) for s, c in self.soft_limited.items()))  # fmt: skip


class _Sources:
    """The objects whose state the gauges show."""

    def __init__(
        self, publisher: EventPublisher, gate: RedisGate, cooldowns: Cooldowns, in_flight: InFlight
    ) -> None:
        self.publisher = publisher
        self.gate = gate
        self.cooldowns = cooldowns
        self.in_flight = in_flight

    def families(self, targets: dict[str, tuple[str, ...]]) -> Iterator[Metric]:
        publisher, gate, in_flight = self.publisher, self.gate, self.in_flight
        yield _gauge(names.EVENTS_QUEUED, "Usage events waiting to be written to Redis.",
                     publisher.queued)  # fmt: skip
        yield _gauge(names.EVENTS_QUEUE_LIMIT, "The event queue's bound.", publisher.queue_limit)
        yield _plain_counter(names.EVENTS_PUBLISHED, "Usage events written to the stream.",
                             publisher.written)  # fmt: skip
        yield _plain_counter(names.EVENTS_DROPPED, "Usage events dropped (queue full at an "
                             "outage, or unwritable at shutdown).", publisher.dropped)  # fmt: skip
        failures = gate.failures + publisher.write_failures
        yield _plain_counter(names.REDIS_ERRORS, "Redis calls that failed (request path and "
                             "event writes).", failures)  # fmt: skip
        yield _gauge(names.REDIS_BREAKER_OPEN, "1 while the request path's Redis breaker is "
                     "open.", 1.0 if gate.open else 0.0)  # fmt: skip
        yield _gauge(names.IN_FLIGHT, "Requests being served.", in_flight.current)
        yield _gauge(names.IN_FLIGHT_LIMIT, "MAX_IN_FLIGHT.", in_flight.limit)
        yield _plain_counter(names.IN_FLIGHT_REFUSED, "Requests refused at MAX_IN_FLIGHT.",
                             in_flight.refused)  # fmt: skip
        if not targets:
            return
        cooling = self.cooldowns.snapshot()
        per_target = GaugeMetricFamily(names.TARGET_COOLING_DOWN, "1 while a target cools down.",
                                       labels=[names.TARGET])  # fmt: skip
        for target in sorted({t for ts in targets.values() for t in ts}):
            per_target.add_metric([target], 1.0 if target in cooling else 0.0)
        yield per_target
        total = GaugeMetricFamily(names.MODEL_TARGETS, "Targets a model's own route has.",
                                  labels=[names.REQUEST_MODEL])  # fmt: skip
        down = GaugeMetricFamily(names.MODEL_TARGETS_COOLING, "Of those, cooling down now.",
                                 labels=[names.REQUEST_MODEL])  # fmt: skip
        for model, ids in targets.items():
            total.add_metric([model], len(ids))
            down.add_metric([model], sum(1 for t in ids if t in cooling))
        yield total
        yield down


class _Exporter:
    """The prometheus-client collector that reads ProxyMetrics at scrape time."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()


def _model_targets(table: ModelTable) -> dict[str, tuple[str, ...]]:
    """Each model entry's target ids (as cooldowns name them); none without MODELS_FILE."""
    if table.single:
        return {}
    return {
        entry: tuple(f"{t.provider}/{t.model or entry}" for t in route.targets)
        for entry, route in table.file.models.items()
    }


def _inc(counters: dict[str, list[int]], label: str) -> None:
    counter = counters.get(label)
    if counter is None:
        counter = counters[label] = [0]
    counter[0] += 1


def _counter(
    name: str, help_text: str, labels: list[str], series: Iterable[tuple[Labels, list[int]]]
) -> Metric:
    family = CounterMetricFamily(name, help_text, labels=labels)
    for values, counter in series:
        family.add_metric(list(values), counter[0])
    return family


def _histogram(
    name: str, help_text: str, labels: list[str], series: Iterable[tuple[Labels, Histogram]]
) -> Metric:
    family = HistogramMetricFamily(name, help_text, labels=labels)
    for values, histogram in series:
        family.add_metric(list(values), histogram.cumulative(), histogram.total)
    return family


def _gauge(name: str, help_text: str, value: float) -> Metric:
    return GaugeMetricFamily(name, help_text, value=value)


def _plain_counter(name: str, help_text: str, value: float) -> Metric:
    return CounterMetricFamily(name, help_text, value=value)
