"""Which targets are cooling down, shared by every replica through Redis.

A target (provider entry + upstream model) cools down after `cooldown.failures` consecutive
failed attempts, or at once for as long as a 429's Retry-After says. While it cools down the
router skips it; when the time is up, one request probes it (others keep skipping it until the
probe answers or its lease ends): success clears it, failure cools it down again.

Sharing: a replica writes a cooldown it starts (`HSET llm-gateway:cooldowns <target> <until>`)
at once and reads every replica's (`HGETALL`) in the same round trip, and again every
`sync_interval` (0.5 s), so a cooldown reaches every replica within about half a second. The
sync runs beside the requests, never in their path: when Redis is away each replica keeps its
own cooldowns (fail-open) and shares them again once it is back. Failure counts stay per
replica; only the resulting cooldowns are shared. Times are wall-clock seconds, as replicas
share no monotonic clock. A target is named by its provider and the model (or pattern) of its
entry, never by a name a client chose, so the state is bounded by the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from llm_gateway_proxy.modelconfig import Cooldown

log = structlog.get_logger("llm_gateway.proxy")

COOLDOWNS_KEY = "llm-gateway:cooldowns"
MAX_RETRY_AFTER = 3600.0  # a provider's Retry-After is believed up to an hour
_FORGET_AFTER = 600.0  # shared entries this long past are removed


class Cooldowns:
    """Local cooldown state of the targets, kept in step with the other replicas'."""

    def __init__(
        self,
        redis: aioredis.Redis | None,
        *,
        timeout: float,
        sync_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._timeout = timeout
        self._interval = sync_interval
        self._clock = clock
        self._until: dict[str, float] = {}  # target -> cooling until (wall clock)
        self._failures: dict[str, int] = {}  # target -> consecutive failed attempts, here
        self._probes: dict[str, float] = {}  # target -> a probe is out until
        self._dirty: dict[str, float] = {}  # cooldowns started here, not yet shared
        self._stale: list[bytes] = []  # shared entries long past, removed on the next sync
        self._started = asyncio.Event()  # a cooldown started here: share it now
        self._synced = True

    def now(self) -> float:
        return self._clock()

    @property
    def cooling(self) -> bool:
        """Whether any target cooled down (or still waits for its probe): False, the router
        need not look (the usual case, and the fast one)."""
        return bool(self._until)

    def frees_at(self, target: str, now: float) -> float:
        """0.0 when the target may be tried now; else when it frees."""
        until = self._until.get(target)
        if until is None:
            return 0.0
        if until > now:
            return until
        probe = self._probes.get(target, 0.0)
        return probe if probe > now else 0.0

    def chosen(self, target: str, now: float, lease: float) -> None:
        """The router picked `target`: if its cooldown just ended, this request is the probe."""
        until = self._until.get(target)
        if until is not None and until <= now:
            self._probes[target] = now + lease

    def abandoned(self, target: str) -> None:
        """The request chosen to probe `target` did not try it after all (it left, or the
        target cannot take it): the next request may probe."""
        self._probes.pop(target, None)

    def succeeded(self, target: str) -> None:
        self._failures.pop(target, None)
        if self._until.pop(target, None) is not None:
            self._probes.pop(target, None)

    def failed(self, target: str, policy: Cooldown, retry_after: float | None) -> float:
        """Note a failed attempt; returns the cooldown it started (0.0: none)."""
        count = self._failures.get(target, 0) + 1
        probing = self._probes.pop(target, None) is not None
        seconds = 0.0
        if retry_after is not None and retry_after > 0:
            seconds = min(retry_after, MAX_RETRY_AFTER)
        elif count >= policy.failures or probing:
            seconds = policy.seconds
        if seconds <= 0:
            self._failures[target] = count
            return 0.0
        self._failures[target] = 0
        until = self.now() + seconds
        if until > self._until.get(target, 0.0):
            self._until[target] = until
            self._dirty[target] = until
            self._started.set()
        log.warning("target_cooling_down", target=target, seconds=round(seconds, 3),
                    failures=count)  # fmt: skip
        return seconds

    def snapshot(self) -> dict[str, float]:
        """Targets cooling down now and the seconds left (for /health)."""
        now = self.now()
        return {t: round(u - now, 3) for t, u in self._until.items() if u > now}

    async def run(self) -> None:
        """Share cooldowns until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):  # at once when one started here
                await asyncio.wait_for(self._started.wait(), self._interval)
            self._started.clear()
            await self.sync()

    async def sync(self) -> None:
        """One round trip: write the cooldowns started here, read everyone's."""
        if self._redis is None:
            return
        dirty, self._dirty = self._dirty, {}
        stale, self._stale = self._stale, []
        try:
            async with asyncio.timeout(self._timeout):
                async with self._redis.pipeline(transaction=False) as pipe:
                    if dirty:
                        pipe.hset(COOLDOWNS_KEY, mapping={t: repr(u) for t, u in dirty.items()})
                    if stale:
                        pipe.hdel(COOLDOWNS_KEY, *stale)
                    pipe.hgetall(COOLDOWNS_KEY)
                    replies = await pipe.execute()
        except (TimeoutError, RedisError, OSError) as exc:
            for target, until in dirty.items():  # shared on the next sync that works
                self._dirty[target] = max(until, self._dirty.get(target, 0.0))
            if self._synced:
                log.warning("cooldowns_not_shared", reason=type(exc).__name__)
            self._synced = False
            return
        if not self._synced:
            log.info("cooldowns_shared_again")
        self._synced = True
        self._merge(replies[-1])

    def _merge(self, shared: dict[bytes, bytes]) -> None:
        now = self.now()
        stale = []
        for raw_target, raw_until in shared.items():
            target = raw_target.decode("utf-8", "replace")
            try:
                until = float(raw_until)
            except ValueError:
                continue
            if until < now - _FORGET_AFTER:
                stale.append(raw_target)
            elif until > now and until > self._until.get(target, 0.0):
                self._until[target] = until
        self._stale = stale
