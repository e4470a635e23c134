"""Probes: `/live` (the process serves), `/ready` (it should get traffic), `/health` (details)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from llm_gateway_proxy.gateway import Gateway


async def live(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    """Not ready once shutdown began. Redis being down does not make the proxy unready: metering
    is fail-open and events wait in the queue, so requests are still served in full."""
    gateway: Gateway = request.state.gateway
    if gateway.stopping.is_set():
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    return JSONResponse({"status": "ready"})


async def health(request: Request) -> JSONResponse:
    gateway: Gateway = request.state.gateway
    publisher = gateway.publisher
    return JSONResponse(
        {
            "status": "shutting_down" if gateway.stopping.is_set() else "ok",
            "events": {
                "redis_healthy": publisher.redis_healthy,
                "queued": publisher.queued,
                "written": publisher.written,
                "dropped": publisher.dropped,
            },
        }
    )
