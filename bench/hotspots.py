"""Where a proxy spends its CPU under load: py-spy samples it while wrk drives it.

    uv tool install py-spy       # not a project dependency (`uv sync` would remove it from .venv)
    uv run python bench/hotspots.py [--target gateway|floor] [--connections 64] [--seconds 20]

Starts the same stack as bench/run.py (private Redis, fake upstream, the proxy alone on core 1),
drives it with wrk (concurrency 64, or `--connections`), records with `py-spy record --format
raw` and prints the functions with the most samples: self (the function itself was running) and
inclusive (it was on the stack), and self time by package, each also as CPU µs per request. The
raw stacks are kept in bench/results/ for flame graphs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no py.typed, no stubs installed
from children import Children
from run import (
    BENCH_DIR,
    CHAT_BODY,
    LOADGEN_CPU,
    start_floor,
    start_gateway,
    start_redis,
    start_upstream,
    wait_for_quiet,
)
from throughput import run_wrk, write_script

_TOP = 25


def main() -> int:
    parser = argparse.ArgumentParser(description="Profile a proxy under wrk load with py-spy.")
    parser.add_argument("--target", choices=["gateway", "floor"], default="gateway")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=64, help="wrk concurrency")
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--single", action="store_true", help="the gateway without MODELS_FILE")
    args = parser.parse_args()
    py_spy = _find_py_spy()
    if py_spy is None:
        print("py-spy is not installed: uv tool install py-spy", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    raw = BENCH_DIR / "results" / f"{stamp}-{args.target}-c{args.connections}.stacks"
    raw.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="llm-gateway-hotspots-") as tmp_name,
        Children(Path(tmp_name)) as children,
    ):
        tmp = Path(tmp_name)
        upstream = start_upstream(children, args.target)
        if args.target == "gateway":
            proxy = start_gateway(
                children, upstream.port, start_redis(children, tmp), tmp, routed=not args.single
            )
        else:
            proxy = start_floor(children, upstream.port)
        script = write_script(tmp, CHAT_BODY)
        url = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
        run_wrk(url, script, connections=args.connections, seconds=2, cpu=LOADGEN_CPU)  # warm-up
        wait_for_quiet(60.0)
        recorder = subprocess.Popen(
            [py_spy, "record", "--pid", str(proxy.pid), "--rate", str(args.rate),
             "--duration", str(args.seconds), "--format", "raw", "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        process = psutil.Process(proxy.pid)
        cpu_before = sum(process.cpu_times()[:2])
        try:
            load = run_wrk(url, script, connections=args.connections, seconds=args.seconds + 1,
                           cpu=LOADGEN_CPU)  # fmt: skip
            cpu_us_per_request = (sum(process.cpu_times()[:2]) - cpu_before) / load.requests * 1e6
            recorder.wait(timeout=30)
        finally:
            if recorder.poll() is None:
                recorder.kill()
                recorder.wait()
    print(summarise(raw, cpu_us_per_request))
    print(f"\nraw stacks: {raw}")
    return 0


def _find_py_spy() -> str | None:
    """On PATH, in the venv, or where `uv tool install` puts it."""
    candidates = [Path(sys.executable).parent / "py-spy", Path.home() / ".local/bin/py-spy"]
    return shutil.which("py-spy") or next((str(p) for p in candidates if p.exists()), None)


def summarise(raw: Path, cpu_us_per_request: float) -> str:
    """Top functions by self and inclusive samples, and self samples by package, each also as
    its share of the proxy's measured CPU µs per request."""
    own: Counter[str] = Counter()
    on_stack: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        packages[_package(stack.split(";")[-1])] += count
        for name in set(frames):
            on_stack[name] += count
    if not total:
        return "no samples (is ptrace allowed?)"
    us_per_sample = cpu_us_per_request / total
    out = [f"{total} samples, {cpu_us_per_request:.0f} CPU µs per request (under py-spy)"]
    for title, counter in (("self", own), ("inclusive", on_stack), ("self, by package", packages)):
        out += ["", f"## {title}", "", "| % | µs/req | function |", "|---:|---:|---|"]
        out += [
            f"| {n / total:.1%} | {n * us_per_sample:.1f} | `{name}` |"
            for name, n in counter.most_common(_TOP)
        ]
    return "\n".join(out)


def _function(frame: str) -> str:
    """`handle (aiohttp/client.py:512)` -> `handle (aiohttp/client.py)`: lines merged."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({_short(path)})"


def _package(frame: str) -> str:
    path = _short(frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0])
    return path.split("/", 1)[0] if "/" in path else path


def _short(path: str) -> str:
    """A path from site-packages or the stdlib, without the prefix that every frame shares."""
    for marker in ("site-packages/", "/src/", "lib/python3.11/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    return path


if __name__ == "__main__":
    raise SystemExit(main())
