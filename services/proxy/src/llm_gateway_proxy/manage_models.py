"""What the management API accepts and answers, as msgspec Structs, and its OpenAPI document.

Request bodies are decoded strictly (`forbid_unknown_fields`), with bounds on every string, list
and number, so the store never holds anything the request path would choke on. The OpenAPI
document is generated from the same Structs (`msgspec.json.schema_components`), so it cannot
drift from what the handlers validate.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from msgspec import UNSET, Meta, UnsetType

from llm_gateway_proxy.keys import BudgetPeriod, Limits

MAX_COUNT = 10**15  # limits and budgets: far above any real use, well inside Redis' int64
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z

Name = Annotated[str, Meta(min_length=1, max_length=200)]
# Tenants travel into headers (Helicone), tags (Lunary) and URLs: a plain identifier, with `/`
# for sub-tenants (`team-a/search`). `(?!.*\n)`: Python's `$` also matches before a final
# newline, and `team-a\n` must not pass.
TENANT_PATTERN = r"^(?!.*\n)[A-Za-z0-9._:@-]+(/[A-Za-z0-9._:@-]+)*$"
Tenant = Annotated[str, Meta(min_length=1, max_length=128, pattern=TENANT_PATTERN)]
ModelPattern = Annotated[str, Meta(min_length=1, max_length=200)]
Models = Annotated[tuple[ModelPattern, ...], Meta(min_length=1, max_length=100)]
Timestamp = Annotated[float, Meta(ge=0, le=MAX_TIMESTAMP)]
Count = Annotated[int, Meta(ge=0, le=MAX_COUNT)]
# US dollars: up to $1e9 per period (as integer nano-dollars, still far inside Redis' int64).
Dollars = Annotated[float, Meta(ge=0, le=1e9)]
Percent = Annotated[float, Meta(ge=0, le=100)]
CacheTtl = Annotated[int, Meta(ge=0, le=365 * 86_400)]  # seconds; 0: the cache off
Metadata = Annotated[
    dict[Annotated[str, Meta(min_length=1, max_length=64)], Annotated[str, Meta(max_length=512)]],
    Meta(max_length=50),
]


class _Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request body: unknown fields are an error, not silently dropped."""


class LimitsSpec(_Body, frozen=True):
    """Limits to set; 0 means unlimited. Fields left out keep their value (0 on create)."""

    requests_per_minute: Count | UnsetType = UNSET
    tokens_per_minute: Count | UnsetType = UNSET
    budget_tokens: Count | UnsetType = UNSET
    budget_period: BudgetPeriod | UnsetType = UNSET
    budget_usd: Dollars | UnsetType = UNSET
    budget_soft_limit_percent: Percent | UnsetType = UNSET
    cache_ttl: CacheTtl | UnsetType | None = UNSET  # null: follow the tenant's, then the model's

    def applied_to(self, limits: Limits) -> Limits:
        changes = {name: value for name, value in msgspec.structs.asdict(self).items()
                   if value is not UNSET}  # fmt: skip
        return msgspec.structs.replace(limits, **changes)


class CreateKey(_Body, frozen=True):
    name: Name
    tenant: Tenant
    models: Models = ("*",)
    expires_at: Timestamp | None = None
    limits: LimitsSpec = LimitsSpec()
    metadata: Metadata = {}


class UpdateKey(_Body, frozen=True):
    """Fields to change. `expires_at: null` removes the expiry; `limits` are merged field by
    field; `models` and `metadata` are replaced whole."""

    name: Name | UnsetType = UNSET
    models: Models | UnsetType = UNSET
    expires_at: Timestamp | UnsetType | None = UNSET
    limits: LimitsSpec | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    active: bool | UnsetType = UNSET


# --- responses -------------------------------------------------------------------------------


class KeyView(msgspec.Struct, frozen=True, kw_only=True):
    """A key as the API shows it (`KeyRecord.public()`): everything but its hash."""

    id: str
    name: str
    tenant: str
    models: tuple[str, ...]
    expires_at: float | None
    active: bool
    limits: Limits
    metadata: dict[str, str]
    created_at: float
    display: str
    version: int = 0  # one more on every change (update, revoke, rotate)


class CreatedKey(KeyView, frozen=True, kw_only=True):
    key: str  # shown once, in the answer to create or rotate; never stored


class KeyList(msgspec.Struct, frozen=True, kw_only=True):
    object: Literal["list"] = "list"
    data: list[KeyView]


class KeyUsage(msgspec.Struct, frozen=True, kw_only=True):
    """What one key used: this UTC minute's requests and tokens, its budget period's tokens and
    spend. `spend_nano_usd` is exact (billionths of a dollar); `spend_usd` the same in dollars.
    `budget_usd_remaining` and `budget_soft_limit_reached` only mean something with a
    `budget_usd` (else null and false)."""

    key_id: str
    tenant: str
    requests_this_minute: int
    tokens_this_minute: int
    budget_tokens_used: int
    budget_period: BudgetPeriod
    spend_usd: float = 0.0
    spend_nano_usd: int = 0
    budget_usd: float = 0.0
    budget_usd_remaining: float | None = None
    budget_soft_limit_reached: bool = False


class UsageTotals(msgspec.Struct, frozen=True, kw_only=True):
    requests_this_minute: int = 0
    tokens_this_minute: int = 0
    budget_tokens_used: int = 0  # summed over keys, each in its own budget period
    spend_usd: float = 0.0  # likewise
    spend_nano_usd: int = 0


class TenantUsage(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    total: UsageTotals
    keys: list[KeyUsage]


class TenantLimits(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's own limits, over all its keys (0: unlimited); `set` is false when the
    tenant has none."""

    tenant: str
    set: bool
    limits: Limits


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    error: ErrorDetail


# --- the OpenAPI document ----------------------------------------------------------------------


class _Op(NamedTuple):
    path: str
    method: str
    operation_id: str
    summary: str
    answer: str | None  # a component name; None for the document itself
    status: str = "200"
    body: str | None = None
    parameter: str | None = None  # a key of _PARAMETERS


_OPERATIONS = (
    _Op("/keys", "post", "createKey", "Create a key (shown only in this answer)", "CreatedKey",
        status="201", body="CreateKey"),
    _Op("/keys", "get", "listKeys", "List keys, optionally of one tenant", "KeyList",
        parameter="tenant_filter"),
    _Op("/keys/{key_id}", "get", "getKey", "One key", "KeyView", parameter="key_id"),
    _Op("/keys/{key_id}", "patch", "updateKey", "Change a key's settings", "KeyView",
        body="UpdateKey", parameter="key_id"),
    _Op("/keys/{key_id}/revoke", "post", "revokeKey", "Deactivate a key", "KeyView",
        parameter="key_id"),
    _Op("/keys/{key_id}/rotate", "post", "rotateKey",
        "A new key with the same id and settings; the old key stops working", "CreatedKey",
        parameter="key_id"),
    _Op("/usage/keys/{key_id}", "get", "keyUsage", "A key's usage", "KeyUsage",
        parameter="key_id"),
    _Op("/usage/tenants/{tenant}", "get", "tenantUsage", "A tenant's usage: sum and each key",
        "TenantUsage", parameter="tenant"),
    _Op("/tenants/{tenant}/limits", "get", "getTenantLimits", "A tenant's own limits",
        "TenantLimits", parameter="tenant"),
    _Op("/tenants/{tenant}/limits", "put", "setTenantLimits",
        "Set a tenant's limits over all its keys (fields left out: unlimited)", "TenantLimits",
        body="LimitsSpec", parameter="tenant"),
    _Op("/tenants/{tenant}/limits", "delete", "removeTenantLimits",
        "Remove a tenant's limits", "TenantLimits", parameter="tenant"),
    _Op("/openapi.json", "get", "openapi", "This document", None),
)  # fmt: skip
_PARAMETERS: dict[str, dict[str, Any]] = {
    "tenant_filter": {"name": "tenant", "in": "query", "required": False,
                      "schema": msgspec.json.schema(Tenant)},
    "key_id": {"name": "key_id", "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1}},
    "tenant": {"name": "tenant", "in": "path", "required": True,
               "schema": msgspec.json.schema(Tenant)},
}  # fmt: skip
_ERRORS = {
    "400": "Invalid body or parameter (`param` names it)",
    "401": "Missing or wrong management token",
    "404": "Unknown key or tenant (or the management API is disabled)",
    "413": "Request body too large",
    "503": "Redis did not answer in time",
}


# What a client can do next with the key a create or rotate returned (OpenAPI links; they also
# let a stateful test chain calls on real ids).
_KEY_LINKS = {
    **{operation: {"operationId": operation, "parameters": {"key_id": "$response.body#/id"}}
       for operation in ("getKey", "updateKey", "revokeKey", "rotateKey", "keyUsage")},
    "tenantUsage": {"operationId": "tenantUsage",
                    "parameters": {"tenant": "$response.body#/tenant"}},
}  # fmt: skip


def openapi_document(server_url: str) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the management API served at `server_url`."""
    _, schemas = msgspec.json.schema_components(
        (
            CreateKey,
            UpdateKey,
            KeyView,
            CreatedKey,
            KeyList,
            KeyUsage,
            TenantUsage,
            LimitsSpec,
            TenantLimits,
            ErrorBody,
        ),
        ref_template="#/components/schemas/{name}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in _OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llm-gateway management API",
            "version": "1",
            "description": "Gateway keys, tenants and their usage. Every operation needs "
            "`Authorization: Bearer <MANAGEMENT_TOKEN>`.",
        },
        "servers": [{"url": server_url}],
        "security": [{"managementToken": []}],
        "paths": paths,
        "components": {
            "schemas": msgspec.to_builtins(schemas),  # tuples (defaults) as lists
            "securitySchemes": {"managementToken": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(op: _Op) -> dict[str, Any]:
    answer = _content(op.summary, op.answer)
    errors = {status: _content(text, "ErrorBody") for status, text in _ERRORS.items()}
    operation: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "responses": {op.status: answer, **errors},
    }
    if op.answer == "CreatedKey":
        answer["links"] = _KEY_LINKS
    if op.parameter is not None:
        operation["parameters"] = [_PARAMETERS[op.parameter]]
    if op.body is not None:
        operation["requestBody"] = {"required": True, **_content(op.body, op.body)}
    return operation


def _content(description: str, schema: str | None) -> dict[str, Any]:
    media: dict[str, Any] = {} if schema is None else {
        "schema": {"$ref": f"#/components/schemas/{schema}"}
    }  # fmt: skip
    return {"description": description, "content": {"application/json": media}}
