"""Gateway keys: what a client presents, and the record the gateway keeps about it.

A key is `gw-` followed by 43 URL-safe characters (32 random bytes). It is shown once, when it
is created; the gateway stores only its SHA-256 (a key carries 256 bits of entropy, so a slow
password hash adds nothing) and looks records up by that hash, so comparing secrets never
happens character by character. Events, logs and errors carry the key's `id`, never the key.
"""

from __future__ import annotations

import fnmatch
import hashlib
import secrets
import time
import uuid
from typing import Any, Literal

import msgspec

KEY_PREFIX = "gw-"
BudgetPeriod = Literal["daily", "monthly", "total"]


class Limits(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Per-key limits; 0 means unlimited."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    budget_tokens: int = 0
    budget_period: BudgetPeriod = "monthly"
    budget_usd: float = 0.0  # US dollars per budget period (a limit, never summed as a float)
    budget_soft_limit_percent: float = 80.0  # of budget_usd: past it, reported and counted
    # The response cache (cache.py): None follows the tenant's, then the model's; 0 turns it
    # off (a request cannot turn it on); N caches answers for N seconds.
    cache_ttl: int | None = None


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    key_hash: str
    name: str
    tenant: str
    models: tuple[str, ...] = ("*",)  # fnmatch patterns of the models the key may use
    expires_at: float | None = None  # unix seconds
    active: bool = True
    limits: Limits = Limits()
    metadata: dict[str, str] = {}
    created_at: float = 0.0
    display: str = ""  # `gw-abcd...wxyz`, to recognise a key without storing it
    # One more on every write; the store's compare-and-set checks it. Records written before
    # it existed decode as 0. New fields always get a default (never a changed type).
    version: int = 0

    def usable(self, now: float | None = None) -> bool:
        if not self.active:
            return False
        return self.expires_at is None or (now or time.time()) < self.expires_at

    def allows_model(self, model: str | None) -> bool:
        if model is None:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def public(self) -> dict[str, Any]:
        """The record as the management API shows it (the hash is not shown)."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        data.pop("key_hash", None)
        return data


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + uuid.uuid4().hex[:16]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_form(key: str) -> str:
    return f"{key[:7]}...{key[-4:]}"


def key_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The presented key: `Authorization: Bearer`, else `api-key` (Azure), else `x-api-key`."""
    bearer = api_key = x_api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                bearer = token.strip()
        elif name == b"api-key":
            api_key = value.strip()
        elif name == b"x-api-key":
            x_api_key = value.strip()
    chosen = bearer or api_key or x_api_key
    return chosen.decode("latin-1") if chosen else None
