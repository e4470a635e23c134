"""Latency at concurrency 1: one keep-alive connection, requests back to back, a warm-up first."""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass

from http1 import Connection, Timing


class BadStatus(Exception):
    """A target answered a benchmark request with something other than 2xx."""


@dataclass(frozen=True, slots=True)
class Distribution:
    """Percentiles of one series of timings, in milliseconds."""

    count: int
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, samples_ns: list[int]) -> Distribution:
        ordered = sorted(samples_ns)
        return cls(len(ordered), _percentile(ordered, 50) / 1e6, _percentile(ordered, 99) / 1e6)


def sample(
    port: int, raw_request: bytes, *, count: int, warmup: int, time_limit: float
) -> list[Timing]:
    """Send `warmup` then up to `count` requests one after another; stop early at `time_limit`
    seconds. Raises BadStatus on any non-2xx answer."""
    deadline = time.monotonic() + time_limit
    timings: list[Timing] = []
    gc.collect()
    gc.disable()  # a collection in the client would show up as server latency
    try:
        with Connection("127.0.0.1", port) as conn:
            for index in range(warmup + count):
                timing = conn.request(raw_request)
                if not 200 <= timing.status < 300:
                    raise BadStatus(f"HTTP {timing.status} from 127.0.0.1:{port}")
                if index >= warmup:
                    timings.append(timing)
                if time.monotonic() > deadline:
                    break
    finally:
        gc.enable()
    return timings


def _percentile(ordered: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])
