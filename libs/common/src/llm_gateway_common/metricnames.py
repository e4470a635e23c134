"""Every Prometheus metric name, label name and bucket layout the services export, in one place.

The OpenTelemetry GenAI conventions are still "Development" (REFERENCE section 11): when they
move, this module is the one to change. Names here are in their Prometheus form (dots become
underscores, seconds get `_seconds`, counters get `_total` added by prometheus-client itself, so
the counter names below are given without it). The chart's alert rules and the Grafana
dashboard query exactly these names; `tests/` check that they do.

Cardinality is bounded by construction: no label carries a key, user, request id or free text.
Models fold into `other` unless configured; a tenant label exists only behind
`METRICS_TENANT_LABEL` with a cap on distinct values (`METRICS_TENANT_LIMIT`).
"""

from __future__ import annotations

# --- label names -------------------------------------------------------------------------------
OPERATION = "gen_ai_operation_name"
PROVIDER = "gen_ai_provider_name"
REQUEST_MODEL = "gen_ai_request_model"
TOKEN_TYPE = "gen_ai_token_type"
ERROR_TYPE = "error_type"
ENDPOINT = "endpoint"
STATUS_CLASS = "status_class"
OUTCOME = "outcome"
TARGET = "target"
RESULT = "result"
TENANT = "tenant"
SINK = "sink"
STREAM = "stream"
GROUP = "group"
STATE = "state"

OTHER = "other"  # what a value outside the bounded set folds into
NO_ERROR = ""  # error_type of a request that succeeded (the conventions leave it unset)

GENAI_LABELS = (OPERATION, PROVIDER, REQUEST_MODEL, ERROR_TYPE)

# --- OTel GenAI client metrics (the proxy is the client of the providers) ----------------------
OPERATION_DURATION = "gen_ai_client_operation_duration_seconds"
TOKEN_USAGE = "gen_ai_client_token_usage"
TIME_TO_FIRST_CHUNK = "gen_ai_client_operation_time_to_first_chunk_seconds"

# The conventions' advice: 0.01 .. 81.92 s doubling; tokens 1, 4, 16 .. 4^13.
DURATION_BUCKETS = tuple(0.01 * 2**i for i in range(14))
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))
# Time to first chunk: the server-side TTFT advice (0.001 .. 10 s).
TTFC_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0)  # fmt: skip

# --- the proxy's own ----------------------------------------------------------------------------
REQUESTS = "llm_gateway_requests"  # endpoint, status_class, outcome (+ tenant when enabled)
OVERHEAD = "llm_gateway_overhead_seconds"  # the gateway's own time, the upstream excluded
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0)  # fmt: skip
UPSTREAM_ATTEMPTS = "llm_gateway_upstream_attempts"  # target, result
FALLBACKS = "llm_gateway_fallbacks"  # gen_ai_request_model: answered by another target than first
TARGET_COOLING_DOWN = "llm_gateway_target_cooling_down"  # gauge 0/1 per target
MODEL_TARGETS = "llm_gateway_model_targets"  # gauge: targets per model (for "all cooling down")
MODEL_TARGETS_COOLING = "llm_gateway_model_targets_cooling_down"  # gauge per model
BUDGET_SOFT_LIMIT = "llm_gateway_budget_soft_limit_requests"  # scope: admitted past soft limit
SCOPE = "scope"  # key | tenant
LIMIT_REFUSALS = "llm_gateway_limit_refusals"  # error_type: rate_limit_exceeded, budget_exceeded..
EVENTS_QUEUED = "llm_gateway_events_queued"  # gauge
EVENTS_QUEUE_LIMIT = "llm_gateway_events_queue_limit"  # gauge
EVENTS_PUBLISHED = "llm_gateway_events_published"  # counter
EVENTS_DROPPED = "llm_gateway_events_dropped"  # counter
REDIS_ERRORS = "llm_gateway_redis_errors"  # counter: request-path Redis calls that failed
REDIS_BREAKER_OPEN = "llm_gateway_redis_breaker_open"  # gauge 0/1
IN_FLIGHT = "llm_gateway_in_flight_requests"  # gauge
IN_FLIGHT_LIMIT = "llm_gateway_in_flight_limit"  # gauge
IN_FLIGHT_REFUSED = "llm_gateway_in_flight_refused"  # counter
CACHE_REQUESTS = "llm_gateway_cache_requests"  # cache_status: hit, miss, stored, bypass
CACHE_STATUS = "cache_status"
CACHE_STORED_BYTES = "llm_gateway_cache_stored_bytes"  # counter: bytes of the answers stored
CACHE_SAVED_USD = "llm_gateway_cache_saved_usd"  # counter: what the hits would have cost
CACHE_STATUSES = ("hit", "miss", "stored", "bypass")

# --- the stream consumers (collector, dispatcher) -----------------------------------------------
CONSUMED = "llm_gateway_consumer_entries_consumed"  # stream entries read
WRITTEN = "llm_gateway_consumer_events_written"  # sink: written (collector) or delivered
RETRIED = "llm_gateway_consumer_events_retried"  # sink
DEAD_LETTERED = "llm_gateway_consumer_events_dead_lettered"  # sink
BATCH_DURATION = "llm_gateway_consumer_batch_duration_seconds"  # sink
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0)  # fmt: skip
CONSUMER_LAG = "llm_gateway_consumer_lag_entries"  # gauge, stream, group: read from Redis
CONSUMER_PENDING = "llm_gateway_consumer_pending_entries"  # gauge, stream, group
DEAD_LETTER_LENGTH = "llm_gateway_dead_letter_entries"  # gauge, stream: the DLQ's length


def status_class(status: int) -> str:
    """`2xx`, `4xx`, `5xx` ...: the status folded to its class."""
    return f"{status // 100}xx"
