"""What one benchmark run found: per-target numbers, the targets checked, the table and files."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from latency import Distribution
from throughput import WrkResult

# The gateway's budget relative to the floor (see bench/README.md).
CPU_RATIO_MAX = 1.25
ADDED_P50_SLACK_MS = 0.2
ADDED_TTFB_SLACK_MS = 0.3
CHUNK_CPU_RATIO_MAX = 1.25
# The SSE tap's own cost per chunk against everything a proxy spends per chunk: parsing every
# chunk's JSON again (the bug of issue 9) takes it past this.
TAP_SHARE_MAX = 0.07
RSS_MAX_MB = 80.0
# Busier than this (whole machine, over one second) before a target's phase: noisy numbers.
QUIET_BUSY_MAX = 0.05


@dataclass(frozen=True, slots=True)
class TargetResult:
    """Everything measured against one target. Proxy-only fields are None for `direct`."""

    name: str
    latency: Distribution
    ttfb: Distribution
    throughput: WrkResult
    cpu_us_per_request: float | None = None  # over the wrk run (concurrency 64)
    cpu_us_per_request_c1: float | None = None  # over the latency run (concurrency 1)
    cpu_us_per_chunk: float | None = None  # over the long concurrent streams (bench/streams.py)
    tap_us_per_chunk: float | None = None  # gateway: the SSE tap alone (bench/sse_tap.py)
    # gateway: an Anthropic stream's parse + translation alone (bench/translate.py)
    translate_us_per_chunk: float | None = None
    cpu_busy: float | None = None  # proxy CPU seconds per wall second during the wrk run
    peak_rss_mb: float | None = None
    background_cpu: float = 0.0  # machine busy fraction just before (noise from other work)
    foreign_on_proxy_core: float = 0.0  # share of the proxy's core other processes used (wrk run)


@dataclass(frozen=True, slots=True)
class Metering:
    """Events that reached Redis during the gateway phase, against the requests it served."""

    events: int
    requests_completed: int
    allowance: int  # requests wrk may have left in flight when it stopped (still metered)

    @property
    def ok(self) -> bool:
        return self.requests_completed <= self.events <= self.requests_completed + self.allowance


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    measured: float
    limit: float
    per_round: tuple[float, ...] = ()  # the measured value of each round, when there were several

    @property
    def passed(self) -> bool:
        return self.measured <= self.limit


def checks(direct: TargetResult, floor: TargetResult, gateway: TargetResult) -> list[Check]:
    def added(result: TargetResult, series: str) -> float:
        return float(getattr(result, series).p50_ms - getattr(direct, series).p50_ms)

    floor_cpu = floor.cpu_us_per_request or math.nan
    floor_chunk_cpu = floor.cpu_us_per_chunk or math.nan
    return [
        Check("CPU/request gateway/floor", (gateway.cpu_us_per_request or 0) / floor_cpu,
              CPU_RATIO_MAX),
        Check("added p50 ms (gateway)", added(gateway, "latency"),
              added(floor, "latency") + ADDED_P50_SLACK_MS),
        Check("added stream TTFB p50 ms (gateway)", added(gateway, "ttfb"),
              added(floor, "ttfb") + ADDED_TTFB_SLACK_MS),
        Check("peak RSS MB (gateway)", gateway.peak_rss_mb or math.inf, RSS_MAX_MB),
        Check("CPU/streamed chunk gateway/floor", (gateway.cpu_us_per_chunk or 0) / floor_chunk_cpu,
              CHUNK_CPU_RATIO_MAX),
        Check("SSE tap µs/chunk / floor's CPU µs/chunk", (gateway.tap_us_per_chunk or 0)
              / floor_chunk_cpu, TAP_SHARE_MAX),
    ]  # fmt: skip


def median_result(rounds: list[TargetResult]) -> TargetResult:
    """One target's results over several rounds, each number the median of its rounds."""
    result: TargetResult = _median(rounds)
    return result


def median_checks(rounds: list[list[Check]]) -> list[Check]:
    """Each check's measured value and limit as the median of its rounds (each round compares
    gateway and floor measured minutes apart, so slow drift of the machine cancels out)."""
    return [
        replace(same[0], measured=statistics.median(c.measured for c in same),
                limit=statistics.median(c.limit for c in same),
                per_round=tuple(c.measured for c in same) if len(same) > 1 else ())
        for same in zip(*rounds, strict=True)
    ]  # fmt: skip


def _median(items: list[Any]) -> Any:
    first = items[0]
    if is_dataclass(first) and not isinstance(first, type):
        return replace(first, **{f.name: _median([getattr(i, f.name) for i in items])
                                 for f in fields(first)})  # fmt: skip
    if isinstance(first, int | float) and not isinstance(first, bool):
        return statistics.median(items)
    return first


def render(results: list[TargetResult], found: list[Check], meterings: list[Metering]) -> str:
    direct = results[0]
    lines = [
        "| target | p50 ms | p99 ms | +p50 ms | +p99 ms | TTFB p50 | TTFB p99 | +TTFB p50 "
        "| +TTFB p99 | req/s @64 | CPU µs/req @64 | CPU busy @64 | CPU µs/req @1 "
        "| CPU µs/chunk | peak RSS MB |",
        "|---|" + "---:|" * 14,
    ]
    for r in results:
        is_direct = r is direct
        lines.append(
            "| "
            + " | ".join(
                [
                    r.name,
                    f"{r.latency.p50_ms:.3f}",
                    f"{r.latency.p99_ms:.3f}",
                    "—" if is_direct else f"{r.latency.p50_ms - direct.latency.p50_ms:+.3f}",
                    "—" if is_direct else f"{r.latency.p99_ms - direct.latency.p99_ms:+.3f}",
                    f"{r.ttfb.p50_ms:.3f}",
                    f"{r.ttfb.p99_ms:.3f}",
                    "—" if is_direct else f"{r.ttfb.p50_ms - direct.ttfb.p50_ms:+.3f}",
                    "—" if is_direct else f"{r.ttfb.p99_ms - direct.ttfb.p99_ms:+.3f}",
                    f"{r.throughput.requests_per_s:,.0f}",
                    _optional(r.cpu_us_per_request, "{:.0f}"),
                    _optional(r.cpu_busy, "{:.0%}"),
                    _optional(r.cpu_us_per_request_c1, "{:.0f}"),
                    _optional(r.cpu_us_per_chunk, "{:.1f}"),
                    _optional(r.peak_rss_mb, "{:.1f}"),
                ]
            )
            + " |"
        )
    lines.append("")
    for check in found:
        verdict = "PASS" if check.passed else "MISS"
        rounds = f"; rounds: {', '.join(f'{m:.3f}' for m in check.per_round)}"
        lines.append(
            f"- {verdict} {check.name}: {check.measured:.3f} (limit {check.limit:.3f}"
            f"{rounds if check.per_round else ''})"
        )
    for r in results:
        if r.tap_us_per_chunk is not None:
            lines.append(
                f"- the SSE tap alone (bench/sse_tap.py): {r.tap_us_per_chunk:.2f} µs/chunk"
            )
        if r.translate_us_per_chunk is not None:
            lines.append(
                "- an Anthropic stream's translation alone (bench/translate.py): "
                f"{r.translate_us_per_chunk:.2f} µs/chunk"
            )
    noisy = [r for r in results if r.background_cpu > QUIET_BUSY_MAX]
    if noisy:
        busy = ", ".join(f"{r.name} {r.background_cpu:.0%}" for r in noisy)
        lines.append(f"- NOISE: the machine was busy with other work before: {busy}")
    crowded = [r for r in results if r.foreign_on_proxy_core > QUIET_BUSY_MAX]
    if crowded:
        busy = ", ".join(f"{r.name} {r.foreign_on_proxy_core:.0%}" for r in crowded)
        lines.append(f"- NOISE: other processes used the proxy's core during wrk: {busy}")
    for metering in meterings:
        verdict = "OK" if metering.ok else "FAIL"
        lines.append(
            f"- metering {verdict}: {metering.events} events in Redis for "
            f"{metering.requests_completed} completed gateway requests "
            f"(+ up to {metering.allowance} cut off by wrk's stop)"
        )
    return "\n".join(lines)


def save(
    directory: Path,
    table: str,
    *,
    results: list[TargetResult],
    found: list[Check],
    meterings: list[Metering],
    rounds: list[list[TargetResult]],
    plan: dict[str, Any],
) -> Path:
    """Write `<stamp>.md` and `<stamp>.json` into `directory`; returns the JSON path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (directory / f"{stamp}.md").write_text(table + "\n")
    document = {
        "at": stamp,
        "plan": plan,
        "targets": [asdict(r) for r in results],
        "checks": [{**asdict(c), "passed": c.passed} for c in found],
        "metering": [{**asdict(m), "ok": m.ok} for m in meterings],
        "rounds": [[asdict(r) for r in round_results] for round_results in rounds],
    }
    path = directory / f"{stamp}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def _optional(value: float | None, template: str) -> str:
    return "—" if value is None else template.format(value)
