"""Helicone: one POST per event to the custom logging endpoint (it has no batch endpoint); the
events of a batch go concurrently, at most `concurrency` at a time, each with its own outcome.

A 200 is not always success: Helicone answers a downstream failure with a 200 whose JSON body
holds `error`, so the body is read. That, like a 5xx, says Helicone cannot take events now. Once
a round has seen Helicone unavailable and nothing accepted, the events still waiting for a slot
are not sent (they get the same outcome): an outage costs a few requests per round, not a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from llm_gateway_common.events import UsageEvent
from llm_gateway_dispatcher.captures import request_body, response_body
from llm_gateway_dispatcher.http import SinkClient, SinkFailed
from llm_gateway_dispatcher.outcomes import (
    ACCEPTED,
    Outcome,
    delivery_id,
    refused,
    unavailable,
)
from llm_gateway_dispatcher.timestamps import span_ms

# What the custom logging endpoint expects in `providerRequest.url` (Helicone's own SDKs send
# only this there); the model is read from the logged bodies, the provider goes in a property.
CUSTOM_URL = "custom-model-nopath"
_MAX_HEADER_CHARS = 256


@dataclass
class _Round:
    """What the concurrent sends of one round have learned about Helicone."""

    took_some: bool = False
    down: Outcome | None = None


class HeliconeSink:
    name = "helicone"

    def __init__(self, endpoint: str, api_key: str, *, timeout: float, concurrency: int) -> None:
        self._client = SinkClient(self.name, endpoint, api_key, timeout=timeout,
                                  connections=concurrency)  # fmt: skip
        self._slots = asyncio.Semaphore(concurrency)

    async def start(self) -> None:
        await self._client.start()

    async def close(self) -> None:
        await self._client.close()

    async def ready(self) -> bool:
        return self._client.ready()

    async def send(self, events: Sequence[UsageEvent]) -> list[Outcome]:
        progress = _Round()
        return list(await asyncio.gather(*(self._send_one(e, progress) for e in events)))

    async def _send_one(self, event: UsageEvent, progress: _Round) -> Outcome:
        async with self._slots:
            if progress.down is not None:
                return progress.down
            outcome = await self._log(event)
            if outcome.kind == "accepted":
                progress.took_some = True
            elif outcome.kind == "unavailable" and not progress.took_some:
                progress.down = outcome
            return outcome

    async def _log(self, event: UsageEvent) -> Outcome:
        try:
            body, headers = orjson.dumps(log_body(event)), log_headers(event)
        except Exception as exc:  # a mapping bug must cost this event, not block the stream
            return refused(f"helicone: cannot encode the event ({exc!r:.200})")
        try:
            reply = await self._client.post(body, headers)
        except SinkFailed as failed:
            return failed.outcome
        answer = reply.json()
        if isinstance(answer, dict) and "error" in answer:
            said = self._client.excerpt(str(answer["error"]))
            return unavailable(f"helicone answered {reply.status} with an error: {said}")
        return ACCEPTED


def log_headers(event: UsageEvent) -> dict[str, str]:
    """Helicone's ids and properties travel as headers (the key is added by the client)."""
    headers = {
        "Helicone-Request-Id": delivery_id(event),
        "Helicone-User-Id": _header_value(event.user or event.tenant),
        "Helicone-Property-Tenant": _header_value(event.tenant),
        "Helicone-Property-Provider": _header_value(event.provider),
        "Helicone-Property-Request-Id": _header_value(event.request_id),
    }
    if event.session_id is not None:  # a coding agent's session: Helicone's own grouping
        headers["Helicone-Session-Id"] = _header_value(event.session_id)
    if event.provider_name is not None:
        headers["Helicone-Property-Provider-Name"] = _header_value(event.provider_name)
    if event.upstream_model is not None:
        headers["Helicone-Property-Upstream-Model"] = _header_value(event.upstream_model)
    if event.attempts:  # 0: no upstream attempt, or an event from before routing
        headers["Helicone-Property-Attempts"] = str(event.attempts)
    if event.failed_targets:  # comma-separated, in order, repeats kept
        headers["Helicone-Property-Failed-Targets"] = _header_value(",".join(event.failed_targets))
    if event.stream:
        headers["Helicone-Property-Stream"] = "true"
    if event.outcome != "ok":
        headers["Helicone-Property-Outcome"] = _header_value(event.outcome)
    return headers


def log_body(event: UsageEvent) -> dict[str, Any]:
    started_ms, finished_ms = span_ms(event)
    timing: dict[str, Any] = {"startTime": _time(started_ms), "endTime": _time(finished_ms)}
    if event.stream and event.ttfb_ms is not None:
        timing["timeToFirstToken"] = round(event.ttfb_ms)
    return {
        "providerRequest": {
            "url": CUSTOM_URL,
            "json": request_json(event),
            "meta": {},
        },
        "providerResponse": {
            "json": response_json(event),
            "status": event.status_code,
            "headers": {},
        },
        "timing": timing,
    }


def request_json(event: UsageEvent) -> dict[str, Any]:
    """The request as captured, else what the event knows; a stream is logged as the whole
    completion it became, so `stream` is false (the Stream property marks it)."""
    body = request_body(event) or {"model": event.model or _model(event)}
    return {**body, "stream": False} if event.stream else body


def response_json(event: UsageEvent) -> dict[str, Any]:
    """The answer as captured (a stream assembled), with the model and the metered usage."""
    body = dict(response_body(event) or {})
    if event.failed and "error" not in body:  # a newer producer's outcome may be a success
        body["error"] = {"message": f"{event.error_type or event.outcome}",
                         "type": event.error_type}  # fmt: skip
    body["model"] = body.get("model") or _model(event)
    if not event.failed or event.total_tokens:
        body["usage"] = _usage(event)
    return body


def _usage(event: UsageEvent) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": event.total_tokens,
    }
    if event.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": event.cached_tokens}
    if event.reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": event.reasoning_tokens}
    return usage


def _model(event: UsageEvent) -> str:
    return event.response_model or event.model or "unknown"


def _time(epoch_ms: int) -> dict[str, int]:
    seconds, millis = divmod(epoch_ms, 1000)
    return {"seconds": seconds, "milliseconds": millis}


def _header_value(text: str) -> str:
    """Printable ASCII only (no header injection, no encoding surprises), bounded."""
    return quote(text[:_MAX_HEADER_CHARS], safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
