"""The floor: the thinnest pass-through the gateway's own stack allows.

Starlette on Hypercorn (uvloop, the gateway's Hypercorn settings) and one pooled aiohttp session.
`POST /v1/{path}` goes to the upstream as it came; the answer comes back streamed through when it
is `text/event-stream`, else whole. No auth, no validation, no metering, no logging: whatever the
gateway costs above this is the price of what it does.

Run: `LISTEN_ADDR=127.0.0.1:8090 UPSTREAM_OPENAI_BASE_URL=http://127.0.0.1:9100/v1 \\
python bench/floor.py`
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

# Hop-by-hop headers, and what each side sets itself (framing; aiohttp decompresses).
_NOT_RELAYED = frozenset(
    {
        "host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
        "transfer-encoding", "content-length", "content-encoding", "accept-encoding",
        "date", "server",
    }
)  # fmt: skip


def create_app(upstream_base_url: str) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, aiohttp.ClientSession]]:
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=30)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            yield {"session": session}

    async def forward(request: Request) -> Response:
        session: aiohttp.ClientSession = request.state.session
        url = f"{upstream_base_url}/{request.path_params['path']}"
        headers = {k: v for k, v in request.headers.items() if k not in _NOT_RELAYED}
        upstream = await session.post(url, data=await request.body(), headers=headers)
        relayed = {k: v for k, v in upstream.headers.items() if k.lower() not in _NOT_RELAYED}
        if upstream.content_type == "text/event-stream":
            return StreamingResponse(_chunks(upstream), upstream.status, relayed)
        return Response(await upstream.read(), upstream.status, relayed)

    routes = [Route("/v1/{path:path}", forward, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


async def _chunks(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
    finally:
        upstream.release()


async def run(app: Starlette, listen_addr: str) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await serve(app, hypercorn_config(listen_addr), shutdown_trigger=stopping.wait)  # type: ignore[arg-type]


def hypercorn_config(listen_addr: str) -> Config:
    """The gateway's Hypercorn settings (services/proxy/.../main.py), with its default grace."""
    config = Config()
    config.bind = [listen_addr]
    config.graceful_timeout = 30.0
    config.backlog = 2048
    config.keep_alive_timeout = 75
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    return config


def main() -> None:
    listen_addr = os.environ.get("LISTEN_ADDR", "127.0.0.1:8090")
    upstream_base_url = os.environ["UPSTREAM_OPENAI_BASE_URL"].rstrip("/")
    uvloop.run(run(create_app(upstream_base_url), listen_addr))


if __name__ == "__main__":
    main()
