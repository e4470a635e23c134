"""Per-key request and token limits and token budgets, shared by every replica through Redis.

Admission is one atomic Lua script per request (only for keys that have limits): it refuses
when the key's budget for the period or its tokens for this minute are used up, else counts the
request against the requests-per-minute window and refuses past the limit. Windows are fixed
UTC minutes. Tokens are charged after the request completes, from its usage (streams included),
by the event publisher's batch script, exactly once (`charges`); so a burst of requests admitted
in the same instant can overshoot a token limit by what they use, and a stream admitted before a
budget ran out may finish.

Redis unreachable, slow (past `timeout`) or refusing the script (OOM, READONLY, ...): the call
goes through the request path's RedisGate, whose breaker then answers at once for the rest of the
outage; `fail_open` admits the request (and logs it once per outage); otherwise the request is
refused with 503.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from llm_gateway_proxy.keys import KeyRecord, Limits
from llm_gateway_proxy.redisgate import RedisGate, RedisUnavailable

PREFIX = "llm-gateway:limits:"
_WINDOW_TTL = 120  # a minute's counters outlive their minute, for late charges and reads

# KEYS: key rpm, key tpm, key budget, tenant rpm, tenant tpm, tenant budget.
# ARGV: the six limits (0 = none), then the window TTL. Returns {code, used}: 0 admitted,
# 1/2/3 the key's requests/tokens/budget, 4/5/6 the tenant's.
_ADMIT = """
for scope = 0, 1 do
  local budget, tpm = tonumber(ARGV[3 + scope * 3]), tonumber(ARGV[2 + scope * 3])
  if budget > 0 then
    local used = tonumber(redis.call('GET', KEYS[3 + scope * 3]) or '0')
    if used >= budget then return {3 + scope * 3, used} end
  end
  if tpm > 0 then
    local used = tonumber(redis.call('GET', KEYS[2 + scope * 3]) or '0')
    if used >= tpm then return {2 + scope * 3, used} end
  end
end
local counted = 0
for scope = 0, 1 do
  local rpm = tonumber(ARGV[1 + scope * 3])
  if rpm > 0 then
    local n = tonumber(redis.call('GET', KEYS[1 + scope * 3]) or '0')
    if n >= rpm then return {1 + scope * 3, n} end
  end
end
for scope = 0, 1 do
  if tonumber(ARGV[1 + scope * 3]) > 0 then
    local n = redis.call('INCR', KEYS[1 + scope * 3])
    if n == 1 then redis.call('EXPIRE', KEYS[1 + scope * 3], ARGV[7]) end
    counted = n
  end
end
return {0, counted}
"""


class Verdict(NamedTuple):
    allowed: bool
    limit: str | None = None  # "requests" | "tokens" | "budget"
    used: int = 0
    reset_seconds: int = 0
    scope: str = "key"  # "key" | "tenant": whose limit was reached
    limits: Limits | None = None  # the limits that were reached


class Charge(NamedTuple):
    """Tokens to add to a counter after a request completed (written with the events)."""

    key: str
    amount: int
    ttl: int | None


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, *, timeout: float, fail_open: bool,
                 gate: RedisGate | None = None) -> None:  # fmt: skip
        """`gate` is the request path's RedisGate (shared with the KeyStore); without one the
        limiter makes its own with `timeout`."""
        self._redis = redis
        self.gate = gate if gate is not None else RedisGate(redis, timeout=timeout)
        self._fail_open = fail_open
        self._script: Any = redis.register_script(_ADMIT)
        self.unavailable = 0

    async def admit(self, record: KeyRecord, tenant: Limits | None = None) -> Verdict | None:
        """A verdict for this request, or None when Redis could not be asked (fail mode)."""
        if not (_limited(record.limits) or (tenant is not None and _limited(tenant))):
            return Verdict(True)
        tenant_limits = tenant or Limits()
        minute = int(time.time() // 60)
        keys = [*_counter_keys(f"key:{record.id}", record.limits, minute),
                *_counter_keys(f"tenant:{record.tenant}", tenant_limits, minute)]  # fmt: skip
        args = [*_limit_args(record.limits), *_limit_args(tenant_limits), _WINDOW_TTL]
        try:
            code, used = await self.gate.write(self._script, keys=keys, args=args)
        except RedisUnavailable:
            self.unavailable += 1
            return None
        code = int(code)
        if code == 0:
            return Verdict(True, None, int(used))
        scope, limits = ("key", record.limits) if code <= 3 else ("tenant", tenant_limits)
        limit = ("requests", "tokens", "budget")[(code - 1) % 3]
        return Verdict(False, limit, int(used), _reset_seconds(limit, limits), scope, limits)

    @property
    def fail_open(self) -> bool:
        return self._fail_open

    def charges(self, record: KeyRecord, tenant: Limits | None, tokens: int) -> list[Charge]:
        """What to add for a completed request's tokens (only where a token limit exists)."""
        if tokens <= 0:
            return []
        minute = int(time.time() // 60)
        charges: list[Charge] = []
        for owner, limits in ((f"key:{record.id}", record.limits), (f"tenant:{record.tenant}",
                                                                    tenant)):  # fmt: skip
            if limits is None or not (limits.tokens_per_minute or limits.budget_tokens):
                continue
            _, tpm_key, budget_key = _counter_keys(owner, limits, minute)
            charges.append(Charge(tpm_key, tokens, _WINDOW_TTL))
            if limits.budget_tokens:
                charges.append(Charge(budget_key, tokens, _budget_ttl(limits.budget_period)))
        return charges

    async def usage(self, record: KeyRecord) -> dict[str, int | str]:
        """What the key used: this minute's requests and tokens, and its budget period's tokens."""
        keys = _counter_keys(f"key:{record.id}", record.limits, int(time.time() // 60))
        values = await self.gate.call(self._redis.mget, keys)
        requests, tokens, budget = (int(v) if v else 0 for v in values)
        return {
            "requests_this_minute": requests,
            "tokens_this_minute": tokens,
            "budget_tokens_used": budget,
            "budget_period": record.limits.budget_period,
        }


def _limited(limits: Limits) -> bool:
    return bool(limits.requests_per_minute or limits.tokens_per_minute or limits.budget_tokens)


def _limit_args(limits: Limits) -> list[int]:
    return [limits.requests_per_minute, limits.tokens_per_minute, limits.budget_tokens]


def _counter_keys(owner: str, limits: Limits, minute: int) -> list[str]:
    """(requests this minute, tokens this minute, tokens this budget period) of `owner`. The
    period is the one `minute` falls in, so that a charge computed at 23:59:59.9 and a window
    stamped a moment later cannot land in different days."""
    now = datetime.fromtimestamp(minute * 60, UTC)
    stamp = {"daily": now.strftime("%Y%m%d"), "monthly": now.strftime("%Y%m"), "total": "all"}
    return [f"{PREFIX}{owner}:rpm:{minute}", f"{PREFIX}{owner}:tpm:{minute}",
            f"{PREFIX}{owner}:budget:{stamp[limits.budget_period]}"]  # fmt: skip


def _budget_ttl(period: str) -> int | None:
    return {"daily": 2 * 86_400, "monthly": 32 * 86_400}.get(period)


def _reset_seconds(limit: str, limits: Limits, now: datetime | None = None) -> int:
    """Seconds until `limit` resets (the `Retry-After`): the next UTC minute for per-minute
    limits; for budgets the next midnight UTC (daily) or the first instant of the next calendar
    month, UTC (monthly, whatever the month's length); 0 for a total budget, which never does."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if limit in ("requests", "tokens"):
        return 60 - now.second
    period = limits.budget_period
    if period == "daily":
        ends = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    elif period == "monthly":
        year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
        ends = datetime(year, month, 1, tzinfo=UTC)
    else:
        return 0
    return math.ceil((ends - now).total_seconds())
