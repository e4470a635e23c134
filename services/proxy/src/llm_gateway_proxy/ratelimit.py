"""Per-key request and token limits, token and dollar budgets, shared by every replica through
Redis.

Admission is one atomic Lua script per request (only for keys that have limits): it refuses
when the key's dollar or token budget for the period or its tokens for this minute are used
up, else counts the request against the requests-per-minute window and refuses past the
limit. Windows are fixed UTC minutes. Tokens are charged after the request completes, from
its usage (streams included), by the event publisher's batch script, exactly once
(`charges`), and so is its cost, in integer nano-dollars (never a float where it is summed);
so a burst of requests admitted in the same instant can overshoot a limit by what they use,
and a stream admitted before a budget ran out may finish.

Redis unreachable, slow (past `timeout`) or refusing the script (OOM, READONLY, ...): the call
goes through the request path's RedisGate, whose breaker then answers at once for the rest of the
outage; `fail_open` admits the request (and logs it once per outage); otherwise the request is
refused with 503.
"""

from __future__ import annotations

import functools
import math
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from llm_gateway_proxy.keys import KeyRecord, Limits
from llm_gateway_proxy.prices import nano_usd
from llm_gateway_proxy.redisgate import RedisGate, RedisUnavailable

PREFIX = "llm-gateway:limits:"
_WINDOW_TTL = 120  # a minute's counters outlive their minute, for late charges and reads
_UNLIMITED = Limits()

# KEYS: per scope (key, then tenant) rpm, tpm, token budget, spend (nano-USD).
# ARGV: per scope rpm, tpm, token budget, spend limit, spend soft limit (0 = none); then the
# window TTL. Returns {code, used, soft}: code 0 admitted, 1/2/3/4 the key's requests/tokens/
# budget/spend, 5..8 the tenant's; soft 1/2 when the key's/tenant's spend is past its soft limit.
_ADMIT = """
for scope = 0, 1 do
  local k, a = scope * 4, scope * 5
  local budget, tpm = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 2])
  local spend = tonumber(ARGV[a + 4])
  if spend > 0 then
    local used = tonumber(redis.call('GET', KEYS[k + 4]) or '0')
    if used >= spend then return {k + 4, used, 0} end
  end
  if budget > 0 then
    local used = tonumber(redis.call('GET', KEYS[k + 3]) or '0')
    if used >= budget then return {k + 3, used, 0} end
  end
  if tpm > 0 then
    local used = tonumber(redis.call('GET', KEYS[k + 2]) or '0')
    if used >= tpm then return {k + 2, used, 0} end
  end
end
local counted = 0
for scope = 0, 1 do
  local rpm = tonumber(ARGV[scope * 5 + 1])
  if rpm > 0 then
    local n = tonumber(redis.call('GET', KEYS[scope * 4 + 1]) or '0')
    if n >= rpm then return {scope * 4 + 1, n, 0} end
  end
end
for scope = 0, 1 do
  if tonumber(ARGV[scope * 5 + 1]) > 0 then
    local n = redis.call('INCR', KEYS[scope * 4 + 1])
    if n == 1 then redis.call('EXPIRE', KEYS[scope * 4 + 1], ARGV[11]) end
    counted = n
  end
end
local soft = 0
for scope = 1, 0, -1 do
  local limit = tonumber(ARGV[scope * 5 + 5])
  if limit > 0 and tonumber(redis.call('GET', KEYS[scope * 4 + 4]) or '0') >= limit then
    soft = scope + 1
  end
end
return {0, counted, soft}
"""


class Verdict(NamedTuple):
    allowed: bool
    limit: str | None = None  # "requests" | "tokens" | "budget" | "spend"
    used: int = 0
    reset_seconds: int = 0
    scope: str = "key"  # "key" | "tenant": whose limit was reached
    limits: Limits | None = None  # the limits that were reached
    soft: str | None = None  # admitted, but "key" | "tenant" spend is past its soft limit


class Charge(NamedTuple):
    """Tokens (or nano-dollars) to add to a counter after a request completed (written with
    the events)."""

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
            reply = await self.gate.write(self._script, keys=keys, args=args)
        except RedisUnavailable:
            self.unavailable += 1
            return None
        code, used, soft = (int(v) for v in reply)
        if code == 0:
            return Verdict(True, None, used, soft=(None, "key", "tenant")[soft])
        scope, limits = ("key", record.limits) if code <= 4 else ("tenant", tenant_limits)
        limit = ("requests", "tokens", "budget", "spend")[(code - 1) % 4]
        return Verdict(False, limit, used, _reset_seconds(limit, limits), scope, limits)

    @property
    def fail_open(self) -> bool:
        return self._fail_open

    def charges(self, record: KeyRecord, tenant: Limits | None, tokens: int,
                cost: Decimal | None = None) -> list[Charge]:  # fmt: skip
        """What to add for a completed request: its tokens where a token limit exists, and its
        cost (integer nano-dollars) to the key's and tenant's spend for the period, always, so
        that spend is reported with or without a dollar budget."""
        spend = 0 if cost is None else nano_usd(cost)
        if tokens <= 0 and spend <= 0:
            return []
        minute = int(time.time() // 60)
        stamps = _period_stamps(minute)
        charges: list[Charge] = []
        for owner, limits in ((f"key:{record.id}", record.limits), (f"tenant:{record.tenant}",
                                                                    tenant)):  # fmt: skip
            period = (limits or _UNLIMITED).budget_period
            if spend > 0:
                charges.append(Charge(f"{PREFIX}{owner}:spend:{stamps[period]}", spend,
                                      _BUDGET_TTLS[period]))  # fmt: skip
            if tokens <= 0 or limits is None or not (limits.tokens_per_minute
                                                     or limits.budget_tokens):  # fmt: skip
                continue
            _, tpm_key, budget_key, _ = _counter_keys(owner, limits, minute)
            charges.append(Charge(tpm_key, tokens, _WINDOW_TTL))
            if limits.budget_tokens:
                charges.append(Charge(budget_key, tokens, _BUDGET_TTLS[period]))
        return charges

    async def usage(self, record: KeyRecord) -> dict[str, Any]:
        """What the key used: this minute's requests and tokens, its budget period's tokens and
        spend, and where that spend stands against a dollar budget."""
        limits = record.limits
        keys = _counter_keys(f"key:{record.id}", limits, int(time.time() // 60))
        values = await self.gate.call(self._redis.mget, keys)
        requests, tokens, budget, spend = (int(v) if v else 0 for v in values)
        limit = _nanos(limits.budget_usd)
        return {
            "requests_this_minute": requests,
            "tokens_this_minute": tokens,
            "budget_tokens_used": budget,
            "budget_period": limits.budget_period,
            "spend_usd": spend / 1e9,
            "spend_nano_usd": spend,
            "budget_usd": limits.budget_usd,
            "budget_usd_remaining": max(limit - spend, 0) / 1e9 if limit else None,
            "budget_soft_limit_reached": bool(limit) and spend >= _soft_nanos(limits),
        }


def _limited(limits: Limits) -> bool:
    return bool(limits.requests_per_minute or limits.tokens_per_minute or limits.budget_tokens
                or limits.budget_usd)  # fmt: skip


def _limit_args(limits: Limits) -> list[int]:
    return [limits.requests_per_minute, limits.tokens_per_minute, limits.budget_tokens,
            _nanos(limits.budget_usd), _soft_nanos(limits)]  # fmt: skip


def _nanos(dollars: float) -> int:
    """A dollar limit in nano-dollars: exact for any limit given with up to 9 decimals."""
    return int(Decimal(repr(dollars)).scaleb(9).to_integral_value())


def _soft_nanos(limits: Limits) -> int:
    limit = _nanos(limits.budget_usd)
    return math.ceil(limit * limits.budget_soft_limit_percent / 100) if limit else 0


def _counter_keys(owner: str, limits: Limits, minute: int) -> list[str]:
    """(requests this minute, tokens this minute, tokens and nano-dollars this budget period)
    of `owner`. The period is the one `minute` falls in, so that a charge computed at
    23:59:59.9 and a window stamped a moment later cannot land in different days."""
    period = _period_stamps(minute)[limits.budget_period]
    return [f"{PREFIX}{owner}:rpm:{minute}", f"{PREFIX}{owner}:tpm:{minute}",
            f"{PREFIX}{owner}:budget:{period}", f"{PREFIX}{owner}:spend:{period}"]  # fmt: skip


@functools.lru_cache(maxsize=4)
def _period_stamps(minute: int) -> dict[str, str]:
    """The stamp of each budget period `minute` falls in (computed once a minute, not per
    request: strftime three times costs more than the rest of a charge)."""
    now = datetime.fromtimestamp(minute * 60, UTC)
    return {"daily": now.strftime("%Y%m%d"), "monthly": now.strftime("%Y%m"), "total": "all"}


_BUDGET_TTLS: dict[str, int | None] = {"daily": 2 * 86_400, "monthly": 32 * 86_400, "total": None}


def _budget_ttl(period: str) -> int | None:
    return _BUDGET_TTLS.get(period)


def _reset_seconds(limit: str, limits: Limits, now: datetime | None = None) -> int:
    """Seconds until `limit` resets (the `Retry-After`): the next UTC minute for per-minute
    limits; for budgets the next midnight UTC (daily) or the first instant of the next calendar
    month, UTC (monthly, whatever the month's length); 0 for a total budget, which never does."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if limit in ("requests", "tokens"):  # per minute; "budget" and "spend" by the period
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
