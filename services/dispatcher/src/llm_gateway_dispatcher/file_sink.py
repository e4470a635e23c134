"""JSONL: one event per line, its own JSON, appended to a file.

Each round is written, flushed and fsynced before the batch is acknowledged, so an acknowledged
event is on disk. After a crash, redelivery can repeat lines of the batch that was in hand:
readers that need exactly-once deduplicate on `event_id`. A file that cannot be opened or
written (disk full, volume gone) is retried like any sink that is unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import BinaryIO

import structlog

from llm_gateway_common.events import UsageEvent, encode_event
from llm_gateway_dispatcher.outcomes import ACCEPTED, Outcome, unavailable

log = structlog.get_logger("llm_gateway.dispatcher")


class FileSink:
    name = "file"

    def __init__(self, path: str) -> None:
        self._path = path
        self._file: BinaryIO | None = None

    async def start(self) -> None:
        try:
            await self._open()
        except OSError as exc:
            log.warning("file_unavailable_at_start", path=self._path, error=_describe(exc))

    async def close(self) -> None:
        if self._file is not None:
            await asyncio.to_thread(self._file.close)

    async def ready(self) -> bool:
        return self._file is not None and not self._file.closed

    async def send(self, events: Sequence[UsageEvent]) -> list[Outcome]:
        data = b"".join(encode_event(event) + b"\n" for event in events)
        try:
            file = await self._open()
            await asyncio.to_thread(_append_durably, file, data)
        except OSError as exc:
            self._drop_file()  # reopened next round: a failed write leaves its buffer unknown
            return [unavailable(f"file: cannot write {self._path}: {_describe(exc)}")] * len(events)
        return [ACCEPTED] * len(events)

    def _drop_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            # the unwritten buffer is dropped on purpose: the batch is resent whole
            with contextlib.suppress(OSError):
                file.close()

    async def _open(self) -> BinaryIO:
        if self._file is None or self._file.closed:
            self._file = await asyncio.to_thread(open, self._path, "ab")
        return self._file


def _append_durably(file: BinaryIO, data: bytes) -> None:
    file.write(data)
    file.flush()
    os.fsync(file.fileno())


def _describe(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
