"""Running a fake's aiohttp app on 127.0.0.1 in a thread of its own, so sync and async test code
(and services in other processes) can reach it while a test inspects and steers its state."""

from __future__ import annotations

import asyncio
import threading
from typing import Generic, Protocol, Self, TypeVar

from aiohttp import web


class ServesApp(Protocol):
    def app(self) -> web.Application: ...


FakeT = TypeVar("FakeT", bound=ServesApp)


class ThreadedServer(Generic[FakeT]):
    """`ThreadedServer(FakeLunary()).start()`; `.fake` is the state, `.base_url` the address."""

    def __init__(self, fake: FakeT, port: int = 0) -> None:
        self.fake = fake
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.fake.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port, backlog=2048)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
