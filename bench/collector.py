"""Collector throughput: events per second one collector sustains into Postgres and into NDJSON.

    uv run python -m bench.collector [--events N] [--quick]   (from the repository root)

For each sink: a private Redis, a stream pre-filled with N realistic events (the proxy's entry
layout), then one `llm-gateway-collector` pinned to core 1 drains it. The rate is measured
between 10% and 90% of the events landing (start-up and the tail excluded), counted where they
land: rows in `usage_events` (a durable Postgres: fsync and synchronous commit on) or lines in
the NDJSON file (flushed and fsynced per batch). Also reported: the collector's CPU time per
event and its peak RSS. The events are schema 5's: priced (`cost_usd` a Decimal of 12 decimals
into a numeric column; one in 20 unpriced), with cache reads and writes, and three in four in a
coding session of 50 requests (`session_id`, so the ledger's partial session index is kept up
too). Target: at least 10,000 events/s into Postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import asyncpg
import psutil
import redis.asyncio as aioredis

from bench.children import Children, free_port
from llm_gateway_common.events import UsageEvent
from tests.support.events import make_event, produce
from tests.support.postgres import LocalPostgres

POSTGRES_TARGET = 10_000
BATCH_SIZE = "1000"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="30,000 events")
    args = parser.parse_args()
    events = 30_000 if args.quick else args.events
    results = asyncio.run(run(events))
    print(f"\ncollector throughput, {events:,} events per sink, batch {BATCH_SIZE}:\n")
    print("| sink | events/s | CPU µs/event | peak RSS MB |")
    print("|---|---:|---:|---:|")
    for sink, (rate, cpu_us, rss) in results.items():
        print(f"| {sink} | {rate:,.0f} | {cpu_us:.1f} | {rss:.1f} |")
    verdict = "PASS" if results["postgres"][0] >= POSTGRES_TARGET else "MISS"
    print(f"\n- {verdict} Postgres events/s: {results['postgres'][0]:,.0f} "
          f"(target {POSTGRES_TARGET:,})")  # fmt: skip


async def run(count: int) -> dict[str, tuple[float, float, float]]:
    workdir = Path(tempfile.mkdtemp(prefix="llm-gw-bench-collector-"))
    postgres = LocalPostgres(durable=True).start()
    results: dict[str, tuple[float, float, float]] = {}
    try:
        with Children(workdir) as children:
            redis_port = free_port()
            redis_server = shutil.which("redis-server") or "redis-server"
            children.start("redis", [redis_server, "--port", str(redis_port), "--save", "",
                                     "--appendonly", "no", "--dir", str(workdir)],
                           cpu=0, port=redis_port)  # fmt: skip
            redis = aioredis.Redis.from_url(f"redis://127.0.0.1:{redis_port}/0")
            db = await asyncpg.connect(postgres.dsn)
            ndjson = workdir / "events.ndjson"
            sinks: dict[str, tuple[dict[str, str], Callable[[], Awaitable[int]]]] = {
                "postgres": ({"COLLECTOR_SINK": "postgres", "DATABASE_URL": postgres.dsn},
                             lambda: _rows(db)),
                "ndjson": ({"COLLECTOR_SINK": "ndjson", "EVENT_LOG_PATH": str(ndjson)},
                           lambda: _lines(ndjson)),
            }  # fmt: skip
            events = [_priced_event(i) for i in range(count)]
            for sink, (env, landed) in sinks.items():
                stream = f"bench:{sink}"
                print(f"filling {stream} with {count:,} events ...", file=sys.stderr)
                await produce(redis, stream, events)
                port = free_port()
                binary = str(Path(sys.executable).parent / "llm-gateway-collector")
                collector = children.start(
                    f"collector-{sink}", [binary],
                    cpu=1, port=port,
                    env={**env, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                         "EVENTS_STREAM": stream, "COLLECTOR_LISTEN_ADDR": f"127.0.0.1:{port}",
                         "COLLECTOR_BATCH_SIZE": BATCH_SIZE, "LOG_LEVEL": "warning"},
                )  # fmt: skip
                results[sink] = await _measure(count, landed, psutil.Process(collector.pid))
                collector.stop()
            await _check_cost(db, events)
            await db.close()
            await redis.aclose()
    finally:
        postgres.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def _priced_event(index: int) -> UsageEvent:
    """A realistic schema 5 event: priced to 12 decimals (one in 20 unpriced), with cache use,
    in a coding session unless it is one of the one in four outside any."""
    session = str(uuid.UUID(int=index // 50)) if index % 4 != 3 else None
    if index % 20 == 0:
        return make_event(index, cached_tokens=4, cache_write_tokens=2, session_id=session)
    return make_event(index, cached_tokens=4, cache_write_tokens=2, session_id=session,
                      cost_usd=Decimal(7_919 * index % 10**9).scaleb(-12),
                      price_source="genai-prices 0.2.3")  # fmt: skip


async def _check_cost(db: asyncpg.Connection, events: list[UsageEvent]) -> None:
    """The ledger's total is the events' to the last decimal: no float on the way."""
    exact = sum((e.cost_usd for e in events if e.cost_usd is not None), Decimal(0))
    stored = await db.fetchval("SELECT sum(cost_usd) FROM usage_events")
    if stored != exact:
        raise RuntimeError(f"ledger cost {stored} != events' {exact}")


async def _measure(
    count: int, landed: Callable[[], Awaitable[int]], process: psutil.Process
) -> tuple[float, float, float]:
    """(events/s between 10% and 90% landed, CPU µs per event overall, peak RSS MB)."""
    cpu_start = _cpu(process)
    marks: dict[int, float] = {}
    deadline = time.monotonic() + 600
    done = 0
    while done < count and time.monotonic() < deadline:
        done = await landed()
        now = time.monotonic()
        for pct in (10, 90):
            if pct not in marks and done >= count * pct / 100:
                marks[pct] = now
                marks[-pct] = done
        await asyncio.sleep(0.05)
    if done < count:
        raise RuntimeError(f"only {done:,} of {count:,} events landed")
    cpu_us = (_cpu(process) - cpu_start) / count * 1e6
    rate = (marks[-90] - marks[-10]) / max(marks[90] - marks[10], 1e-9)
    return rate, cpu_us, _peak_rss_mb(process.pid)


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        hwm = next(line for line in status if line.startswith("VmHWM"))
    return int(hwm.split()[1]) / 1024


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def _rows(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM usage_events"))


async def _lines(path: Path) -> int:
    return await asyncio.to_thread(_count_lines, path)


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


if __name__ == "__main__":
    main()
