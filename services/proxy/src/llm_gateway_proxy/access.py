"""Who may do what: the gateway key behind a request, its tenant, its models, its limits.

    authenticate (key -> record; 401)  ->  tenant (may only narrow; 403)
        ->  model allowed (403)  ->  admitted by its limits (429, or 503 / fail-open)

The key's tenant is authoritative. `X-LLM-Tenant` (or `X-Tenant`) may only narrow it: the same
tenant, or a sub-tenant below it (`team-a` may send `team-a/search`); anything else is 403.
"""

from __future__ import annotations

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

log = structlog.get_logger("llm_gateway.proxy")


class Access:
    def __init__(self, keys: KeyStore, limiter: RateLimiter, *, enabled: bool) -> None:
        self.keys = keys
        self.limiter = limiter
        self.enabled = enabled
        self._limits_unavailable_logged = False

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
            raise AuthUnavailable("The gateway cannot check API keys right now.") from exc
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
        tenant_limits = await self.keys.tenant_limits(record.tenant)
        verdict = await self.limiter.admit(record, tenant_limits)
        if verdict is None:
            if not self._limits_unavailable_logged:
                log.error("rate_limits_unavailable", fail_open=self.limiter.fail_open)
                self._limits_unavailable_logged = True
            if self.limiter.fail_open:
                return tenant_limits
            raise AuthUnavailable("The gateway cannot check rate limits right now.")
        self._limits_unavailable_logged = False
        if verdict.allowed:
            return tenant_limits
        limits = verdict.limits or record.limits
        whose = "this API key" if verdict.scope == "key" else f"tenant '{record.tenant}'"
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
