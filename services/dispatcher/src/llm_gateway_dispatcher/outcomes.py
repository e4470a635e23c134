"""What a sink says about each event it was given, and the id that makes resending harmless.

    accepted     the sink has it (or already had it: a redelivered event)
    refused      never will: bad key, malformed, too large        -> dead-lettered now
    rejected     the sink answered about this event and did not   -> retried, counts as an attempt
                 take it (a Lunary per-event failure)
    unavailable  the sink as a whole could not take it now:       -> retried; counts as an attempt
                 connection error, timeout, 408/429/5xx, a           only if the sink took other
                 Helicone 200 with an error                          events in the same round

`DeliveryHandler` (delivery.py) turns these into acknowledgements, dead letters and retries.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from llm_gateway_common.events import UsageEvent

Kind = Literal["accepted", "refused", "rejected", "unavailable"]

# Fixed forever: the sinks deduplicate on ids derived with it, so changing it would make every
# redelivered event a new run.
_ID_NAMESPACE = uuid.UUID("cc6ed2ce-6982-4d2b-af24-d9edbd3c048f")


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    reason: str = ""
    retry_after: float | None = None  # seconds the sink asked us to wait (Retry-After)

    @property
    def settled(self) -> bool:
        return self.kind in ("accepted", "refused")


ACCEPTED = Outcome("accepted")


def refused(reason: str) -> Outcome:
    return Outcome("refused", reason)


def rejected(reason: str) -> Outcome:
    return Outcome("rejected", reason)


def unavailable(reason: str, retry_after: float | None = None) -> Outcome:
    return Outcome("unavailable", reason, retry_after)


def delivery_id(event: UsageEvent) -> str:
    """The event's id at the sink (Lunary runId, Helicone-Request-Id): the same UUID every time
    the event is sent, so a redelivery updates the record instead of creating a second one."""
    return str(uuid.uuid5(_ID_NAMESPACE, event.event_id))
