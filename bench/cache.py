"""A response-cache hit against a direct call and a miss (docs/cache.md), at concurrency 1.

    uv run python bench/cache.py [--requests 300] [--chunk-delay 0.002]

The fake upstream streams its 8 words `--chunk-delay` seconds apart (a fast model, ~16 ms a
stream by default), as bench/run.py's gateway is set up (keys checked, metering on, routing).
Measured, one stream request after another, whole answer read: `direct` (the fake itself),
`gateway miss` (the gateway forwarding, no cache) and `gateway hit` (the same request with
`Cache-Control: max-age=600`: the first is stored, the rest are hits). Prints p50/p99 in ms and
whether a hit beats the direct call.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from children import Children, free_port
from http1 import build_request
from latency import Distribution, sample
from run import LOADGEN_CPU, STREAM_BODY, start_gateway, start_redis


def main() -> int:
    parser = argparse.ArgumentParser(description="A cache hit against a direct call.")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--chunk-delay", type=float, default=0.002)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llm-gateway-cache-bench-") as tmp_name, Children(
        Path(tmp_name)
    ) as services:  # fmt: skip
        tmp = Path(tmp_name)
        redis_url = start_redis(services, tmp)
        port = free_port()
        argv = [sys.executable, "-m", "llm_gateway_fakes.openai", "--port", str(port),
                "--chunk-delay", str(args.chunk_delay)]  # fmt: skip
        upstream = services.start("upstream-cache", argv, cpu=LOADGEN_CPU, port=port)
        gateway = start_gateway(services, upstream.port, redis_url, tmp, routed=True)
        results = {
            "direct": _stream(upstream.port, args.requests, b""),
            "gateway miss": _stream(gateway.port, args.requests, b""),
            "gateway hit": _stream(gateway.port, args.requests, b"Cache-Control: max-age=600\r\n"),
        }
    for name, found in results.items():
        print(f"{name:>13}: p50 {found.p50_ms:7.3f} ms  p99 {found.p99_ms:7.3f} ms")
    faster = results["gateway hit"].p50_ms < results["direct"].p50_ms
    print(f"{'PASS' if faster else 'MISS'} a hit's p50 below the direct call's")
    return 0 if faster else 1


def _stream(port: int, count: int, extra_header: bytes) -> Distribution:
    raw = build_request("127.0.0.1", port, "/v1/chat/completions", STREAM_BODY)
    if extra_header:
        head, _, body = raw.partition(b"\r\n\r\n")
        raw = head + b"\r\n" + extra_header.rstrip(b"\r\n") + b"\r\n\r\n" + body
    timings = sample(port, raw, count=count, warmup=10, time_limit=120)
    return Distribution.of([t.total_ns for t in timings])


if __name__ == "__main__":
    sys.exit(main())
