"""Lunary: each event as one run, a `start` and an `end` (or `error`) with the same runId, sent
in batches to the ingestion endpoint as `{"events": [...]}`.

Lunary answers 200 with a result per event, in the order it processed them: sorted by
timestamp, which is why an `end` is always stamped strictly after its `start` (timestamps.py).
Per-event failures hide inside that 200, so each run's two results are read: a `start` refused
because the run already exists is a redelivery, and counts as success (the `end` that follows
just updates the run); any other failure is retried.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

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
from llm_gateway_dispatcher.outcomes import ACCEPTED, Outcome, delivery_id, refused, rejected
from llm_gateway_dispatcher.timestamps import iso_ms, span_ms

MAX_REQUEST_BYTES = 5 * 1024 * 1024  # per POST; Lunary refuses bodies over 20 MB


class LunarySink:
    name = "lunary"

    def __init__(self, endpoint: str, api_key: str, *, timeout: float) -> None:
        self._client = SinkClient(self.name, endpoint, api_key, timeout=timeout, connections=2)

    async def start(self) -> None:
        await self._client.start()

    async def close(self) -> None:
        await self._client.close()

    async def ready(self) -> bool:
        return self._client.ready()

    async def send(self, events: Sequence[UsageEvent]) -> list[Outcome]:
        """One POST per chunk of events (normally one); once Lunary is unavailable, the rest of
        the batch is not tried this round."""
        outcomes: dict[int, Outcome] = {}
        encoded: list[tuple[int, UsageEvent, bytes]] = []
        for index, event in enumerate(events):
            try:
                encoded.append((index, event, encode_run(event)))
            except Exception as exc:  # a mapping bug must cost this event, not block the stream
                outcomes[index] = refused(f"lunary: cannot encode the event ({exc!r:.200})")
        down: Outcome | None = None
        for chunk in _chunks(encoded):
            answers = [down] * len(chunk) if down else await self._send_chunk(chunk)
            for (index, _, _), outcome in zip(chunk, answers, strict=True):
                outcomes[index] = outcome
                down = outcome if outcome.kind == "unavailable" else down
        return [outcomes[index] for index in range(len(events))]

    async def _send_chunk(self, chunk: list[tuple[int, UsageEvent, bytes]]) -> list[Outcome]:
        body = b'{"events":[' + b",".join(encoded for _, _, encoded in chunk) + b"]}"
        try:
            reply = await self._client.post(body)
        except SinkFailed as failed:
            return [failed.outcome] * len(chunk)
        results = _results_by_run(reply.json())
        if results is None:
            answer = self._client.excerpt(reply.body)
            return [rejected(f"lunary answered without per-event results: {answer}")] * len(chunk)
        return [self._run_outcome(results.get(delivery_id(event), [])) for _, event, _ in chunk]

    def _run_outcome(self, results: list[dict[str, Any]]) -> Outcome:
        if len(results) < 2:
            return rejected(f"lunary returned {len(results)} of 2 results for the run")
        start, finish = results[0], results[-1]
        if not start.get("success") and not _already_exists(start):
            return rejected(f"lunary refused the start: {self._error(start)}")
        if not finish.get("success"):
            return rejected(f"lunary refused the end: {self._error(finish)}")
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


def _chunks(
    encoded: list[tuple[int, UsageEvent, bytes]],
) -> Iterator[list[tuple[int, UsageEvent, bytes]]]:
    """Consecutive runs of encoded events, each under MAX_REQUEST_BYTES (one event alone may be
    more: Lunary then answers 413, and that event is refused)."""
    chunk: list[tuple[int, UsageEvent, bytes]] = []
    size = 0
    for item in encoded:
        if chunk and size + len(item[2]) > MAX_REQUEST_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item[2]) + 1
    if chunk:
        yield chunk


def encode_run(event: UsageEvent) -> bytes:
    """The run's two Lunary events as JSON, comma-separated, ready to go into `events`."""
    return b",".join(orjson.dumps(item) for item in run_events(event))


def run_events(event: UsageEvent) -> list[dict[str, Any]]:
    """The `start` and the `end` (or `error`) event of the event's run."""
    run_id = delivery_id(event)
    started_ms, finished_ms = span_ms(event)
    start: dict[str, Any] = {
        "type": "llm",
        "event": "start",
        "runId": run_id,
        "name": event.model or event.response_model or event.endpoint,
        "timestamp": iso_ms(started_ms),
        "userId": event.user or event.tenant,
        "tags": [f"tenant:{event.tenant}", f"provider:{event.provider}"],
        "metadata": metadata(event),
    }
    request = request_body(event)
    if request is not None:
        if (conversation := request_input(request)) is not None:
            start["input"] = conversation
        if params := request_params(request):
            start["params"] = params
    finish: dict[str, Any] = {"type": "llm", "runId": run_id, "timestamp": iso_ms(finished_ms)}
    if event.failed:  # not `outcome != "ok"`: a newer producer's outcome may be a success
        problem = event.error_type or event.outcome
        finish |= {"event": "error", "error": {"message": f"{problem} (HTTP {event.status_code})"}}
        return [start, finish]
    finish |= {"event": "end", "tokensUsage": _tokens(event)}
    response = response_body(event)
    message = assistant_message(response) if response is not None else None
    if message is not None:
        finish["output"] = [message]
    return [start, finish]


def metadata(event: UsageEvent) -> dict[str, str | int | float | bool]:
    """Flat scalars only (Lunary drops anything else), keys already in Lunary's camelCase."""
    fields: dict[str, str | int | float | bool | None] = {
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
    if event.failed:  # an `error` event carries no tokensUsage: keep the counts here
        fields |= {"promptTokens": event.prompt_tokens,
                   "completionTokens": event.completion_tokens}  # fmt: skip
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
