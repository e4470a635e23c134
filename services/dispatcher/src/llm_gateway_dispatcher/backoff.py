"""How long to wait before trying a sink again: exponential backoff with jitter, unless the
sink said how long (`Retry-After`, in seconds or as an HTTP date; Lunary's `Rate-Limit-Reset`)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

# A wait the sink asks for is honoured up to this; past it the header is taken to be wrong (a
# skewed clock, a bogus date) rather than left to park the dispatcher for hours.
MAX_HINT = 900.0
# A `Rate-Limit-Reset` this large is a Unix time, smaller is seconds from now.
_EPOCH_THRESHOLD = 1_000_000_000


class Backoff:
    """Delays for consecutive failed rounds: `minimum * 2**(n-1)`, capped at `maximum`, with
    "equal jitter" (a random point in its upper half) so replicas do not retry in step."""

    def __init__(
        self, minimum: float, maximum: float, *, rand: Callable[[], float] = random.random
    ) -> None:
        self._minimum = minimum
        self._maximum = maximum
        self._rand = rand

    def delay(self, failures: int, hint: float | None = None) -> float:
        """The wait after the `failures`-th consecutive failed round (1-based). A `hint` from the
        sink wins, plus a little jitter (never less than the hint)."""
        if hint is not None:
            return min(hint, MAX_HINT) + self._rand() * self._minimum
        ceiling = min(self._maximum, self._minimum * 2.0 ** min(max(failures - 1, 0), 60))
        return ceiling / 2 + self._rand() * ceiling / 2


def retry_hint(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the sink asked us to wait, from `Retry-After` or `Rate-Limit-Reset` (the longer
    of the two when both are present); None when neither is there or readable. `headers` must
    look names up case-insensitively (aiohttp's do)."""
    now = time.time() if now is None else now
    waits = [
        wait
        for wait in (
            _retry_after(headers.get("Retry-After"), now),
            _rate_limit_reset(headers.get("Rate-Limit-Reset"), now),
        )
        if wait is not None
    ]
    return max(waits) if waits else None


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


def _rate_limit_reset(value: str | None, now: float) -> float | None:
    if not value:
        return None
    try:
        reset = float(value.strip())
    except ValueError:
        return None
    if reset >= _EPOCH_THRESHOLD:  # koa-ratelimit (Lunary) sends the reset time in Unix seconds
        reset -= now
    return max(reset, 0.0)
