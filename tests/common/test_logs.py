"""The per-request log line written straight to the output is the line structlog would write."""

from __future__ import annotations

import gc
import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

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


def test_buffered_output_over_an_unbuffered_stream_writes_per_flush(tmp_path: Path) -> None:
    """stdout under PYTHONUNBUFFERED=1 (as in the image) is a raw file: buffered output then
    buffers itself (no write per line), warnings still go out at once, and closing the
    buffer never closes the descriptor it writes to."""
    path = tmp_path / "log"
    with path.open("wb", buffering=0) as raw:
        assert isinstance(raw, io.RawIOBase)
        output = configure_logging("info", raw, buffered=True)
        for n in range(50):
            output.info("request", {"request_id": f"r{n}"})
        assert path.stat().st_size == 0
        structlog.get_logger("t").warning("something_odd")
        lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        assert [line["event"] for line in lines] == ["request"] * 50 + ["something_odd"]
        output.info("request", {"request_id": "last"})
        output.flush()
        assert orjson.loads(path.read_bytes().splitlines()[-1])["request_id"] == "last"
        del output
        gc.collect()
        raw.write(b"still open\n")
    assert path.read_bytes().endswith(b"still open\n")
