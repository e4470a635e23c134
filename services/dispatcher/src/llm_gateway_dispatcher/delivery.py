"""The delivery rules between the stream consumer and a sink: what is acknowledged, what is
dead-lettered, what is retried, and how soon.

The shared consumer hands over a batch and acknowledges all of it when the handler returns, or
none of it when the handler raises `RetryLater` (it then calls again with the same batch after
the wait we ask for). A round sends every event of the batch not yet settled, once per event id
(a duplicated stream entry is sent once). The handler remembers what the sink accepted or
refused, so a retry resends only the rest:

    round ──▶ sink.send(unsettled) ──▶ per event: accepted | refused | rejected | unavailable
      all settled        ──▶ return the refused ones (dead-lettered) ──▶ batch acknowledged
      some still to go   ──▶ RetryLater(after = backoff or the sink's Retry-After)

An event rejected for itself counts an attempt; so does an unavailable one when the sink took
others in the same round (the sink is up, the trouble is this event). A whole round the sink
could not take counts nothing: a sink down for an hour is waited for, not dead-lettered. Past
`max_attempts` an event is dead-lettered with its last reason.

What was settled is kept only in memory: after a crash the batch is redelivered whole and resent,
which the sinks absorb because every event keeps its id there (`outcomes.delivery_id`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import structlog

from llm_gateway_common.consumer import Delivery, RetryLater
from llm_gateway_common.events import UsageEvent
from llm_gateway_dispatcher.backoff import Backoff
from llm_gateway_dispatcher.outcomes import Outcome

log = structlog.get_logger("llm_gateway.dispatcher")


class Sink(Protocol):
    name: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ready(self) -> bool: ...

    async def send(self, events: Sequence[UsageEvent]) -> list[Outcome]:
        """Deliver the events; one outcome per event, in order. Never raises for the sink's
        trouble: that is an `unavailable` outcome."""
        ...


class DeliveryHandler:
    """The consumer's handler for one sink (see the module docstring)."""

    def __init__(self, sink: Sink, *, max_attempts: int, backoff: Backoff) -> None:
        self._sink = sink
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._settled: dict[str, str | None] = {}  # event id -> None (accepted) or dead reason
        self._attempts: dict[str, int] = {}  # event id -> attempts counted so far
        self._failed_rounds = 0

    async def __call__(self, deliveries: list[Delivery]) -> dict[str, str]:
        self._forget_other_batches(deliveries)
        unsettled = _distinct(d.event for d in deliveries if d.event.event_id not in self._settled)
        if unsettled:
            outcomes = await self._sink.send(unsettled)
            retry = self._settle(unsettled, outcomes)
            if retry:
                self._failed_rounds += 1
                wait = self._backoff.delay(self._failed_rounds, _hint(retry))
                raise RetryLater(_summary(self._sink.name, retry, len(unsettled)), after=wait,
                                 events=len(retry))  # fmt: skip
        dead = {
            d.entry_id: reason
            for d in deliveries
            if (reason := self._settled[d.event.event_id]) is not None
        }
        self._settled.clear()
        self._attempts.clear()
        self._failed_rounds = 0
        return dead

    def _settle(self, events: list[UsageEvent], outcomes: list[Outcome]) -> list[Outcome]:
        """Record what is settled; return the outcomes of the events to try again."""
        if len(outcomes) != len(events):  # a sink bug; never acknowledge on a miscount
            raise RuntimeError(f"{self._sink.name} sink gave {len(outcomes)} outcomes "
                               f"for {len(events)} events")  # fmt: skip
        sink_took_some = any(o.kind == "accepted" for o in outcomes)
        retry: list[Outcome] = []
        for event, outcome in zip(events, outcomes, strict=True):
            key = event.event_id
            if outcome.kind == "accepted":
                self._settled[key] = None
            elif outcome.kind == "refused":
                self._settled[key] = outcome.reason
            elif outcome.kind == "rejected" or sink_took_some:
                attempts = self._attempts[key] = self._attempts.get(key, 0) + 1
                if attempts >= self._max_attempts:
                    plural = "s" if attempts != 1 else ""
                    self._settled[key] = (
                        f"gave up after {attempts} attempt{plural}: {outcome.reason}"
                    )
                    log.warning("event_given_up", sink=self._sink.name, event_id=key,
                                attempts=attempts, reason=outcome.reason)  # fmt: skip
                else:
                    retry.append(outcome)
            else:
                retry.append(outcome)
        return retry

    def _forget_other_batches(self, deliveries: list[Delivery]) -> None:
        """Keep state only for this batch (a batch abandoned at shutdown leaves nothing)."""
        current = {d.event.event_id for d in deliveries}
        for memo in (self._settled, self._attempts):
            for key in [k for k in memo if k not in current]:
                del memo[key]


def _distinct(events: Iterable[UsageEvent]) -> list[UsageEvent]:
    unique: dict[str, UsageEvent] = {}
    for event in events:
        unique.setdefault(event.event_id, event)
    return list(unique.values())


def _hint(retry: list[Outcome]) -> float | None:
    hints = [o.retry_after for o in retry if o.retry_after is not None]
    return max(hints) if hints else None


def _summary(sink: str, retry: list[Outcome], sent: int) -> str:
    return f"{sink}: {len(retry)} of {sent} events not taken yet ({retry[0].reason})"
