"""The NDJSON sink: every event a line, durably, acknowledged only after; poison to the DLQ."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from llm_gateway_common.events import decode_event, encode_event
from tests.conftest import CollectorFactory
from tests.support.events import ROUTED, make_event, produce


async def until(check: object, what: str, deadline: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while not await check():  # type: ignore[operator]
        if loop.time() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


async def pending(redis: aioredis.Redis, stream: str, group: str = "collector") -> int:
    summary = await redis.xpending(stream, group)
    return int(summary["pending"])


async def test_events_are_appended_to_a_file_exactly_as_encoded(
    collector_factory: CollectorFactory, redis: aioredis.Redis, stream_name: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"")  # appended to, never truncated
    events = [make_event(i, **(ROUTED if i % 5 == 0 else {})) for i in range(250)]
    await produce(redis, stream_name, events)
    collector_factory(EVENTS_STREAM=stream_name, EVENT_LOG_PATH=str(path))

    async def all_written() -> bool:
        return len(lines(path)) >= len(events)

    await until(all_written, "every event in the file")
    assert lines(path) == [encode_event(e) for e in events]
    routed = orjson.loads(lines(path)[0])
    assert (routed["provider_name"], routed["attempts"], routed["failed_targets"]) == (
        "azure-eu", 3, ["openai-us", "openai-us"],
    )  # fmt: skip
    await until(lambda: _zero(pending(redis, stream_name)), "every entry acknowledged")


async def test_a_coding_session_is_carried_and_its_absence_written_as_null(
    collector_factory: CollectorFactory, redis: aioredis.Redis, stream_name: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.ndjson"
    session = "3f0c5a52-9b8e-4d1e-a6c2-7e4b1d9f0a38"
    events = [make_event(0, session_id=session), make_event(1)]
    await produce(redis, stream_name, events)
    collector_factory(EVENTS_STREAM=stream_name, EVENT_LOG_PATH=str(path))

    async def all_written() -> bool:
        return len(lines(path)) >= len(events)

    await until(all_written, "both events in the file")
    assert lines(path) == [encode_event(e) for e in events]
    assert [orjson.loads(line)["session_id"] for line in lines(path)] == [session, None]
    assert [decode_event(line).session_id for line in lines(path)] == [session, None]


async def _zero(count: object) -> bool:
    return await count == 0  # type: ignore[misc]


async def test_stdout_gets_only_events_and_logs_go_to_stderr(
    collector_factory: CollectorFactory, redis: aioredis.Redis, stream_name: str
) -> None:
    events = [make_event(i) for i in range(20)]
    collector = collector_factory(EVENTS_STREAM=stream_name)
    await produce(redis, stream_name, events)

    async def all_out() -> bool:
        return len(collector.stdout_text().splitlines()) >= len(events)

    await until(all_out, "events on stdout")
    written = [decode_event(line) for line in collector.stdout_text().splitlines()]
    assert [e.event_id for e in written] == [e.event_id for e in events]
    assert "consumer_group_created" in collector.stderr_path.read_text()


async def test_poison_entries_go_to_the_dead_letter_stream_and_the_rest_flows(
    collector_factory: CollectorFactory, redis: aioredis.Redis, stream_name: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.ndjson"
    good = [make_event(i) for i in range(3)]
    await produce(redis, stream_name, good[:1])
    await redis.xadd(stream_name, {"data": b"{not json"})
    await redis.xadd(stream_name, {"something": b"else"})
    await redis.xadd(stream_name, {"data": orjson.dumps({"event_id": "x", "tenant": 5})})
    await produce(redis, stream_name, good[1:])
    collector = collector_factory(EVENTS_STREAM=stream_name, EVENT_LOG_PATH=str(path))

    async def good_written() -> bool:
        return len(lines(path)) == 3

    await until(good_written, "the good events")
    dead = await redis.xrange(f"{stream_name}:dlq", "-", "+")
    assert len(dead) == 3
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert all(reason.startswith("undecodable entry") for reason in reasons)
    assert dead[0][1][b"data"] == b"{not json"
    await until(lambda: _zero(pending(redis, stream_name)), "poison acknowledged too")
    assert "entries_dead_lettered" in collector.log_text()


async def test_sigterm_finishes_and_acknowledges_then_exits(
    collector_factory: CollectorFactory, redis: aioredis.Redis, stream_name: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.ndjson"
    collector = collector_factory(EVENTS_STREAM=stream_name, EVENT_LOG_PATH=str(path))
    await produce(redis, stream_name, [make_event(i) for i in range(100)])

    async def written() -> bool:
        return len(lines(path)) == 100

    await until(written, "events written")
    assert await asyncio.to_thread(collector.terminate) == 0
    assert await pending(redis, stream_name) == 0


async def test_redis_outage_the_collector_waits_and_resumes_by_itself(
    collector_factory: CollectorFactory, tmp_path: Path
) -> None:
    from tests.support.servers import LocalRedis  # noqa: PLC0415

    server = LocalRedis().start()
    path = tmp_path / "events.ndjson"
    try:
        collector = collector_factory(REDIS_URL=server.url, EVENT_LOG_PATH=str(path),
                                      REDIS_TIMEOUT="0.5")  # fmt: skip
        client = aioredis.Redis.from_url(server.url)
        await produce(client, "llm-gateway:events", [make_event(i) for i in range(10)])

        async def count_is(n: int) -> bool:
            return len(lines(path)) == n

        await until(lambda: count_is(10), "events before the outage")
        server.stop()  # no persistence: it comes back empty, without the stream or the group
        await asyncio.sleep(1.0)
        server.start()
        await client.aclose()
        client = aioredis.Redis.from_url(server.url)
        await produce(client, "llm-gateway:events", [make_event(i) for i in range(5)])
        await until(lambda: count_is(15), "events after Redis returned")
        await client.aclose()
        log = collector.log_text()
        assert "redis_unavailable" in log
        assert "consumer_group_missing_recreating" in log or "consumer_group_created" in log
    finally:
        server.stop()


async def test_progress_lines_report_counts_and_lag_without_flooding(
    collector_factory: CollectorFactory, redis: aioredis.Redis, stream_name: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.ndjson"
    collector = collector_factory(EVENTS_STREAM=stream_name, EVENT_LOG_PATH=str(path),
                                  COLLECTOR_PROGRESS_INTERVAL="0.3")  # fmt: skip
    await produce(redis, stream_name, [make_event(i) for i in range(40)])

    async def reported() -> bool:
        lines = [line for line in collector.log_lines() if line.get("event") == "progress"]
        return any(line["delivered"] == 40 and line["lag"] == 0 for line in lines)

    await until(reported, "a progress line with 40 delivered and no lag")
    lines = [line for line in collector.log_lines() if line.get("event") == "progress"]
    assert all({"batches", "delivered", "dead_lettered", "retries", "lag"} <= set(line)
               for line in lines)  # fmt: skip
