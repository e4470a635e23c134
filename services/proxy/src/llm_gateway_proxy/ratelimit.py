"""Per-key request and token limits and token budgets, shared by every replica through Redis.

Admission is one atomic Lua script per request (only for keys that have limits): it refuses
when the key's budget for the period or its tokens for this minute are used up, else counts the
request against the requests-per-minute window and refuses past the limit. Windows are fixed
UTC minutes. Tokens are charged after the request completes, from its usage (streams included),
by the event publisher's batched pipeline (`charges`); so a burst of requests admitted in the
same instant can overshoot a token limit by what they use, and a stream admitted before a budget
ran out may finish.

Redis unreachable or slow (past `timeout`): `fail_open` admits the request (and logs it once
per outage); otherwise the request is refused with 503.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llm_gateway_proxy.keys import KeyRecord

PREFIX = "llm-gateway:limits:"
_WINDOW_TTL = 120  # a minute's counters outlive their minute, for late charges and reads

_ADMIT = """
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if budget > 0 then
  local used = tonumber(redis.call('GET', KEYS[3]) or '0')
  if used >= budget then return {3, used} end
end
if tpm > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= tpm then return {2, used} end
end
if rpm > 0 then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
  if n > rpm then return {1, n} end
  return {0, n}
end
return {0, 0}
"""


class Verdict(NamedTuple):
    allowed: bool
    limit: str | None = None  # "requests" | "tokens" | "budget"
    used: int = 0
    reset_seconds: int = 0


class Charge(NamedTuple):
    """Tokens to add to a counter after a request completed (written with the events)."""

    key: str
    amount: int
    ttl: int | None


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, *, timeout: float, fail_open: bool) -> None:
        self._redis = redis
        self._timeout = timeout
        self._fail_open = fail_open
        self._script: Any = redis.register_script(_ADMIT)
        self.unavailable = 0

    async def admit(self, record: KeyRecord) -> Verdict | None:
        """A verdict for this request, or None when Redis could not be asked (fail mode)."""
        limits = record.limits
        if not (limits.requests_per_minute or limits.tokens_per_minute or limits.budget_tokens):
            return Verdict(True)
        minute = int(time.time() // 60)
        keys = [_rpm_key(record.id, minute), _tpm_key(record.id, minute), _budget_key(record)]
        args = [limits.requests_per_minute, limits.tokens_per_minute, limits.budget_tokens,
                _WINDOW_TTL]  # fmt: skip
        try:
            code, used = await asyncio.wait_for(self._script(keys=keys, args=args), self._timeout)
        except (RedisError, OSError, TimeoutError):
            self.unavailable += 1
            return None
        if int(code) == 0:
            return Verdict(True, None, int(used))
        limit = {1: "requests", 2: "tokens", 3: "budget"}[int(code)]
        return Verdict(False, limit, int(used), _reset_seconds(limit, record))

    @property
    def fail_open(self) -> bool:
        return self._fail_open

    def charges(self, record: KeyRecord, tokens: int) -> list[Charge]:
        """What to add for a completed request's tokens (none for keys without token limits)."""
        limits = record.limits
        if tokens <= 0 or not (limits.tokens_per_minute or limits.budget_tokens):
            return []
        minute = int(time.time() // 60)
        charges = [Charge(_tpm_key(record.id, minute), tokens, _WINDOW_TTL)]
        if limits.budget_tokens:
            charges.append(Charge(_budget_key(record), tokens, _budget_ttl(limits.budget_period)))
        return charges

    async def usage(self, record: KeyRecord) -> dict[str, int | str]:
        """What the key used: this minute's requests and tokens, and its budget period's tokens."""
        minute = int(time.time() // 60)
        keys = [_rpm_key(record.id, minute), _tpm_key(record.id, minute), _budget_key(record)]
        values = await asyncio.wait_for(self._redis.mget(keys), self._timeout)
        requests, tokens, budget = (int(v) if v else 0 for v in values)
        return {
            "requests_this_minute": requests,
            "tokens_this_minute": tokens,
            "budget_tokens_used": budget,
            "budget_period": record.limits.budget_period,
        }


def _rpm_key(key_id: str, minute: int) -> str:
    return f"{PREFIX}{key_id}:rpm:{minute}"


def _tpm_key(key_id: str, minute: int) -> str:
    return f"{PREFIX}{key_id}:tpm:{minute}"


def _budget_key(record: KeyRecord) -> str:
    now = datetime.now(UTC)
    period = record.limits.budget_period
    stamp = {"daily": now.strftime("%Y%m%d"), "monthly": now.strftime("%Y%m"), "total": "all"}
    return f"{PREFIX}{record.id}:budget:{stamp[period]}"


def _budget_ttl(period: str) -> int | None:
    return {"daily": 2 * 86_400, "monthly": 32 * 86_400}.get(period)


def _reset_seconds(limit: str, record: KeyRecord) -> int:
    now = datetime.now(UTC)
    if limit in ("requests", "tokens"):
        return 60 - now.second
    period = record.limits.budget_period
    if period == "daily":
        return 86_400 - (now.hour * 3600 + now.minute * 60 + now.second)
    if period == "monthly":
        days = 31 - now.day + 1
        return days * 86_400 - (now.hour * 3600 + now.minute * 60 + now.second)
    return 0  # a total budget does not reset
