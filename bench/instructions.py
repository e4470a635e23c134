"""Instructions per request, counted by valgrind: the noise-free companion of CPU µs/request.

    uv run python bench/instructions.py [--requests 200] [--targets floor,gateway,single]

CPU time on a shared VM drifts by ±20 % from one minute to the next, more than a change under
review costs. Valgrind's callgrind counts the instructions the process executes instead, which do
not drift: two runs agree within about 0.5 %. Each target (the floor, the gateway with the
bench's two-target MODELS_FILE, the gateway without one) runs under callgrind with counting off
while it starts and warms up, then on for `--requests` non-streaming chat completions one after
another (the latency workload), and the count is divided by them. Kernel time (the socket system
calls, alike for every target) is not counted, so the gateway/floor ratio of instructions reads
higher than the CPU ratio of bench/run.py; compare a change's instructions before and after.
Needs `valgrind` (Debian's package) and takes about a minute per target.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from children import Children, free_port
from http1 import build_request
from latency import sample
from run import BENCH_DIR, CHAT_BODY, gateway_argv, gateway_env, start_redis, start_upstream

from llm_gateway_fakes.localnet import wait_for_port

_WARMUP = 50
_TARGETS = ("floor", "gateway", "single")


def main() -> int:
    parser = argparse.ArgumentParser(description="Instructions per request under callgrind.")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--targets", default=",".join(_TARGETS[:2]),
                        help=f"comma list of {', '.join(_TARGETS)}")  # fmt: skip
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    if any(t not in _TARGETS for t in targets):
        parser.error(f"targets are {', '.join(_TARGETS)}")
    counts: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="llm-gateway-instructions-") as tmp_name,
        Children(Path(tmp_name)) as services,
    ):
        tmp = Path(tmp_name)
        redis_url = start_redis(services, tmp)
        upstream = start_upstream(services, "instructions")
        for target in targets:
            print(f"[instructions] {target}: {args.requests} requests under callgrind",
                  file=sys.stderr, flush=True)  # fmt: skip
            counts[target] = count(target, tmp, redis_url, upstream.port, args.requests)
    for target, per_request in counts.items():
        print(f"{target}: {per_request / 1e6:.3f} M instructions/request")
    if "floor" in counts:
        for target in ("gateway", "single"):
            if target in counts:
                print(f"{target}/floor: {counts[target] / counts['floor']:.3f}")
    return 0


def count(target: str, tmp: Path, redis_url: str, upstream_port: int, requests: int) -> float:
    """Instructions per request of one target, counted only while the requests run."""
    port = free_port()
    if target == "floor":
        env = {"LISTEN_ADDR": f"127.0.0.1:{port}",
               "UPSTREAM_OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1"}  # fmt: skip
        program = [sys.executable, str(BENCH_DIR / "floor.py")]
    else:
        env = gateway_env(port, upstream_port, redis_url, tmp, routed=target == "gateway")
        program = [sys.executable, *gateway_argv()]
    out = tmp / f"callgrind.{target}"
    with open(tmp / f"{target}.log", "wb") as log:
        process = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}", *program],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for_port(port, timeout=600)
            request = build_request("127.0.0.1", port, "/v1/chat/completions", CHAT_BODY)
            sample(port, request, count=_WARMUP, warmup=0, time_limit=300)
            _control("-i", "on", process.pid)
            sample(port, request, count=requests, warmup=0, time_limit=600)
            _control("-i", "off", process.pid)
            _control("-d", None, process.pid)
            time.sleep(1)  # the dump is written asynchronously
        finally:
            process.terminate()
            process.wait(timeout=120)
    return _total(out) / requests


def _control(option: str, value: str | None, pid: int) -> None:
    argv = ["callgrind_control", option, *([value] if value else []), str(pid)]
    subprocess.run(argv, capture_output=True, check=True)


def _total(out: Path) -> int:
    """The largest `summary:`/`totals:` of the dumps (the dump taken after the requests)."""
    total = 0
    for dump in glob.glob(f"{out}*"):
        with open(dump) as lines:
            for line in lines:
                if line.startswith(("summary:", "totals:")):
                    total = max(total, int(line.split()[1]))
    return total


if __name__ == "__main__":
    sys.exit(main())
