"""The per-request log line written straight to the output is the line structlog would write."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import orjson
import pytest
import structlog

from llm_gateway_common.logs import configure_logging

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging sets process-wide state: put it back for the tests that follow."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_direct_info_line_reads_as_the_structlog_line() -> None:
    stream = io.BytesIO()
    output = configure_logging("info", stream)
    fields = {"request_id": "r1", "status": 200, "error_type": None, "latency_ms": 1.5}
    structlog.get_logger("t").info("request", **fields)
    output.info("request", dict(fields))
    via_structlog, direct = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert via_structlog.keys() == direct.keys()
    assert {k: v for k, v in direct.items() if k != "timestamp"} == {
        k: v for k, v in via_structlog.items() if k != "timestamp"
    }
    assert _TIMESTAMP.match(direct["timestamp"]) and _TIMESTAMP.match(via_structlog["timestamp"])


def test_a_direct_info_line_respects_the_level() -> None:
    stream = io.BytesIO()
    output = configure_logging("warning", stream)
    output.info("request", {"request_id": "r1"})
    assert stream.getvalue() == b""
