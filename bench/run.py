"""Benchmark the gateway against the floor and against no proxy at all, in one run.

    uv run python bench/run.py [--quick]

Starts a private Redis, then measures three targets one after another, each with a fresh fake
upstream (and a fresh proxy): `direct` (the fake itself), `floor` (bench/floor.py) and
`gateway` (llm-gateway-proxy, metering into that Redis). The proxy under test runs alone on
core 1; this process, wrk, the fake upstream and Redis share core 0. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

import psutil  # type: ignore[import-untyped]  # no py.typed, no stubs installed
import redis
from children import Child, Children, free_port
from http1 import build_request
from latency import Distribution, sample
from report import Metering, TargetResult, checks, render, save
from throughput import run_wrk, write_script

LOADGEN_CPU = 0
PROXY_CPU = 1
EVENTS_STREAM = "llm-gateway:events"
BENCH_DIR = Path(__file__).resolve().parent
CHAT_BODY = (
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the bench."}]}'
)
STREAM_BODY = CHAT_BODY[:-1] + b',"stream":true}'


@dataclass(frozen=True, slots=True)
class Plan:
    latency_requests: int
    stream_requests: int
    warmup: int
    wrk_seconds: float
    wrk_warmup_seconds: float
    connections: int = 64
    loop_time_limit: float = 120.0


FULL = Plan(latency_requests=2000, stream_requests=1000, warmup=200, wrk_seconds=10,
            wrk_warmup_seconds=2)  # fmt: skip
QUICK = Plan(latency_requests=300, stream_requests=200, warmup=50, wrk_seconds=3,
             wrk_warmup_seconds=1)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark direct vs floor vs gateway.")
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter wrk runs")
    plan = QUICK if parser.parse_args().quick else FULL
    signal.signal(signal.SIGTERM, _exit_on_signal)
    os.sched_setaffinity(0, {LOADGEN_CPU})
    with (
        tempfile.TemporaryDirectory(prefix="llm-gateway-bench-") as tmp_name,
        Children(Path(tmp_name)) as services,
    ):
        tmp = Path(tmp_name)
        redis_url = start_redis(services, tmp)
        script = write_script(tmp, CHAT_BODY)
        with Children(tmp) as phase:
            upstream = start_upstream(phase, "direct")
            direct, _ = measure("direct", upstream, None, plan, script)
        with Children(tmp) as phase:
            upstream = start_upstream(phase, "floor")
            proxy = start_floor(phase, upstream.port)
            floor, _ = measure("floor", proxy, proxy, plan, script)
        with Children(tmp) as phase:
            upstream = start_upstream(phase, "gateway")
            proxy = start_gateway(phase, upstream.port, redis_url, tmp)
            events_before = _xlen(redis_url)
            gateway, served = measure("gateway", proxy, proxy, plan, script)
            events = _settled_xlen(redis_url) - events_before
    results = [direct, floor, gateway]
    metering = Metering(events, served, allowance=2 * plan.connections)
    found = checks(direct, floor, gateway)
    table = render(results, found, metering)
    print(table)
    saved = save(BENCH_DIR / "results", table, results=results, found=found, metering=metering,
                 plan=asdict(plan))  # fmt: skip
    print(f"\nwritten: {saved.with_suffix('.md')} and {saved}")
    if not metering.ok:
        print("metering FAILED: the gateway did not write one event per request", file=sys.stderr)
        return 1
    return 0


def measure(
    name: str, target: Child, proxy: Child | None, plan: Plan, script: Path
) -> tuple[TargetResult, int]:
    """Latency and TTFB at concurrency 1, then throughput at `plan.connections`, with the proxy's
    CPU time over the throughput run. Returns the result and the number of requests completed."""
    port = target.port
    _progress(f"{name}: latency, {plan.latency_requests} requests at concurrency 1")
    chat = sample(port, build_request("127.0.0.1", port, "/v1/chat/completions", CHAT_BODY),
                  count=plan.latency_requests, warmup=plan.warmup,
                  time_limit=plan.loop_time_limit)  # fmt: skip
    _progress(f"{name}: stream TTFB, {plan.stream_requests} requests at concurrency 1")
    stream = sample(port, build_request("127.0.0.1", port, "/v1/chat/completions", STREAM_BODY),
                    count=plan.stream_requests, warmup=plan.warmup,
                    time_limit=plan.loop_time_limit)  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    _progress(f"{name}: wrk -c{plan.connections} for {plan.wrk_seconds:g}s (after a warm-up)")
    warm = run_wrk(url, script, connections=plan.connections, seconds=plan.wrk_warmup_seconds,
                   cpu=LOADGEN_CPU)  # fmt: skip
    cpu_before = _cpu_seconds(proxy)
    load = run_wrk(url, script, connections=plan.connections, seconds=plan.wrk_seconds,
                   cpu=LOADGEN_CPU)  # fmt: skip
    cpu_used = _cpu_seconds(proxy) - cpu_before
    result = TargetResult(
        name=name,
        latency=Distribution.of([t.total_ns for t in chat]),
        ttfb=Distribution.of([t.first_body_ns for t in stream]),
        throughput=load,
        cpu_us_per_request=None if proxy is None else cpu_used / load.requests * 1e6,
        cpu_busy=None if proxy is None else cpu_used / load.duration_s,
        peak_rss_mb=None if proxy is None else _peak_rss_mb(proxy.pid),
    )
    served = 2 * plan.warmup + len(chat) + len(stream) + warm.requests + load.requests
    return result, served


def start_redis(children: Children, tmp: Path) -> str:
    """A private Redis: free port, no persistence, its files in `tmp`."""
    port = free_port()
    argv = [
        "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
        "--appendonly", "no", "--dir", str(tmp), "--protected-mode", "yes",
    ]  # fmt: skip
    children.start("redis", argv, cpu=LOADGEN_CPU, port=port)
    url = f"redis://127.0.0.1:{port}/0"
    _progress(f"redis on {url}")
    return url


def start_upstream(children: Children, phase: str) -> Child:
    port = free_port()
    argv = [sys.executable, "-m", "llm_gateway_fakes.openai", "--port", str(port)]
    return children.start(f"upstream-{phase}", argv, cpu=LOADGEN_CPU, port=port)


def start_floor(children: Children, upstream_port: int) -> Child:
    port = free_port()
    env = {
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "UPSTREAM_OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
    }
    argv = [sys.executable, str(BENCH_DIR / "floor.py")]
    return children.start("floor", argv, cpu=PROXY_CPU, port=port, env=env)


def start_gateway(children: Children, upstream_port: int, redis_url: str, tmp: Path) -> Child:
    """The gateway as deployed: its console script, metering on, one JSON log line per request
    (to a file, as a container runtime would take them)."""
    port = free_port()
    env = {
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "UPSTREAM_OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "info",
        "SHUTDOWN_GRACE_SECONDS": "5",
    }
    script = Path(sys.executable).parent / "llm-gateway-proxy"
    return children.start("gateway", [str(script)], cpu=PROXY_CPU, port=port, env=env,
                          stdout=tmp / "gateway-requests.log")  # fmt: skip


def _cpu_seconds(proxy: Child | None) -> float:
    if proxy is None:
        return 0.0
    times = psutil.Process(proxy.pid).cpu_times()
    return float(times.user + times.system)


def _peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) in MB of 10^6 bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmHWM for pid {pid}")


def _xlen(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return int(client.xlen(EVENTS_STREAM))
    finally:
        client.close()


def _settled_xlen(redis_url: str, quiet: float = 1.0, limit: float = 15.0) -> int:
    """XLEN once it has stopped growing for `quiet` seconds (the publisher batches)."""
    deadline = time.monotonic() + limit
    last, since = _xlen(redis_url), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _xlen(redis_url)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `with` blocks, which stop the children


if __name__ == "__main__":
    raise SystemExit(main())
