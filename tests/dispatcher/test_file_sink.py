"""The JSONL file sink, with the dispatcher as a process on a real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import redis.asyncio as aioredis

from llm_gateway_common.events import encode_event
from tests.collector.test_ndjson import lines, pending, until
from tests.dispatcher.conftest import DispatcherFactory, dead_letters
from tests.support.events import ROUTED, make_event, produce


async def test_every_event_is_appended_as_its_own_json_line_and_acknowledged(
    dispatcher_factory: DispatcherFactory, redis: aioredis.Redis, stream_name: str,
    tmp_path: Path, http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"")  # appended to, never truncated
    events = [make_event(i, **(ROUTED if i % 5 == 0 else {})) for i in range(300)]
    await produce(redis, stream_name, events[:120])
    dispatcher = dispatcher_factory(DISPATCHER_ENDPOINT=str(path), DISPATCHER_BATCH_SIZE="50")
    await produce(redis, stream_name, events[120:])

    async def all_written() -> bool:
        return len(lines(path)) >= len(events)

    await until(all_written, "every event in the file")
    assert lines(path) == [encode_event(e) for e in events]
    routed = orjson.loads(lines(path)[0])
    assert (routed["provider_name"], routed["attempts"], routed["failed_targets"]) == (
        "azure-eu", 3, ["openai-us", "openai-us"],
    )  # fmt: skip

    async def all_acknowledged() -> bool:
        return await pending(redis, stream_name, "dispatcher") == 0

    await until(all_acknowledged, "every entry acknowledged")
    async with http.get(f"{dispatcher.base_url}/ready") as response:
        assert response.status == 200
        assert await response.json() == {"redis": True, "sink": True}
    assert await dead_letters(redis, stream_name) == []


async def test_undecodable_entries_go_to_the_dead_letter_stream_with_the_reason(
    dispatcher_factory: DispatcherFactory, redis: aioredis.Redis, stream_name: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    good = [make_event(i) for i in range(2)]
    await produce(redis, stream_name, good[:1])
    await redis.xadd(stream_name, {"data": b"{not json"})
    await produce(redis, stream_name, good[1:])
    dispatcher = dispatcher_factory(DISPATCHER_ENDPOINT=str(path))

    async def settled() -> bool:  # the dead letter may land just after the good lines
        return len(lines(path)) == 2 and len(await dead_letters(redis, stream_name)) == 1

    await until(settled, "the good events written and the bad one dead-lettered")
    dead = await dead_letters(redis, stream_name)
    assert [fields[b"data"] for fields in dead] == [b"{not json"]
    assert dead[0][b"reason"].startswith(b"undecodable entry")
    assert await asyncio.to_thread(dispatcher.terminate) == 0  # SIGTERM: a clean exit
