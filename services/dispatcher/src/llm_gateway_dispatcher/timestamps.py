"""An event's start and end as the sinks want them: whole milliseconds, the end after the start.

Both sinks keep milliseconds. Two instants in the same millisecond would make a zero-length run
(Lunary also orders a run's events by timestamp), so the end is nudged to 1 ms after the start
when they round to the same millisecond.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from llm_gateway_common.events import UsageEvent

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def span_ms(event: UsageEvent) -> tuple[int, int]:
    """Start and end in Unix milliseconds, the end at least 1 ms after the start."""
    started = epoch_ms(event.started_at)
    return started, max(epoch_ms(event.finished_at), started + 1)


def epoch_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)  # exact: no float rounding


def iso_ms(epoch_milliseconds: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. `2026-11-22T10:00:00.123Z`."""
    seconds, millis = divmod(epoch_milliseconds, 1000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"
