"""Structured JSON logs: configured once at process entry, one line per event.

Everything is JSON, one object per line, including what third-party libraries log through the
standard library (their tracebacks become an `exception` string field, never extra lines).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, BinaryIO, TextIO

import orjson
import structlog

# No contextvars merge: nothing binds context per request (each request has one line carrying
# its own fields), and the merge is a measurable share of the proxy's per-request cost.
_SHARED: list[Any] = [
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(level: str = "info", stream: BinaryIO | None = None) -> None:
    """Route structlog and the standard library's loggers to JSON lines on `stream` (stdout by
    default; a service whose data goes to stdout logs to stderr instead)."""
    out = stream if stream is not None else sys.stdout.buffer
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.BytesLoggerFactory(out),
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


def _dumps_text(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()
