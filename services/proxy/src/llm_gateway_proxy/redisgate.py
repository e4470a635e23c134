"""The one door to Redis: a timeout on every call, one exception of ours for whatever goes wrong,
and, on the request path, a circuit breaker.

    RedisUnavailable    Redis did not answer within the timeout, could not be reached, refused
                        the command (OOM, READONLY, CROSSSLOT, LOADING, ...), or the breaker is
                        open and it was not asked at all. Chained (`from`) to the redis error.

Request-path calls go through `read` or `write`. The first that fails opens the breaker (unless
another call succeeded while it waited: then Redis answers, and only that call was unlucky): from
then on those calls fail at once, without awaiting anything, and a background probe asks Redis
at once and then every `probe_interval` (with the same timeout) until it answers, then closes
the breaker. So an
outage of any length costs the request path one timeout, paid by the requests in flight when it
began, and never one timeout per request; and no client request is spent as a half-open probe.

A Redis that answers but refuses writes (OOM under `maxmemory` with `noeviction`, READONLY on a
replica after a failover) opens the breaker for writes only: key lookups still go through. The
probe writes a small key that expires, so it sees that kind of refusal end too.

Management calls (the API and the CLI answer for themselves, one operator at a time) use `call`:
the same timeout and the same exception, no breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Literal, ParamSpec, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

log = structlog.get_logger("llm_gateway.proxy")

P = ParamSpec("P")
T = TypeVar("T")

PROBE_KEY = "llm-gateway:gate:probe"
_PROBE_TTL_MS = 60_000
_FLAP_SECONDS = 1.0
_MAX_INTERVAL = 30.0

State = Literal["closed", "writes_refused", "open"]


class RedisUnavailable(Exception):
    """Redis could not be used for this call; the message says why (a reason, never data)."""


class RedisGate:
    """Timeouts, error mapping and the request path's circuit breaker, for one Redis client.

    `state`, `opened` (how many times the breaker opened), `failures` (calls that reached Redis
    and failed) and `rejected` (calls refused at once while it was open) are for /health and
    metrics."""

    def __init__(
        self, redis: aioredis.Redis, *, timeout: float, probe_interval: float = 0.5
    ) -> None:
        self.redis = redis
        self.timeout = timeout
        self.probe_interval = probe_interval
        self.state: State = "closed"
        self.opened = 0
        self.failures = 0
        self.rejected = 0
        self._down_since = 0.0
        self._answered_at = -1.0  # when a request-path call last succeeded
        self._closed_at = -_FLAP_SECONDS
        self._interval = probe_interval
        self._probe: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def open(self) -> bool:
        """True while no request-path call reaches Redis."""
        return self.state == "open"

    async def read(
        self, command: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """A request-path call that only reads: refused at once only while Redis is away."""
        if self.state == "open":
            self.rejected += 1
            raise RedisUnavailable("redis circuit open")
        return await self._guarded(False, command, *args, **kwargs)

    async def write(
        self, command: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """A request-path call that writes: refused at once while Redis is away or refuses
        writes."""
        if self.state != "closed":
            self.rejected += 1
            raise RedisUnavailable(f"redis circuit {self.state.replace('_', ' ')}")
        return await self._guarded(True, command, *args, **kwargs)

    async def call(
        self, command: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """A management call: bounded and mapped, but never refused by (nor tripping) the
        breaker."""
        try:
            async with asyncio.timeout(self.timeout):
                return await command(*args, **kwargs)
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(_reason(exc)) from exc

    async def warm(self, connections: int, *, timeout: float) -> None:
        """Open `connections` pooled connections before traffic arrives (best effort, bounded by
        `timeout`), so the first burst of requests does not pay for connecting within its short
        request-path timeout and trip the breaker on a healthy Redis."""
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(self.redis.ping() for _ in range(connections)))

    async def close(self) -> None:
        """Stop the probe, for good (at shutdown)."""
        self._stopped = True
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)

    async def _guarded(
        self, write: bool, command: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                result = await command(*args, **kwargs)
        except ResponseError as exc:
            # Redis answered, and refused. A refused write leaves reads alone (OOM, READONLY);
            # a refused read means reads are refused too.
            self.failures += 1
            self._trip(exc, "writes_refused" if write else "open")
            raise RedisUnavailable(_reason(exc)) from exc
        except (RedisError, OSError, TimeoutError) as exc:
            self.failures += 1
            # Another call succeeded while this one waited: Redis answers, this call was unlucky
            # (a busy moment, a burst of new connections, one dropped connection). Only when
            # nothing got through is it an outage.
            if self._answered_at < started:
                self._trip(exc, "open")
            raise RedisUnavailable(_reason(exc)) from exc
        self._answered_at = time.monotonic()
        return result

    def _trip(self, exc: BaseException, to: State) -> None:
        if self.state in ("open", to):
            return
        if self.state == "closed":
            self.opened += 1
            self._down_since = time.monotonic()
            # Refused again right after the probe closed it: a refusal the probe cannot see
            # (such as CROSSSLOT). Probe less often, so it costs a failed call and two log lines
            # per `_MAX_INTERVAL`, not per half second. (A Redis that is only slow now and then
            # is probed at once, every time: that is what closes the breaker soonest.)
            flapping = isinstance(exc, ResponseError) and (
                self._down_since - self._closed_at < _FLAP_SECONDS
            )
            self._interval = min(self._interval * 2, _MAX_INTERVAL) if flapping else (
                self.probe_interval
            )  # fmt: skip
        self.state = to
        log.error("redis_circuit_opened", state=to, reason=_reason(exc))
        if self._probe is None and not self._stopped:
            # A context of its own: the probe must not log with the tripping request's ids.
            self._probe = asyncio.create_task(
                self._probing(), name="redis-probe", context=contextvars.Context()
            )

    async def _probing(self) -> None:
        # The first probe goes at once: if Redis was only slow for a moment, the breaker closes
        # after one round trip instead of a probe interval. (Not when flapping: then it waits.)
        delay = 0.0 if self._interval == self.probe_interval else self._interval
        try:
            while self.state != "closed":
                await asyncio.sleep(delay)
                delay = self._interval
                try:
                    async with asyncio.timeout(self.timeout):
                        await self.redis.set(PROBE_KEY, b"1", px=_PROBE_TTL_MS)
                except ResponseError as exc:
                    if self.state == "open":  # it answers again, but refuses writes
                        self.state = "writes_refused"
                        log.warning("redis_circuit_half_closed", state=self.state,
                                    reason=_reason(exc))  # fmt: skip
                except (RedisError, OSError, TimeoutError):
                    pass
                else:
                    self.state = "closed"
                    self._closed_at = self._answered_at = time.monotonic()
                    down = round(self._closed_at - self._down_since, 3)
                    log.warning("redis_circuit_closed", down_seconds=down)
        finally:
            if self._probe is asyncio.current_task():
                self._probe = None


def _reason(exc: BaseException) -> str:
    """Why a call failed, fit for logs and error chains: the exception's type, or Redis' error
    code for a refusal redis-py has no class for; never a value, a message or a URL."""
    if type(exc) is ResponseError:  # redis-py has no class for this code (CROSSSLOT, ...)
        code = str(exc).split(" ", 1)[0]
        return f"ResponseError {code}"[:80]
    return type(exc).__name__  # OutOfMemoryError, ReadOnlyError, TimeoutError, ...
