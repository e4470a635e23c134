"""Lunary: each event as one run, sent in batches to the ingestion endpoint as
`{"events": [...]}`: a `start` and an `end` for a success; a `start`, an `end` (the tokens) and
an `error` for a failure (Lunary's error handler sets only the status and the error, so the
tokens and cost travel in the `end` stamped just before it).

Lunary answers 200 with a result per event, in the order it processed them: sorted by
timestamp, which is why a run's events are stamped in strictly increasing order (timestamps.py).
Per-event failures hide inside that 200, so every result of a run is read: a `start` refused
because the run already exists is a redelivery, and counts as success (what follows just updates
the run); any other failure is retried.

No single event may stall the stream. Lunary processes events one after another and waits 5 s
for the `start` of an `end` it has not seen, so a few such events push a request past
`DISPATCHER_TIMEOUT`. A request that times out or fails whole (5xx, an answer without results)
is therefore split: its events go again at once in halves, and later requests stay at that size
until requests succeed again (the size then doubles back). A single event that still fails whole
is tried after the next: when the sink takes that one, the failure is this event's and counts an
attempt (delivery.py dead-letters it past `max_attempts`); when it fails too, Lunary is down and
the rest of the round waits, counting nothing. A round costs at most one failed request per
halving and two single-event failures.

Strings go out without NUL characters: Lunary stores runs in PostgreSQL `jsonb`, which refuses
`\u0000` ("unsupported Unicode escape sequence"), and the whole run would be lost for one byte.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from llm_gateway_common.events import UsageEvent
from llm_gateway_dispatcher.captures import (
    assistant_message,
    request_body,
    request_input,
    request_params,
    response_body,
)
from llm_gateway_dispatcher.http import SinkClient, SinkFailed
from llm_gateway_dispatcher.outcomes import (
    ACCEPTED,
    Outcome,
    delivery_id,
    refused,
    rejected,
    unavailable,
)
from llm_gateway_dispatcher.timestamps import iso_ms, span_ms

MAX_REQUEST_BYTES = 5 * 1024 * 1024  # per POST; Lunary refuses bodies over 20 MB
MAX_EVENTS_PER_REQUEST = 1000
_NUL = b"\\u0000"  # as orjson writes a NUL character


class LunarySink:
    name = "lunary"

    def __init__(self, endpoint: str, api_key: str, *, timeout: float) -> None:
        self._client = SinkClient(self.name, endpoint, api_key, timeout=timeout, connections=2)
        self._limit = MAX_EVENTS_PER_REQUEST  # events per request: halved by failed requests

    async def start(self) -> None:
        await self._client.start()

    async def close(self) -> None:
        await self._client.close()

    async def ready(self) -> bool:
        return self._client.ready()

    async def send(self, events: Sequence[UsageEvent]) -> list[Outcome]:
        """POSTs of up to `_limit` events (and MAX_REQUEST_BYTES) in order; a request that fails
        whole is split (see the module docstring)."""
        outcomes: dict[int, Outcome] = {}
        pending: deque[_Encoded] = deque()
        for index, event in enumerate(events):
            try:
                encoded = encode_run(event)
                pending.append(_Encoded(index, event, encoded, 3 if event.failed else 2))
            except Exception as exc:  # a mapping bug must cost this event, not block the stream
                outcomes[index] = refused(f"lunary: cannot encode the event ({exc!r:.200})")
        failed_alone = 0  # single-event requests that failed whole, in a row
        while pending:
            chunk = _take(pending, self._limit)
            answers, whole = await self._send_chunk(chunk)
            if whole is not None and whole.splittable and len(chunk) > 1:
                self._limit = max(1, len(chunk) // 2)  # the same events again, in halves, now
                pending.extendleft(reversed(chunk))
                continue
            for item, outcome in zip(chunk, answers, strict=True):
                outcomes[item.position] = outcome
            if whole is None:
                failed_alone = 0
                self._limit = min(self._limit * 2, MAX_EVENTS_PER_REQUEST)
                continue
            if whole.splittable:
                failed_alone += 1
                if failed_alone < 2:
                    continue  # this event, or Lunary? The next request tells.
            if whole.outcome.kind == "unavailable":  # Lunary is down: the rest waits
                for item in pending:
                    outcomes[item.position] = whole.outcome
                pending.clear()
        return [outcomes[index] for index in range(len(events))]

    async def _send_chunk(self, chunk: list[_Encoded]) -> tuple[list[Outcome], SinkFailed | None]:
        """Each event's outcome, and the failure when the request failed as a whole."""
        body = b'{"events":[' + b",".join(item.encoded for item in chunk) + b"]}"
        try:
            reply = await self._client.post(body)
        except SinkFailed as failure:
            return [failure.outcome] * len(chunk), failure
        results = _results_by_run(reply.json())
        if results is None:
            answer = self._client.excerpt(reply.body)
            whole = SinkFailed(unavailable(f"lunary answered without per-event results: "
                                           f"{answer}"), splittable=True)  # fmt: skip
            return [whole.outcome] * len(chunk), whole
        return [self._run_outcome(results.get(delivery_id(item.event), []), item.parts)
                for item in chunk], None  # fmt: skip

    def _run_outcome(self, results: list[dict[str, Any]], parts: int) -> Outcome:
        if len(results) < parts:
            return rejected(f"lunary returned {len(results)} of {parts} results for the run")
        for position, result in enumerate(results):
            if result.get("success"):
                continue
            if position == 0 and _already_exists(result):
                continue  # a redelivered start: the run is there, what follows updates it
            what = "start" if position == 0 else "event"
            return rejected(f"lunary refused the {what}: {self._error(result)}")
        return ACCEPTED

    def _error(self, result: dict[str, Any]) -> str:
        return self._client.excerpt(str(result.get("error") or "no reason given"))


def _already_exists(result: dict[str, Any]) -> bool:
    # Lunary marks a repeated start only by its message ("Run with this ID already exists in
    # the database."); there is no code to test instead.
    return "already exists" in str(result.get("error") or "").lower()


def _results_by_run(body: Any) -> dict[str, list[dict[str, Any]]] | None:
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list):
        return None
    by_run: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        if isinstance(result, dict):
            by_run.setdefault(str(result.get("id")), []).append(result)
    return by_run


class _Encoded(NamedTuple):
    position: int  # in the round's events
    event: UsageEvent
    encoded: bytes  # the run's Lunary events, comma-separated
    parts: int  # how many Lunary events: 2 (start, end) or 3 (start, end, error)


def _take(pending: deque[_Encoded], limit: int) -> list[_Encoded]:
    """The next request's events: up to `limit`, under MAX_REQUEST_BYTES (one event alone may
    be more: Lunary then answers 413, and that event is refused)."""
    chunk = [pending.popleft()]
    size = len(chunk[0].encoded)
    while pending and len(chunk) < limit and size + len(pending[0].encoded) < MAX_REQUEST_BYTES:
        item = pending.popleft()
        chunk.append(item)
        size += len(item.encoded) + 1
    return chunk


def encode_run(event: UsageEvent) -> bytes:
    """The run's Lunary events as JSON, comma-separated, ready to go into `events`; strings
    without NUL characters (see the module docstring)."""
    encoded = [orjson.dumps(item) for item in run_events(event)]
    if any(_NUL in item for item in encoded):  # rare: clean and encode again
        encoded = [orjson.dumps(without_nul(item)) for item in run_events(event)]
    return b",".join(encoded)


def run_events(event: UsageEvent) -> list[dict[str, Any]]:
    """The `start`, the `end` and, for a failed request, the `error` event of the run."""
    run_id = delivery_id(event)
    started_ms, finished_ms = span_ms(event)
    start: dict[str, Any] = {
        "type": "llm",
        "event": "start",
        "runId": run_id,
        # Lunary prices a run by matching its name against model patterns: the model that
        # answered, not the public alias the client sent (that one is in the tags and metadata).
        "name": event.response_model or event.upstream_model or event.model or event.endpoint,
        "timestamp": iso_ms(started_ms),
        "tags": _tags(event),
        "metadata": metadata(event),
    }
    if event.user:  # else no userId: the tenant is a tag, not a user
        start["userId"] = event.user
    request = request_body(event)
    if request is not None:
        if (conversation := request_input(request)) is not None:
            start["input"] = conversation
        if params := request_params(request):
            start["params"] = params
    end: dict[str, Any] = {"type": "llm", "event": "end", "runId": run_id}
    end |= {"timestamp": iso_ms(finished_ms), "tokensUsage": _tokens(event)}
    if event.failed:  # not `outcome != "ok"`: a newer producer's outcome may be a success
        # Lunary's error handler sets the status and the error only: the tokens (and so the
        # cost) come with an `end` stamped just before the error.
        problem = event.error_type or event.outcome
        error = {"type": "llm", "event": "error", "runId": run_id,
                 "timestamp": iso_ms(finished_ms + 1),
                 "error": {"message": f"{problem} (HTTP {event.status_code})"}}  # fmt: skip
        return [start, end, error]
    response = response_body(event)
    message = assistant_message(response) if response is not None else None
    if message is not None:
        end["output"] = [message]
    return [start, end]


def _tags(event: UsageEvent) -> list[str]:
    tags = [f"tenant:{event.tenant}", f"provider:{event.provider}"]
    if event.model:
        tags.append(f"model:{event.model}")
    return tags


def without_nul(value: Any) -> Any:
    """`value` with every NUL character removed from its strings and keys (nothing else)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    return value


def metadata(event: UsageEvent) -> dict[str, str | int | float | bool]:
    """Flat scalars only (Lunary drops anything else), keys already in Lunary's camelCase."""
    fields: dict[str, str | int | float | bool | None] = {
        "model": event.model,  # the public name the client sent
        "tenant": event.tenant,
        "provider": event.provider,
        "providerName": event.provider_name,
        "upstreamModel": event.upstream_model,
        "requestId": event.request_id,
        "eventId": event.event_id,
        "endpoint": event.endpoint,
        "statusCode": event.status_code,
        "outcome": event.outcome,
        "stream": event.stream,
        "latencyMs": event.latency_ms,
        "ttfbMs": event.ttfb_ms,
        "responseModel": event.response_model,
        "usageSource": event.usage_source,
        "clientRequestId": event.client_request_id,
        "upstreamRequestId": event.upstream_request_id,
        "keyId": event.key_id,
        "errorType": event.error_type,
    }
    if event.reasoning_tokens:
        fields["reasoningTokens"] = event.reasoning_tokens
    if event.attempts:  # 0: no upstream attempt, or an event from before routing
        fields["attempts"] = event.attempts
    if event.failed_targets:  # a list is not flat: comma-separated, in order, repeats kept
        fields["failedTargets"] = ",".join(event.failed_targets)
    return {key: value for key, value in fields.items() if value is not None}


def _tokens(event: UsageEvent) -> dict[str, int]:
    tokens = {"prompt": event.prompt_tokens, "completion": event.completion_tokens}
    if event.cached_tokens:
        tokens["promptCached"] = event.cached_tokens
    return tokens
