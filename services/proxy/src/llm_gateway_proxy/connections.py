"""Client connections as Hypercorn serves them, with two fixes Hypercorn (0.18) does not have.

1. A connection the client closed while idle is closed at once. Hypercorn notices the EOF, but
   its keep-alive timer task keeps the connection's task group, and so the socket, open until the
   timer fires (KEEP_ALIVE 75 s): an SDK closing its pool left every socket in CLOSE-WAIT, one
   file descriptor and its buffers each, for 75 s.
2. A request's headers must arrive within `header_timeout` of its first bytes. Hypercorn bounds
   them only by the keep-alive timer, and its `read_timeout` bounds each read (so a trickle is
   never cut off) and also closes idle keep-alive connections and long responses: unusable here.
   The body is bounded in the application (`bodyread.py`), where a 408 can be answered.

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
from hypercorn.asyncio.worker_context import AsyncioSingleTask
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


class GatewayTCPServer(TCPServer):
    """One client connection: Hypercorn's, closed at the client's EOF when idle, with a header
    deadline. Idle means no request in progress: Hypercorn reports it with `Updated` events."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._idle = True  # Hypercorn starts every connection idle (its keep-alive timer runs)
        self._at_eof = False
        self._header_timer = AsyncioSingleTask()
        self._header_timer_running = False

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):
            self._idle = event.idle
            if not event.idle and self._header_timer_running:
                await self._stop_header_timer()
            elif event.idle and self._at_eof:
                # The client sent EOF during the request; the answer is out: nothing can follow.
                await self._close()
                return
        await super().protocol_send(event)

    async def _read_data(self) -> None:
        while not self.reader.at_eof():
            try:
                data = await asyncio.wait_for(self.reader.read(MAX_RECV), self.config.read_timeout)
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
