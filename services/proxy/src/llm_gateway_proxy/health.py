"""Probes: `/live` (the process serves), `/ready` (it should get traffic), on both listeners;
`/health` (details: queue sizes, targets cooling down, requests in flight) and `/metrics`
(Prometheus, metrics.py) on the management listener only."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llm_gateway_proxy.exchange import REQUEST_ID_HEADER, new_request_id
from llm_gateway_proxy.gateway import Gateway
from llm_gateway_proxy.inflight import InFlight


def _answer(payload: dict[str, object], status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers={REQUEST_ID_HEADER: new_request_id()})


async def live(request: Request) -> JSONResponse:
    return _answer({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    """Not ready once shutdown began. Redis being down does not make the proxy unready: metering
    is fail-open and events wait in the queue, so requests are still served in full."""
    gateway: Gateway = request.state.gateway
    if gateway.stopping.is_set():
        return _answer({"status": "shutting_down"}, 503)
    return _answer({"status": "ready"})


async def health(request: Request) -> JSONResponse:
    gateway: Gateway = request.state.gateway
    in_flight: InFlight = request.state.in_flight
    publisher = gateway.publisher
    gate = gateway.access.redis_gate
    return _answer(
        {
            "status": "shutting_down" if gateway.stopping.is_set() else "ok",
            "events": {
                "redis_healthy": publisher.redis_healthy,
                "queued": publisher.queued,
                "written": publisher.written,
                "dropped": publisher.dropped,
            },
            "charges": {
                "pending": publisher.pending_charges,
                "batches_written_before": publisher.batches_written_before,
            },
            "request_redis": {
                "breaker": gate.state,
                "opened": gate.opened,
                "failures": gate.failures,
                "rejected": gate.rejected,
            },
            "cooldowns": gateway.router.cooldowns.snapshot(),
            "in_flight": {
                "current": in_flight.current,
                "limit": in_flight.limit,
                "refused": in_flight.refused,
            },
        }
    )


async def metrics(request: Request) -> Response:
    gateway: Gateway = request.state.gateway
    return Response(gateway.metrics.render(), headers={"content-type": CONTENT_TYPE_LATEST})
