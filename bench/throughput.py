"""Throughput under `wrk`: a fixed POST body, N connections, a fixed duration, pinned to a core.

The Lua script's `done` hook prints one JSON line (prefixed `BENCH `) with wrk's own summary, so
nothing depends on the layout of wrk's human-readable report.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

_MARKER = "BENCH "

_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.body = [==[{body}]==]

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{marker}{{"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, '
    .. '"write_errors": %d, "timeouts": %d, "non_2xx": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


class LoadErrors(Exception):
    """wrk saw failed requests: the numbers would not mean what they say."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    requests_per_s: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float


def write_script(directory: Path, body: bytes) -> Path:
    text = body.decode()
    if "]==]" in text:
        raise ValueError("request body cannot be embedded in a Lua long string")
    path = directory / "post.lua"
    path.write_text(_SCRIPT.format(body=text, marker=_MARKER))
    return path


def run_wrk(url: str, script: Path, *, connections: int, seconds: float, cpu: int) -> WrkResult:
    """Run wrk (one thread, pinned to `cpu`) and return its summary; LoadErrors on any error."""
    argv = [
        "taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
        "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(_MARKER)), None)
    if line is None:
        raise LoadErrors(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    summary = json.loads(line[len(_MARKER) :])
    result = WrkResult(
        requests=summary["requests"],
        duration_s=summary["duration_us"] / 1e6,
        requests_per_s=summary["requests"] / (summary["duration_us"] / 1e6),
        non_2xx=summary["non_2xx"],
        socket_errors=sum(
            summary[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
        ),
        p50_ms=summary["p50_us"] / 1e3,
        p99_ms=summary["p99_us"] / 1e3,
    )
    if result.non_2xx or result.socket_errors or not result.requests:
        raise LoadErrors(
            f"wrk against {url}: {result.requests} requests, {result.non_2xx} non-2xx, "
            f"{result.socket_errors} socket errors\n{done.stdout}"
        )
    return result
