"""Client connections as Hypercorn serves them, with two fixes Hypercorn (0.18) does not have,
and a cheaper keep-alive timer.

1. A connection the client closed while idle is closed at once. Hypercorn notices the EOF, but
   its keep-alive timer task keeps the connection's task group, and so the socket, open until the
   timer fires (KEEP_ALIVE 75 s): an SDK closing its pool left every socket in CLOSE-WAIT, one
   file descriptor and its buffers each, for 75 s.
2. A request's headers must arrive within `header_timeout` of its first bytes. Hypercorn bounds
   them only by the keep-alive timer, and its `read_timeout` bounds each read (so a trickle is
   never cut off) and also closes idle keep-alive connections and long responses: unusable here.
   The body is bounded in the application (`bodyread.py`), where a 408 can be answered.
3. The keep-alive timer is a timer (`call_later`), not a task. Hypercorn starts a task (and
   `wait_for` another) every time a connection goes idle and cancels both when the next request
   arrives: two tasks, two cancellations and two lock round trips per keep-alive request, more
   CPU than the gateway's path check, key check and metrics together. The worker's end still
   closes idle connections at once: one task per worker watches for it (`_IdleConnections`).

`GatewayTCPServer` replaces Hypercorn's `TCPServer` for the process (`install()`, at start-up):
Hypercorn builds one per connection from that module-level name and has no setting for it.
"""

from __future__ import annotations

import asyncio
import time
from wsgiref.handlers import format_date_time

import hypercorn.asyncio.run as hypercorn_run
import structlog
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.asyncio.worker_context import AsyncioSingleTask, WorkerContext
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated

log = structlog.get_logger("llm_gateway.proxy")


class GatewayConfig(Config):
    """Hypercorn's settings plus the header deadline `GatewayTCPServer` reads, and the `Date`
    of every response formatted once a second rather than once a response."""

    header_timeout: float = 60.0
    _date_second = -1
    _date: tuple[bytes, bytes] = (b"date", b"")

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        if not self.include_date_header or self.alt_svc_headers or self._quic_addresses:
            return super().response_headers(protocol)  # what this does not handle: as it is
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = (b"date", format_date_time(now).encode("ascii"))
        headers = [self._date]
        if self.include_server_header:
            headers.append((b"server", f"hypercorn-{protocol}".encode("ascii")))
        return headers


class _IdleConnections:
    """A worker's connections that are idle between requests; closed at once when the worker
    terminates (what Hypercorn's per-connection timer task also waited for). One per worker,
    kept on its `WorkerContext`, with the one task that waits for the end."""

    def __init__(self, context: WorkerContext) -> None:
        self.servers: set[GatewayTCPServer] = set()
        self._watch = asyncio.get_running_loop().create_task(self._close_at_end(context))

    @staticmethod
    def of(context: WorkerContext) -> _IdleConnections:
        idle: _IdleConnections | None = getattr(context, "_llm_gateway_idle", None)
        if idle is None:
            idle = _IdleConnections(context)
            context._llm_gateway_idle = idle  # type: ignore[attr-defined]
        return idle

    async def _close_at_end(self, context: WorkerContext) -> None:
        await context.terminated.wait()
        for server in list(self.servers):
            server.idle_expired()


class GatewayTCPServer(TCPServer):
    """One client connection: Hypercorn's, closed at the client's EOF when idle, with a header
    deadline. Idle means no request in progress: Hypercorn reports it with `Updated` events."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._idle = True  # Hypercorn starts every connection idle (its keep-alive timer runs)
        self._at_eof = False
        self._header_timer = AsyncioSingleTask()
        self._header_timer_running = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_set = _IdleConnections.of(self.context)
        self._closing: asyncio.Task[None] | None = None

    async def protocol_send(self, event: Event) -> None:
        if not isinstance(event, Updated):
            await super().protocol_send(event)
            return
        self._idle = event.idle
        if not event.idle:
            self._disarm_idle()
            if self._header_timer_running:
                await self._stop_header_timer()
        elif self._at_eof:
            # The client sent EOF during the request; the answer is out: nothing can follow.
            await self._close()
        else:
            self._arm_idle()

    def _arm_idle(self) -> None:
        if self.context.terminated.is_set():
            self.idle_expired()
            return
        self._idle_timer = self.loop.call_later(self.config.keep_alive_timeout, self.idle_expired)
        self._idle_set.servers.add(self)

    def _disarm_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._idle_set.servers.discard(self)

    def idle_expired(self) -> None:
        """Idle for the keep-alive timeout, or idle when the worker ends: close."""
        self._disarm_idle()
        if self._closing is None:
            self._closing = self.loop.create_task(self._initiate_server_close())

    async def _read_data(self) -> None:
        await self.idle_task.stop()  # Hypercorn's timer task for the first request: ours instead
        self._arm_idle()
        timeout = self.config.read_timeout
        while not self.reader.at_eof():
            try:
                if timeout is None:
                    data = await self.reader.read(MAX_RECV)
                else:
                    data = await asyncio.wait_for(self.reader.read(MAX_RECV), timeout)
            except (ConnectionError, OSError, TimeoutError):
                break  # (ssl.SSLError is an OSError)
            await self.protocol.handle(RawData(data))
            if data and self._idle and not self._header_timer_running:
                # Bytes of a request arrived, but not all its headers (or it would not be idle).
                self._header_timer_running = True
                await self._header_timer.restart(self._task_group, self._header_timeout)
        self._at_eof = True
        await self.protocol.handle(Closed())
        if self._idle:
            await self._close()

    async def _close(self) -> None:
        self._disarm_idle()
        try:
            await super()._close()
        finally:
            if self._header_timer_running:
                await self._stop_header_timer()

    async def _stop_header_timer(self) -> None:
        self._header_timer_running = False
        await self._header_timer.stop()

    async def _header_timeout(self) -> None:
        timeout = self.config.header_timeout if isinstance(self.config, GatewayConfig) else 60.0
        await asyncio.sleep(timeout)
        self._header_timer_running = False
        log.info("client_header_timeout", timeout_s=timeout)
        await asyncio.shield(self._initiate_server_close())


def install() -> None:
    """Make Hypercorn's `serve` use `GatewayTCPServer` for every connection in this process."""
    if hypercorn_run.TCPServer not in (TCPServer, GatewayTCPServer):  # type: ignore[attr-defined]
        raise RuntimeError("hypercorn.asyncio.run.TCPServer is not Hypercorn's own: cannot patch")
    hypercorn_run.TCPServer = GatewayTCPServer  # type: ignore[attr-defined]
