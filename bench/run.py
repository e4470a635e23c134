"""Benchmark the gateway against the floor and against no proxy at all, in one run.

    uv run python bench/run.py [--quick] [--rounds N]

Starts a private Redis, then measures three targets one after another, each with a fresh fake
upstream (and a fresh proxy): `direct` (the fake itself), `floor` (bench/floor.py) and
`gateway` (llm-gateway-proxy, metering into that Redis). The proxy under test runs alone on
core 1; this process, wrk, the fake upstream and Redis share core 0. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType

import psutil  # type: ignore[import-untyped]  # no py.typed, no stubs installed
import redis
import translate
from children import Child, Children, free_port
from http1 import build_request
from latency import Distribution, sample
from report import (
    QUIET_BUSY_MAX,
    Metering,
    TargetResult,
    checks,
    median_checks,
    median_result,
    render,
    save,
)
from sse_tap import openai_stream, per_chunk_us
from streams import run_streams
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
    streams_per_connection: int  # long streams, for CPU per chunk (bench/streams.py)
    stream_connections: int = 16
    stream_words: int = 200
    stream_chunk_delay: float = 0.002  # 500 chunks/s per stream, each arriving on its own
    connections: int = 64
    loop_time_limit: float = 120.0
    quiet_wait: float = 60.0  # how long to wait for other work on the machine to stop


FULL = Plan(latency_requests=2000, stream_requests=1000, warmup=200, wrk_seconds=10,
            wrk_warmup_seconds=2, streams_per_connection=10)  # fmt: skip
QUICK = Plan(latency_requests=300, stream_requests=200, warmup=50, wrk_seconds=3,
             wrk_warmup_seconds=1, streams_per_connection=3)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark direct vs floor vs gateway.")
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter wrk runs")
    parser.add_argument(
        "--single-provider",
        action="store_true",
        help="run the gateway without MODELS_FILE (one provider from UPSTREAM_OPENAI_*)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, choices=range(1, 11), metavar="1..10",
        help="measure all three targets this many times and report the medians",
    )  # fmt: skip
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    os.sched_setaffinity(0, {LOADGEN_CPU})
    rounds: list[list[TargetResult]] = []
    meterings: list[Metering] = []
    with (
        tempfile.TemporaryDirectory(prefix="llm-gateway-bench-") as tmp_name,
        Children(Path(tmp_name)) as services,
    ):
        tmp = Path(tmp_name)
        redis_url = start_redis(services, tmp)
        script = write_script(tmp, CHAT_BODY)
        for number in range(1, args.rounds + 1):
            if args.rounds > 1:
                _progress(f"round {number} of {args.rounds}")
            round_results, metering = run_round(plan, tmp, redis_url, script,
                                                routed=not args.single_provider)  # fmt: skip
            rounds.append(round_results)
            meterings.append(metering)
    results = [median_result(list(same)) for same in zip(*rounds, strict=True)]
    found = median_checks([checks(*round_results) for round_results in rounds])
    table = render(results, found, meterings)
    print(table)
    saved = save(BENCH_DIR / "results", table, results=results, found=found, meterings=meterings,
                 rounds=rounds, plan={**asdict(plan), "rounds": args.rounds})  # fmt: skip
    print(f"\nwritten: {saved.with_suffix('.md')} and {saved}")
    if not all(metering.ok for metering in meterings):
        print("metering FAILED: the gateway did not write one event per request", file=sys.stderr)
        return 1
    return 0


def run_round(
    plan: Plan, tmp: Path, redis_url: str, script: Path, *, routed: bool
) -> tuple[list[TargetResult], Metering]:
    """direct, floor, gateway, one after another, each with a fresh upstream and proxy."""
    with Children(tmp) as phase:
        upstream = start_upstream(phase, "direct")
        direct, _ = measure("direct", upstream, None, plan, script)
    with Children(tmp) as phase:
        upstream = start_upstream(phase, "floor")
        proxy = start_floor(phase, upstream.port)
        floor, _ = measure("floor", proxy, proxy, plan, script)
    with Children(tmp) as phase:
        upstream = start_upstream(phase, "gateway")
        proxy = start_gateway(phase, upstream.port, redis_url, tmp, routed=routed)
        events_before = _xlen(redis_url)
        gateway, served = measure("gateway", proxy, proxy, plan, script)
        events = _settled_xlen(redis_url) - events_before
    _progress("the SSE tap alone, in this process (bench/sse_tap.py)")
    tap = per_chunk_us(openai_stream(plan.stream_words), strip=True, repeat=7)
    _progress("the Anthropic translation alone, in this process (bench/translate.py)")
    translation = translate.per_chunk_us(translate.anthropic_stream(plan.stream_words), repeat=7)
    gateway = replace(gateway, tap_us_per_chunk=tap, translate_us_per_chunk=translation)
    return [direct, floor, gateway], Metering(events, served, allowance=2 * plan.connections)


def measure(
    name: str, target: Child, proxy: Child | None, plan: Plan, script: Path
) -> tuple[TargetResult, int]:
    """Latency and TTFB at concurrency 1, CPU per chunk of long concurrent streams (proxies only),
    then throughput at `plan.connections`, with the proxy's CPU time over the latency and
    throughput runs. Returns the result and the number of requests completed."""
    port = target.port
    background = wait_for_quiet(plan.quiet_wait)
    _progress(f"{name}: latency, {plan.latency_requests} requests at concurrency 1")
    cpu_before_c1 = _cpu_seconds(proxy)
    chat = sample(port, build_request("127.0.0.1", port, "/v1/chat/completions", CHAT_BODY),
                  count=plan.latency_requests, warmup=plan.warmup,
                  time_limit=plan.loop_time_limit)  # fmt: skip
    cpu_one_by_one = (_cpu_seconds(proxy) - cpu_before_c1) / (plan.warmup + len(chat))
    _progress(f"{name}: stream TTFB, {plan.stream_requests} requests at concurrency 1")
    stream = sample(port, build_request("127.0.0.1", port, "/v1/chat/completions", STREAM_BODY),
                    count=plan.stream_requests, warmup=plan.warmup,
                    time_limit=plan.loop_time_limit)  # fmt: skip
    streamed, cpu_per_chunk = measure_streams(name, target, proxy, plan)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    _progress(f"{name}: wrk -c{plan.connections} for {plan.wrk_seconds:g}s (after a warm-up)")
    warm = run_wrk(url, script, connections=plan.connections, seconds=plan.wrk_warmup_seconds,
                   cpu=LOADGEN_CPU)  # fmt: skip
    cpu_before, core_before = _cpu_seconds(proxy), _proxy_core_busy()
    load = run_wrk(url, script, connections=plan.connections, seconds=plan.wrk_seconds,
                   cpu=LOADGEN_CPU)  # fmt: skip
    cpu_used = _cpu_seconds(proxy) - cpu_before
    foreign = max(0.0, _proxy_core_busy() - core_before - cpu_used) / load.duration_s
    result = TargetResult(
        name=name,
        latency=Distribution.of([t.total_ns for t in chat]),
        ttfb=Distribution.of([t.first_body_ns for t in stream]),
        throughput=load,
        cpu_us_per_request=None if proxy is None else cpu_used / load.requests * 1e6,
        cpu_us_per_request_c1=None if proxy is None else cpu_one_by_one * 1e6,
        cpu_us_per_chunk=cpu_per_chunk,
        cpu_busy=None if proxy is None else cpu_used / load.duration_s,
        peak_rss_mb=None if proxy is None else _peak_rss_mb(proxy.pid),
        background_cpu=background,
        foreign_on_proxy_core=foreign,
    )
    served = 2 * plan.warmup + len(chat) + len(stream) + streamed + warm.requests + load.requests
    return result, served


def measure_streams(
    name: str, target: Child, proxy: Child | None, plan: Plan
) -> tuple[int, float | None]:
    """The proxy's CPU µs per chunk it streamed, over `plan.stream_connections` long streams at
    once (skipped for `direct`: no proxy). Returns the requests made and the CPU per chunk."""
    if proxy is None:
        return 0, None
    _progress(f"{name}: {plan.stream_connections} streams at once, {plan.stream_words} chunks "
              f"{plan.stream_chunk_delay * 1000:g} ms apart, {plan.streams_per_connection} "
              "after one another")  # fmt: skip
    cpu_before = _cpu_seconds(proxy)
    load = run_streams(target.port, STREAM_BODY, connections=plan.stream_connections,
                       requests_per_connection=plan.streams_per_connection,
                       words=plan.stream_words, delay=plan.stream_chunk_delay,
                       time_limit=plan.loop_time_limit)  # fmt: skip
    return load.requests, (_cpu_seconds(proxy) - cpu_before) / load.chunks * 1e6


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


def start_gateway(
    children: Children, upstream_port: int, redis_url: str, tmp: Path, *, routed: bool
) -> Child:
    """The gateway as deployed: its console script, gateway keys checked (a static key file),
    metering on, one JSON log line per request (to a file, as a container runtime takes them),
    and (unless --single-provider) routing: a MODELS_FILE whose model has two weighted targets
    with retries, both on the fake upstream."""
    port = free_port()
    env = gateway_env(port, upstream_port, redis_url, tmp, routed=routed)
    return children.start("gateway", gateway_argv(), cpu=PROXY_CPU, port=port, env=env,
                          stdout=tmp / "gateway-requests.log")  # fmt: skip


def gateway_argv() -> list[str]:
    return [str(Path(sys.executable).parent / "llm-gateway-proxy")]


def gateway_env(
    port: int, upstream_port: int, redis_url: str, tmp: Path, *, routed: bool
) -> dict[str, str]:
    """The gateway's environment in the bench: keys checked, metering and logs on."""
    keys_file = tmp / "keys.json"
    keys_file.write_text(json.dumps([{  # the key the load generators send, hashed; no limits
        "id": "key_bench", "key_hash": hashlib.sha256(b"sk-bench").hexdigest(),
        "name": "bench", "tenant": "bench"}]))  # fmt: skip
    env = {
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "MANAGEMENT_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "UPSTREAM_OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "REDIS_URL": redis_url,
        "AUTH_MODE": "keys",
        "KEYS_FILE": str(keys_file),
        "LOG_LEVEL": "info",
        "SHUTDOWN_GRACE_SECONDS": "5",
    }
    if routed:
        env["MODELS_FILE"] = str(write_models_file(tmp, f"http://127.0.0.1:{upstream_port}/v1"))
    return env


def write_models_file(tmp: Path, base_url: str) -> Path:
    """Two provider entries on the one fake, the bench's model routed over both (3:1)."""
    path = tmp / "models.yaml"
    providers = {name: {"type": "openai", "base_url": base_url} for name in ("fake-a", "fake-b")}
    targets = [{"provider": "fake-a", "model": "gpt-4o-mini", "weight": 3},
               {"provider": "fake-b", "model": "gpt-4o-mini", "weight": 1}]  # fmt: skip
    models = {"providers": providers, "models": {"gpt-4o-mini": {"targets": targets}},
              "routing": {"retries": 2}, "default_provider": "fake-a"}  # fmt: skip
    path.write_text(json.dumps(models))  # JSON is YAML
    return path


def wait_for_quiet(limit: float) -> float:
    """Wait (up to `limit` seconds) until the machine is idle apart from us, since other
    processes on these two cores would be measured as proxy latency. Returns the busy fraction
    of the last one-second sample."""
    deadline = time.monotonic() + limit
    busy = psutil.cpu_percent(interval=1.0) / 100
    while busy > QUIET_BUSY_MAX and time.monotonic() < deadline:
        _progress(f"waiting for a quiet machine: {busy:.0%} busy")
        busy = psutil.cpu_percent(interval=1.0) / 100
    if busy > QUIET_BUSY_MAX:
        _progress(f"WARNING: the machine is {busy:.0%} busy with other work; expect noise")
    return float(busy)


def _proxy_core_busy() -> float:
    """Seconds the proxy's core spent running processes (any), so that what the proxy did not
    use of it shows other work competing with the proxy for its core."""
    core = psutil.cpu_times(percpu=True)[PROXY_CPU]
    return float(core.user + core.nice + core.system)


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
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # the children are stopped by then
        print("[bench] interrupted", file=sys.stderr)
        raise SystemExit(130) from None
