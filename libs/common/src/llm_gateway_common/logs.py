"""Structured JSON logs: configured once at process entry, one line per event.

Everything is JSON, one object per line, including what third-party libraries log through the
standard library (their tracebacks become an `exception` string field, never extra lines).

A service that logs a line per request asks for `buffered` output: lines are then written to a
buffer that `LogOutput.flush` empties (the service calls it every `FLUSH_INTERVAL` and at
exit), and warnings and errors are flushed at once. That saves a system call per request; the
price is that an info line can reach the log up to `FLUSH_INTERVAL` late, or be lost if the
process is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

import orjson
import structlog

FLUSH_INTERVAL = 0.2
_BUFFER_BYTES = 64 * 1024  # a write per ~140 request lines, or per FLUSH_INTERVAL

_SHARED: list[Any] = [
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


class LogOutput:
    """Where log lines go: a binary stream, written through at once or buffered."""

    def __init__(self, stream: BinaryIO, *, buffered: bool, level: int = logging.INFO) -> None:
        if buffered and isinstance(stream, io.RawIOBase):
            # An unbuffered stream (stdout under PYTHONUNBUFFERED=1, as in our image) would cost
            # a write system call per line: buffered here, over the same descriptor (closing
            # this buffer never closes it).
            raw = io.FileIO(stream.fileno(), "wb", closefd=False)
            stream = io.BufferedWriter(raw, buffer_size=_BUFFER_BYTES)
        self._stream = stream
        self._buffered = buffered
        self._info = level <= logging.INFO
        self._second = -1
        self._stamp = ""

    def info(self, event: str, fields: dict[str, Any]) -> None:
        """One info line, as structlog would render `log.info(event, **fields)` (same keys, same
        timestamp format), for a line written once per request: structlog's processor chain
        costs several times the line itself."""
        if not self._info:
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        fields["event"] = event
        fields["level"] = "info"
        fields["timestamp"] = f"{self._stamp}.{int((now - second) * 1e6):06d}Z"
        self._stream.write(orjson.dumps(fields) + b"\n")
        if not self._buffered:
            self._stream.flush()

    def flush(self) -> None:
        self._stream.flush()

    async def flush_periodically(self) -> None:
        """Run for the life of the service (a lifespan task); cancel it at shutdown."""
        try:
            while True:
                await asyncio.sleep(FLUSH_INTERVAL)
                self._stream.flush()
        finally:
            self._stream.flush()

    def logger(self, *args: Any) -> _LineWriter:
        return _LineWriter(self._stream, flush_every_line=not self._buffered)


class _LineWriter:
    """A structlog logger: one rendered line per call; warnings and errors always flushed."""

    def __init__(self, stream: BinaryIO, *, flush_every_line: bool) -> None:
        self._write = stream.write
        self._flush = stream.flush
        self._flush_every_line = flush_every_line

    def msg(self, message: bytes) -> None:
        self._write(message + b"\n")
        if self._flush_every_line:
            self._flush()

    def msg_now(self, message: bytes) -> None:
        self._write(message + b"\n")
        self._flush()

    debug = info = msg
    warn = warning = error = err = critical = exception = fatal = failure = msg_now


def configure_logging(
    level: str = "info", stream: BinaryIO | None = None, *, buffered: bool = False
) -> LogOutput:
    """Route structlog and the standard library's loggers to JSON lines on `stream` (stdout by
    default; a service whose data goes to stdout logs to stderr instead)."""
    out = stream if stream is not None else sys.stdout.buffer
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    output = LogOutput(out, buffered=buffered, level=numeric)
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=output.logger,
        cache_logger_on_first_use=True,
    )
    text_stream: TextIO = sys.stderr if out is sys.stderr.buffer else sys.stdout
    handler = logging.StreamHandler(text_stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(serializer=_dumps_text),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    return output


def _dumps_text(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()
