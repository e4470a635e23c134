"""`/live`, `/ready` and `/metrics` for the stream consumers (collector, dispatcher), on their
operations listener. Ready means Redis answers and the service's sink says it is usable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from llm_gateway_common.consumer_metrics import ConsumerMetrics


async def start_probes(
    host: str, port: int, redis: aioredis.Redis, sink_ready: Callable[[], Awaitable[bool]],
    timeout: float, *, metrics: ConsumerMetrics,
) -> web.AppRunner:  # fmt: skip
    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        redis_ok = await _answers(redis.ping(), timeout)
        sink_ok = await _answers(sink_ready(), timeout)
        status = 200 if redis_ok and sink_ok else 503
        return web.json_response({"redis": redis_ok, "sink": sink_ok}, status=status)

    async def scrape(_: web.Request) -> web.Response:
        body = await metrics.render(redis, timeout)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/live", live)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def _answers(check: Awaitable[object], timeout: float) -> bool:
    try:
        return bool(await asyncio.wait_for(check, timeout))
    except Exception:  # any failure to answer is "not ready"
        return False
