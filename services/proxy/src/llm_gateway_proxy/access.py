"""Who may do what: the gateway key behind a request, its tenant, its models, its limits.

    authenticate (key -> record; 401)  ->  tenant (may only narrow; 403)
        ->  model allowed (403)  ->  admitted by its limits (429, or 503 / fail-open)

When Redis cannot answer (see redisgate.py: its breaker makes that cost nothing per request):
known keys are served from the cache (keystore.py), and admission follows RATE_LIMIT_FAIL_OPEN
whenever it cannot be decided: the limits script failed, or the tenant's limits are unknown (so
whether it has any is unknown too). Those 503s carry `Retry-After: 1`.

The key's tenant is authoritative. `X-LLM-Tenant` (or `X-Tenant`) may only narrow it: the same
tenant, or a sub-tenant below it (`team-a` may send `team-a/search`); anything else is 403.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from llm_gateway_proxy.errors import (
    AuthenticationFailed,
    AuthUnavailable,
    BudgetExhausted,
    ModelNotAllowed,
    RateLimited,
    TenantNotAllowed,
)
from llm_gateway_proxy.keys import KeyRecord, Limits, hash_key, key_from_headers
from llm_gateway_proxy.keystore import KeyStore, KeyStoreUnavailable
from llm_gateway_proxy.ratelimit import RateLimiter
from llm_gateway_proxy.redisgate import RedisGate

log = structlog.get_logger("llm_gateway.proxy")


class AccessUnavailable(AuthUnavailable):
    """A 503 because Redis is away: worth retrying soon."""

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


class Access:
    def __init__(self, keys: KeyStore, limiter: RateLimiter, *, enabled: bool,
                 on_soft_limit: Callable[[str], None] | None = None) -> None:  # fmt: skip
        """`on_soft_limit(scope)`: a request admitted past the key's or tenant's soft dollar
        limit (the metric)."""
        self.keys = keys
        self.limiter = limiter
        self.enabled = enabled
        self._on_soft_limit = on_soft_limit
        self._logged_outage = -1  # the breaker's `opened` count when we last logged

    @property
    def redis_gate(self) -> RedisGate:
        """The request path's Redis breaker (its `state`, `opened`, `failures`, `rejected`)."""
        return self.keys.gate

    async def authenticate(self, headers: list[tuple[bytes, bytes]]) -> KeyRecord | None:
        """The caller's key record; None when authentication is off (AUTH_MODE=none)."""
        if not self.enabled:
            return None
        key = key_from_headers(headers)
        if key is None:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        try:
            record = await self.keys.lookup(hash_key(key))
        except KeyStoreUnavailable as exc:
            raise AccessUnavailable("The gateway cannot check API keys right now.") from exc
        if record is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        if not record.usable():
            raise AuthenticationFailed("This API key has been revoked or has expired.")
        return record

    @staticmethod
    def tenant(record: KeyRecord, requested: str | None) -> str:
        """The request's tenant: the key's, or a sub-tenant of it the client asked for."""
        if requested is None or requested == record.tenant:
            return record.tenant
        if requested.startswith(record.tenant + "/"):
            return requested
        raise TenantNotAllowed(f"This API key may not act for tenant '{requested}'.")

    @staticmethod
    def authorize_model(record: KeyRecord, model: str | None) -> None:
        if not record.allows_model(model):
            raise ModelNotAllowed(f"This API key may not use model '{model}'.", param="model")

    async def admit(self, record: KeyRecord) -> Limits | None:
        """Count the request against the key's and its tenant's limits; raise if it is over
        one. Returns the tenant's limits (its tokens are charged after the request)."""
        try:
            tenant_limits = await self.keys.tenant_limits(record.tenant)
        except KeyStoreUnavailable:
            return self._undecided(None)
        verdict = await self.limiter.admit(record, tenant_limits)
        if verdict is None:
            return self._undecided(tenant_limits)
        if verdict.allowed:
            if verdict.soft is not None and self._on_soft_limit is not None:
                self._on_soft_limit(verdict.soft)
            return tenant_limits
        limits = verdict.limits or record.limits
        whose = "this API key" if verdict.scope == "key" else f"tenant '{record.tenant}'"
        if verdict.limit == "spend":
            raise BudgetExhausted(
                f"The {limits.budget_period} budget of ${limits.budget_usd:g} of {whose} is "
                "used up.", limit="spend", limit_value=0, reset_seconds=verdict.reset_seconds,
            )  # fmt: skip
        if verdict.limit == "budget":
            raise BudgetExhausted(
                f"The {limits.budget_period} token budget of {whose} is used up.",
                limit="budget", limit_value=limits.budget_tokens,
                reset_seconds=verdict.reset_seconds,
            )  # fmt: skip
        value = limits.requests_per_minute if verdict.limit == "requests" else (
            limits.tokens_per_minute
        )  # fmt: skip
        raise RateLimited(
            f"Rate limit reached: {value} {verdict.limit} per minute for {whose}.",
            limit=verdict.limit or "requests", limit_value=value,
            reset_seconds=verdict.reset_seconds,
        )  # fmt: skip

    def _undecided(self, tenant_limits: Limits | None) -> Limits | None:
        """Admission could not be decided (Redis is away): RATE_LIMIT_FAIL_OPEN says what to do.
        Logged once per outage (per opening of the breaker)."""
        outage = self.redis_gate.opened
        if outage != self._logged_outage:
            log.error("rate_limits_unavailable", fail_open=self.limiter.fail_open)
            self._logged_outage = outage
        if self.limiter.fail_open:
            return tenant_limits
        raise AccessUnavailable("The gateway cannot check rate limits right now.")
