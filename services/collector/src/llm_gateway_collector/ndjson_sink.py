"""NDJSON: one event per line, its own field names, to stdout or appended to a file.

For a file, each batch is written, flushed and fsynced before it is acknowledged, so an
acknowledged event is on disk. Redelivery after a crash can repeat lines: readers that need
exactly-once deduplicate on `event_id` (the Postgres sink does it for them).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import BinaryIO

from llm_gateway_common.consumer import Delivery, RetryLater
from llm_gateway_common.events import encode_event


class NdjsonSink:
    def __init__(self, path: str) -> None:
        self._path = path
        self._file: BinaryIO | None = None

    async def start(self) -> None:
        if self._path == "-":
            self._file = sys.stdout.buffer
        else:
            self._file = await asyncio.to_thread(open, self._path, "ab")

    async def close(self) -> None:
        if self._file is not None and self._path != "-":
            self._file.close()

    async def ready(self) -> bool:
        return self._file is not None and not self._file.closed

    async def write(self, deliveries: list[Delivery]) -> dict[str, str]:
        data = b"".join(encode_event(d.event) + b"\n" for d in deliveries)
        try:
            await asyncio.to_thread(self._write_durably, data)
        except OSError as exc:
            raise RetryLater(f"cannot write {self._path}: {exc.strerror or exc}") from exc
        return {}

    def _write_durably(self, data: bytes) -> None:
        file = self._file
        assert file is not None
        file.write(data)
        file.flush()
        if self._path != "-":
            os.fsync(file.fileno())
