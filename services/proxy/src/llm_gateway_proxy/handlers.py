"""The proxy's request handler: one ASGI callable for every `/v1/*` request.

Every request reads top to bottom: resolve the path -> authenticate -> read the body ->
validate -> authorize, route and admit -> forward (router.py: attempts, retries, fallbacks) ->
relay (relay.py) -> meter.
Whatever happens (bad input, upstream failure, client disconnect), the request produces exactly
one usage event and one log line, in `__call__`'s `finally`, which also ends the request's span
when tracing is on (tracing.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from llm_gateway_proxy.apis import (
    COUNT_TOKENS,
    MAX_MODEL_NAME,
    Api,
    ParsedRequest,
    client_asked_for_usage,
    passthrough_model,
    wants_stream,
)
from llm_gateway_proxy.cache import Lookup, ResponseCache, replay
from llm_gateway_proxy.downstream import ClientDisconnected, Downstream, Receive, Send
from llm_gateway_proxy.errors import (
    GatewayError,
    InvalidRequest,
    MissingParameter,
    ModelNotAllowed,
    ModelNotFound,
    NotFound,
    UnsupportedByProvider,
    anthropic_client,
)
from llm_gateway_proxy.exchange import Exchange, new_request_id
from llm_gateway_proxy.gateway import Gateway
from llm_gateway_proxy.keys import KeyRecord
from llm_gateway_proxy.modellist import MODELS_PATHS, anthropic_models, listing, model_object
from llm_gateway_proxy.paths import PathTable, Target
from llm_gateway_proxy.relay import relay
from llm_gateway_proxy.routeplan import Plan
from llm_gateway_proxy.router import Call
from llm_gateway_proxy.tokencount import PROCESS_COUNTER
from llm_gateway_proxy.usage import estimate_message_tokens

Scope = MutableMapping[str, Any]

_CLIENT_CLOSED = 499  # nginx's "client closed request"; no response status was sent
_MAX_ENDPOINT = 256  # an unknown path is recorded cut to this length
_TOKENIZER_WAIT = 10.0  # seconds a first local token count waits for its tokenizer to load

log = structlog.get_logger("llm_gateway.proxy")


class ProxyHandler:
    """Serves every `/v1/*` request: the path (already canonical, `paths.py`) picks an API we
    meter or an allowed pass-through; anything else is 404 once the caller is authenticated."""

    def __init__(self, paths: PathTable) -> None:
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        downstream = Downstream(receive, send)
        try:
            await self._handle(scope, downstream)
        except Exception:
            # What the request's own handling let through (it catches what it can; this was
            # Starlette's ServerErrorMiddleware's job before `/v1` bypassed Starlette, app.py).
            log.exception("handler_failed", path=scope["path"][:_MAX_ENDPOINT])
            if downstream.started:
                raise
            err = GatewayError("The gateway failed to handle the request.")
            await downstream.error(err, [(b"x-llm-request-id", new_request_id().encode())])

    async def _handle(self, scope: Scope, downstream: Downstream) -> None:
        gateway: Gateway = scope["state"]["gateway"]
        target = self.paths.resolve(scope["method"], scope["path"])
        endpoint = target.endpoint if target is not None else scope["path"][:_MAX_ENDPOINT]
        exchange = Exchange(
            gateway.ids.pair(), scope["headers"], endpoint, scope["method"],
            gateway.router.planner.default_provider,
            metered=target is not None and target.api is not None and target.api.metered,
        )  # fmt: skip
        if gateway.tracing is not None:
            exchange.trace = gateway.tracing.request(scope["headers"], scope["method"], target)
            exchange.trace_id = exchange.trace.trace_id
        if target is not None and target.api is not None:  # Anthropic's errors for its clients
            downstream.anthropic = target.api.face == "anthropic"
        else:
            downstream.anthropic = anthropic_client(scope["path"], scope["headers"])
        try:
            await self._serve(gateway, scope, target, exchange, downstream)
        except asyncio.CancelledError:
            if not downstream.gone:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            exchange.fail("client_disconnected", "client_disconnected")
        finally:
            downstream.stop_watching()
            if exchange.outcome == "client_disconnected" and not downstream.started:
                exchange.status = _CLIENT_CLOSED
            lookup = downstream.cache
            stored = lookup is not None and _storable(lookup, exchange, downstream)
            if stored:
                exchange.cache_status = "stored"
            event = gateway.record(exchange)
            if lookup is not None and gateway.cache is not None:  # stored after the response
                gateway.cache.settle(lookup, ResponseCache.entry(lookup, event) if stored else None)
            if exchange.trace is not None:
                exchange.trace.finish(event)

    async def _serve(
        self,
        gateway: Gateway,
        scope: Scope,
        target: Target | None,
        exchange: Exchange,
        downstream: Downstream,
    ) -> None:
        id_header = [(b"x-llm-request-id", exchange.request_id.encode())]
        try:
            key = await gateway.access.authenticate(scope["headers"])
            if key is not None:
                exchange.key = key
                exchange.tenant = gateway.access.tenant(key, exchange.requested_tenant)
            if target is None:
                raise NotFound(f"Unknown request URL: {scope['method']} {exchange.endpoint}.")
            if self._lists_models(gateway, scope, target, downstream) and (
                await self._list_models(gateway, scope, target, exchange, downstream, key=key)
            ):
                return
            call, plan = await self._admit(gateway, scope, target, exchange, downstream, key=key)
            if plan is None:  # a token count no target of the model can make: estimated here
                await _count_tokens_here(call, exchange, downstream, id_header)
                return
            lookup = await _look_up(gateway, scope, target, exchange, downstream, call=call,
                                    key=key)  # fmt: skip
            if lookup is not None and lookup.entry is not None:  # a hit: no provider called
                await replay(lookup.entry, exchange, downstream, id_header,
                             include_usage=call.include_usage)  # fmt: skip
                return
            downstream.watch_disconnect()
            answer = await gateway.router.forward(plan, call, exchange)
            exchange.upstream_called = True
            await relay(answer, target.api, exchange, downstream,
                        headers=id_header + answer.headers,
                        capture_bytes=gateway.settings.metering_capture_bytes)  # fmt: skip
        except GatewayError as err:
            await _answer_error(err, exchange, downstream, id_header)
        except ClientDisconnected:
            exchange.fail("client_disconnected", "client_disconnected")
        except Exception as exc:
            log.exception("handler_failed", request_id=exchange.request_id)
            internal = GatewayError(f"The gateway failed the request ({type(exc).__name__}).")
            await _answer_error(internal, exchange, downstream, id_header)

    async def _admit(
        self,
        gateway: Gateway,
        scope: Scope,
        target: Target,
        exchange: Exchange,
        downstream: Downstream,
        *,
        key: KeyRecord | None,
    ) -> tuple[Call, Plan | None]:
        """Read and check the request, route it, admit it; returns what the router sends (no
        plan: a token count the gateway estimates itself). The body lives only as long as the
        request (the exchange keeps what metering needs)."""
        settings = gateway.settings
        body = await downstream.read_body(settings.max_request_body_bytes, scope["headers"])
        exchange.keep_request(body, settings.metering_capture_bytes)
        request = None
        if target.api is not None:
            request = _parse(target.api, body, exchange)
        else:
            exchange.model = passthrough_model(body, _header(scope["headers"], b"content-type"))
        if key is not None:
            gateway.access.authorize_model(key, exchange.model)
            if exchange.model is None and target.runs_a_model(scope["method"]):
                _require_named_model(key)
        plan = _plan(gateway, target, exchange.model)  # 404 for an unknown model
        if key is not None:
            exchange.tenant_limits = await gateway.access.admit(key)
        call = Call(
            method=scope["method"], forward_path=target.forward_path,
            query=scope["query_string"], headers=scope["headers"], body=body, api=target.api,
            request=request, stream=exchange.stream,
            include_usage=request is not None and client_asked_for_usage(request),
        )  # fmt: skip
        return call, plan

    @staticmethod
    def _lists_models(
        gateway: Gateway, scope: Scope, target: Target, downstream: Downstream
    ) -> bool:
        """Whether the gateway answers a models request itself: with a model table, or for an
        Anthropic client (which needs Anthropic's list shape, not the provider's)."""
        planner = gateway.router.planner
        if planner.lists_models(scope["method"], target.pattern):
            return True
        return downstream.anthropic and scope["method"] == "GET" and target.pattern in MODELS_PATHS

    async def _list_models(
        self,
        gateway: Gateway,
        scope: Scope,
        target: Target,
        exchange: Exchange,
        downstream: Downstream,
        *,
        key: KeyRecord | None,
    ) -> bool:
        """`GET /v1/models[/{model}]` answered from the model table (modellist.py); False for
        a name only a pattern route matches, which the default provider answers."""
        router = gateway.router
        if key is not None:
            exchange.tenant_limits = await gateway.access.admit(key)
        allowed = key.allows_model if key is not None else _anything
        if target.pattern == "/v1/models":
            provider_list = None
            if router.table.has_patterns and router.planner.has_default:
                provider_list = await router.fetch(_call(scope, target), exchange)
            body = listing(router.table.public_names, provider_list, allowed,
                           lambda name: router.table.route(name) is not None)  # fmt: skip
        else:
            exchange.model = model = scope["path"].rsplit("/", 1)[1]
            known = model in router.table.public_names
            routed = allowed(model) and router.table.route(model) is not None
            if not known and routed and router.planner.has_default and not downstream.anthropic:
                return False  # a pattern's name: the provider knows it, if anyone does
            if not (known and allowed(model)) and not (routed and downstream.anthropic):
                raise ModelNotFound(f"The model `{model}` does not exist or you do not have "
                                    "access to it.", param="model")  # fmt: skip
            body = orjson.dumps(model_object(model))
        if downstream.anthropic:
            body = anthropic_models(body)
        exchange.status = 200
        exchange.mark_first_byte()
        await downstream.json(200, body, [(b"x-llm-request-id", exchange.request_id.encode())])
        return True


def _anything(model: str) -> bool:
    return True


async def _look_up(
    gateway: Gateway,
    scope: Scope,
    target: Target,
    exchange: Exchange,
    downstream: Downstream,
    *,
    call: Call,
    key: KeyRecord | None,
) -> Lookup | None:
    """The request's use of the response cache (cache.py), looked up; None: no cache for it."""
    cache = gateway.cache
    if cache is None:
        return None
    tenant = exchange.tenant_limits
    lookup = cache.plan(
        target.api, exchange.model, call.body, tenant=exchange.tenant,
        key_ttl=None if key is None else key.limits.cache_ttl,
        tenant_ttl=None if tenant is None else tenant.cache_ttl, headers=scope["headers"],
    )  # fmt: skip
    if lookup is None:
        return None
    downstream.cache = lookup
    if lookup.status != "bypass":
        await cache.lookup(lookup, include_usage=call.include_usage)
    exchange.cache_status = lookup.status
    return lookup


def _storable(lookup: Lookup, exchange: Exchange, downstream: Downstream) -> bool:
    """Whether a miss's answer may be stored (ResponseCache.storable)."""
    succeeded = (
        exchange.outcome == "ok" and exchange.status == 200 and exchange.usage is not None
        and not downstream.gone and exchange.cache_status == "miss"
    )  # fmt: skip
    return ResponseCache.storable(lookup, succeeded=succeeded)


def _call(scope: Scope, target: Target) -> Call:
    """A bodiless pass-through request, as the client sent it."""
    return Call(
        method=scope["method"], forward_path=target.forward_path, query=scope["query_string"],
        headers=scope["headers"], body=b"", api=None, request=None, stream=False,
        include_usage=False,
    )  # fmt: skip


def _plan(gateway: Gateway, target: Target, model: str | None) -> Plan | None:
    """The request's plan; None for a token count whose model's own targets cannot count
    (they are not Anthropic's): the gateway estimates it, for that model, not a fallback."""
    planner = gateway.router.planner
    if target.api is not COUNT_TOKENS:
        return planner.plan(target.api, model)
    try:
        plan = planner.plan(target.api, model)
    except UnsupportedByProvider:
        return None
    return plan if plan.steps[0].name == model else None


async def _count_tokens_here(
    call: Call, exchange: Exchange, downstream: Downstream, id_header: list[tuple[bytes, bytes]]
) -> None:
    """`{"input_tokens": N}` counted with the model family's tokenizer (loaded for it, in a
    thread, on the first count), marked `x-llm-token-count: estimated`."""
    if not PROCESS_COUNTER.wait_loaded(exchange.model, 0):
        await asyncio.to_thread(PROCESS_COUNTER.wait_loaded, exchange.model, _TOKENIZER_WAIT)
    tokens = estimate_message_tokens(call.body, exchange.model)
    exchange.status = 200
    exchange.mark_first_byte()
    await downstream.json(200, orjson.dumps({"input_tokens": tokens}),
                          [*id_header, (b"x-llm-token-count", b"estimated")])  # fmt: skip


def _parse(api: Api, body: bytes, exchange: Exchange) -> ParsedRequest:
    """Validate a metered API's body and note what the event needs from it."""
    request = api.parse(body)
    if not request.model:
        raise MissingParameter("Missing required parameter: 'model'.", param="model")
    if len(request.model) > MAX_MODEL_NAME:
        raise InvalidRequest(f"Invalid value for 'model': at most {MAX_MODEL_NAME} characters.",
                             param="model")  # fmt: skip
    exchange.model = request.model
    exchange.user = request.user
    exchange.stream = wants_stream(request)
    return request


async def _answer_error(
    err: GatewayError,
    exchange: Exchange,
    downstream: Downstream,
    id_header: list[tuple[bytes, bytes]],
) -> None:
    exchange.fail(err.outcome, err.code or err.type)
    exchange.status = exchange.status or err.status
    exchange.mark_first_byte()
    await downstream.error(err, id_header)


def _require_named_model(key: KeyRecord) -> None:
    """A key limited to some models may not run one the request does not name."""
    if "*" not in key.models:
        raise ModelNotAllowed(
            "This API key may only use named models; this request does not name one.",
            param="model",
        )


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""
