"""The management API (mounted at `/manage`) and the key operations it shares with the CLI.

Every route needs `Authorization: Bearer <MANAGEMENT_TOKEN>`, compared in constant time; without
a configured token the whole API answers 404, as if it did not exist. A new or rotated key is in
exactly one answer; Redis and the logs only ever see its hash and its id.

    ManagementAuth (404 disabled, 401)  ->  route  ->  parse body (400/413)
        ->  key operation (404 unknown id; 503 Redis)  ->  JSON
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Awaitable, Mapping
from functools import cache
from typing import Protocol, TypeVar

import msgspec
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_gateway_proxy.errors import (
    AuthenticationFailed,
    GatewayError,
    HTTPStatusError,
    InvalidJSON,
    InvalidRequest,
    MethodNotAllowed,
    MissingParameter,
    NotFound,
    RequestTooLarge,
)
from llm_gateway_proxy.exchange import REQUEST_ID_HEADER, new_request_id
from llm_gateway_proxy.keys import KeyRecord, Limits, display_form, hash_key, new_key, new_key_id
from llm_gateway_proxy.keystore import KeyStore, KeyStoreConflict
from llm_gateway_proxy.manage_models import (
    CreateKey,
    KeyUsage,
    LimitsSpec,
    Tenant,
    TenantLimits,
    TenantUsage,
    UpdateKey,
    UsageTotals,
    openapi_document,
)
from llm_gateway_proxy.ratelimit import RateLimiter
from llm_gateway_proxy.redisgate import RedisUnavailable

log = structlog.get_logger("llm_gateway.proxy")

MAX_BODY_BYTES = 64 * 1024
T = TypeVar("T")


class InvalidManagementToken(AuthenticationFailed):
    code = "invalid_management_token"


class KeyNotFound(NotFound):
    code = "key_not_found"


class TenantNotFound(NotFound):
    code = "tenant_not_found"


class KeyChanged(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class StoreUnavailable(GatewayError):
    status = 503
    code = "store_unavailable"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


# --- key operations, shared with the CLI ------------------------------------------------------


async def create_key(store: KeyStore, spec: CreateKey) -> tuple[KeyRecord, str]:
    """A new key and its record (saved); the key itself is returned, never stored."""
    key = new_key()
    record = KeyRecord(
        id=new_key_id(),
        key_hash=hash_key(key),
        name=spec.name,
        tenant=spec.tenant,
        models=spec.models,
        expires_at=spec.expires_at,
        limits=spec.limits.applied_to(Limits()),
        metadata=spec.metadata,
        created_at=time.time(),
        display=display_form(key),
    )
    await store.save(record)
    return record, key


async def get_key(store: KeyStore, key_id: str) -> KeyRecord:
    record = await store.get(key_id)
    if record is None:
        raise KeyNotFound(f"No key with id '{key_id}'.", param="key_id")
    return record


async def list_keys(store: KeyStore, tenant: str | None = None) -> list[KeyRecord]:
    records = await store.list()
    return records if tenant is None else [r for r in records if r.tenant == tenant]


async def update_key(store: KeyStore, key_id: str, patch: UpdateKey) -> KeyRecord:
    record = await get_key(store, key_id)
    changes = {name: value for name, value in msgspec.structs.asdict(patch).items()
               if value is not msgspec.UNSET}  # fmt: skip
    if isinstance(patch.limits, LimitsSpec):
        changes["limits"] = patch.limits.applied_to(record.limits)
    updated = msgspec.structs.replace(record, **changes)
    if updated == record:
        return record  # nothing to write: the version stays
    return await _saved(store.save(updated, previous=record))


async def revoke_key(store: KeyStore, key_id: str) -> KeyRecord:
    record = await get_key(store, key_id)
    return await _saved(store.save(msgspec.structs.replace(record, active=False), previous=record))


async def rotate_key(store: KeyStore, key_id: str) -> tuple[KeyRecord, str]:
    """A new key for the same id and settings; the old key stops working."""
    record = await get_key(store, key_id)
    key = new_key()
    rotated = msgspec.structs.replace(record, key_hash=hash_key(key), display=display_form(key))
    return await _saved(store.replace_hash(record, rotated)), key


async def _saved(write: Awaitable[KeyRecord]) -> KeyRecord:
    try:
        return await write
    except KeyStoreConflict as exc:
        raise KeyChanged(
            "The key changed while this request was handled (a concurrent update, revoke or "
            "rotate); read it again and retry."
        ) from exc


async def key_usage(limiter: RateLimiter, record: KeyRecord) -> KeyUsage:
    usage = await limiter.usage(record)
    return msgspec.convert({**usage, "key_id": record.id, "tenant": record.tenant}, KeyUsage)


async def tenant_usage(store: KeyStore, limiter: RateLimiter, tenant: str) -> TenantUsage:
    records = await list_keys(store, tenant)
    if not records:
        raise TenantNotFound(f"No keys for tenant '{tenant}'.", param="tenant")
    keys = [await key_usage(limiter, record) for record in records]
    total = UsageTotals(
        requests_this_minute=sum(k.requests_this_minute for k in keys),
        tokens_this_minute=sum(k.tokens_this_minute for k in keys),
        budget_tokens_used=sum(k.budget_tokens_used for k in keys),
        spend_usd=sum(k.spend_nano_usd for k in keys) / 1e9,
        spend_nano_usd=sum(k.spend_nano_usd for k in keys),
    )
    return TenantUsage(tenant=tenant, total=total, keys=keys)


def parse_body(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """Decode a request body; an InvalidRequest naming the offending `param` if it is wrong."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise InvalidJSON(f"We could not parse the JSON body of your request: {exc}") from exc


_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<field>[^`]+)`")
_AT = re.compile(r" - at (?:`key` in )?`\$(?P<at>[^`]*)`$")


def _invalid(message: str) -> InvalidRequest:
    at = _AT.search(message)
    what = message[: at.start()] if at else message
    # msgspec names a dict's value `[...]`, not by its key: the dict is the closest we can say
    param = at["at"].replace("[...]", "").lstrip(".") if at else ""
    field = _FIELD.match(message)
    if field:
        param = f"{param}.{field['field']}" if param else field["field"]
    error = MissingParameter if message.startswith("Object missing") else InvalidRequest
    if not param:
        return error(f"Invalid request body: {what}.")
    return error(f"Invalid value for '{param}': {what}.", param=param)


# --- the HTTP API ------------------------------------------------------------------------------


class _Settings(Protocol):
    @property
    def management_token(self) -> str | None: ...


class Managed(Protocol):
    """What the management API needs from `request.state.gateway`."""

    @property
    def settings(self) -> _Settings: ...
    @property
    def keys(self) -> KeyStore: ...
    @property
    def limiter(self) -> RateLimiter: ...


def create_management_app() -> Starlette:
    """The management API; mount it (`Mount("/manage", app=create_management_app())`) in an app
    whose lifespan state holds the `gateway`."""
    return Starlette(
        routes=[
            Route("/keys", create, methods=["POST"]),
            Route("/keys", list_, methods=["GET"]),
            Route("/keys/{key_id}", get, methods=["GET"]),
            Route("/keys/{key_id}", update, methods=["PATCH"]),
            Route("/keys/{key_id}/revoke", revoke, methods=["POST"]),
            Route("/keys/{key_id}/rotate", rotate, methods=["POST"]),
            Route("/usage/keys/{key_id}", usage_of_key, methods=["GET"]),
            Route("/usage/tenants/{tenant:path}", usage_of_tenant, methods=["GET"]),
            Route("/tenants/{tenant:path}/limits", get_tenant_limits, methods=["GET"]),
            Route("/tenants/{tenant:path}/limits", set_tenant_limits, methods=["PUT"]),
            Route("/tenants/{tenant:path}/limits", remove_tenant_limits, methods=["DELETE"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        middleware=[Middleware(ManagementAuth)],
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            RedisUnavailable: _store_error,
            Exception: _internal_error,
        },
    )


async def create(request: Request) -> Response:
    spec = parse_body(await _read_body(request), _decoder(CreateKey))
    record, key = await create_key(_gateway(request).keys, spec)
    log.info("key_created", key_id=record.id, tenant=record.tenant)
    return _json({**record.public(), "key": key}, 201)


async def list_(request: Request) -> Response:
    tenant = request.query_params.get("tenant")
    if tenant is not None:
        tenant = _valid_tenant(tenant)
    records = await list_keys(_gateway(request).keys, tenant)
    return _json({"object": "list", "data": [record.public() for record in records]})


async def get(request: Request) -> Response:
    return _json((await get_key(_gateway(request).keys, request.path_params["key_id"])).public())


async def update(request: Request) -> Response:
    patch = parse_body(await _read_body(request), _decoder(UpdateKey))
    record = await update_key(_gateway(request).keys, request.path_params["key_id"], patch)
    log.info("key_updated", key_id=record.id, tenant=record.tenant, active=record.active)
    return _json(record.public())


async def revoke(request: Request) -> Response:
    record = await revoke_key(_gateway(request).keys, request.path_params["key_id"])
    log.info("key_revoked", key_id=record.id, tenant=record.tenant)
    return _json(record.public())


async def rotate(request: Request) -> Response:
    record, key = await rotate_key(_gateway(request).keys, request.path_params["key_id"])
    log.info("key_rotated", key_id=record.id, tenant=record.tenant)
    return _json({**record.public(), "key": key})


async def usage_of_key(request: Request) -> Response:
    gateway = _gateway(request)
    record = await get_key(gateway.keys, request.path_params["key_id"])
    return _json(await key_usage(gateway.limiter, record))


async def usage_of_tenant(request: Request) -> Response:
    gateway = _gateway(request)
    tenant = _valid_tenant(request.path_params["tenant"])
    return _json(await tenant_usage(gateway.keys, gateway.limiter, tenant))


async def get_tenant_limits(request: Request) -> Response:
    tenant = _valid_tenant(request.path_params["tenant"])
    limits = await _gateway(request).keys.tenant_limits_now(tenant)
    return _json(TenantLimits(tenant=tenant, set=limits is not None, limits=limits or Limits()))


async def set_tenant_limits(request: Request) -> Response:
    tenant = _valid_tenant(request.path_params["tenant"])
    spec = parse_body(await _read_body(request), _decoder(LimitsSpec))
    limits = spec.applied_to(Limits())
    await _gateway(request).keys.set_tenant_limits(tenant, limits)
    log.info("tenant_limits_set", tenant=tenant)
    return _json(TenantLimits(tenant=tenant, set=True, limits=limits))


async def remove_tenant_limits(request: Request) -> Response:
    tenant = _valid_tenant(request.path_params["tenant"])
    await _gateway(request).keys.set_tenant_limits(tenant, None)
    log.info("tenant_limits_removed", tenant=tenant)
    return _json(TenantLimits(tenant=tenant, set=False, limits=Limits()))


async def openapi(request: Request) -> Response:
    return _json_bytes(_openapi_bytes(request.scope.get("root_path", "") or "/"))


def _gateway(request: Request) -> Managed:
    gateway: Managed = request.state.gateway
    return gateway


def _valid_tenant(value: str) -> str:
    try:
        return msgspec.convert(value, Tenant)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid value for 'tenant': {exc}.", param="tenant") from exc


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _too_large()
    return bytes(body)


def _too_large() -> RequestTooLarge:
    return RequestTooLarge(f"Request body is larger than {MAX_BODY_BYTES} bytes.")


@cache
def _decoder(kind: type[T]) -> msgspec.json.Decoder[T]:
    return msgspec.json.Decoder(kind)


@cache
def _openapi_bytes(server_url: str) -> bytes:
    return msgspec.json.encode(openapi_document(server_url))


def _json(payload: object, status: int = 200) -> Response:
    return _json_bytes(msgspec.json.encode(payload), status)


def _json_bytes(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json",
                    headers={REQUEST_ID_HEADER: new_request_id()})  # fmt: skip


# --- authentication and errors -------------------------------------------------------------


class ManagementAuth:
    """Answers 404 for everything when no management token is configured, 401 unless the
    request carries it; the token is compared in constant time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gateway: Managed = scope["state"]["gateway"]
        token = gateway.settings.management_token
        error: GatewayError | None = None
        if token is None:
            error = NotFound(f"Unknown request URL: {scope['method']} {scope['path']}.")
        elif not _bearer_matches(scope["headers"], token.encode()):
            log.warning("management_auth_failed", method=scope["method"], path=scope["path"])
            error = InvalidManagementToken(
                "Missing or incorrect management token. Send it as "
                "'Authorization: Bearer <MANAGEMENT_TOKEN>'."
            )
        if error is None:
            await self.app(scope, receive, send)
            return
        await _render(error)(scope, receive, send)


def _bearer_matches(headers: list[tuple[bytes, bytes]], token: bytes) -> bool:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, presented = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return hmac.compare_digest(presented.strip(), token)
    return False


def _render(error: GatewayError, extra: Mapping[str, str] | None = None) -> Response:
    headers = {**(extra or {}), REQUEST_ID_HEADER: new_request_id()}
    headers.update((name.decode(), value.decode()) for name, value in error.headers())
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Response(error.body(), status_code=error.status, media_type="application/json",
                    headers=headers)  # fmt: skip


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return _render(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's HTTPExceptions, whatever their status, as OpenAI errors with that status (and
    the headers they carry, such as `Allow` on a 405)."""
    if not isinstance(exc, HTTPException):
        return await _internal_error(request, exc)
    error: GatewayError
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        error = MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}.")
        headers["Allow"] = _allowed_methods(request)
    elif exc.status_code == 404:
        error = NotFound(f"Unknown request URL: {request.method} {request.url.path}.")
    else:
        error = HTTPStatusError(str(exc.detail or "") or "Request failed.", status=exc.status_code)
    return _render(error, headers)


def _allowed_methods(request: Request) -> str:
    """Every method the path allows: one Route per method, so Starlette's own `Allow` names
    only the first route that matched the path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return ", ".join(sorted(methods))


async def _store_error(request: Request, exc: Exception) -> Response:
    log.error("management_store_unavailable", reason=str(exc))
    return _render(StoreUnavailable("The key store (Redis) did not answer; try again."))


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _render(GatewayError("The gateway failed to handle the request."))
