"""End to end: client -> proxy -> Redis stream -> collectors -> NDJSON file and Postgres ledger."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import asyncpg
import orjson

from llm_gateway_fakes.openai import FakeOpenAI
from tests.collector.test_ndjson import until
from tests.conftest import CollectorFactory, ProxyFactory


async def test_requests_appear_in_ndjson_and_postgres_with_the_clients_request_id(
    proxy_factory: ProxyFactory,
    collector_factory: CollectorFactory,
    upstream: FakeOpenAI,
    http: aiohttp.ClientSession,
    database_url: str,
    stream_name: str,
    tmp_path: Path,
) -> None:
    proxy = proxy_factory(EVENTS_STREAM=stream_name)
    ndjson = tmp_path / "usage.ndjson"
    collector_factory(EVENTS_STREAM=stream_name, COLLECTOR_GROUP="sre-ndjson",
                      EVENT_LOG_PATH=str(ndjson))  # fmt: skip
    collector_factory(EVENTS_STREAM=stream_name, COLLECTOR_SINK="postgres",
                      DATABASE_URL=database_url)  # fmt: skip

    sent: dict[str, dict[str, object]] = {}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}]}
    for stream in (False, True):
        url = f"{proxy.base_url}/v1/chat/completions"
        request = {**body, "stream": stream}
        async with http.post(url, json=request, headers={"X-LLM-Tenant": "e2e"}) as response:
            assert response.status == 200
            await response.read()
            sent[response.headers["X-LLM-Request-ID"]] = {"stream": stream, **upstream.usages[-1]}

    def lines() -> dict[str, dict[str, object]]:
        if not ndjson.exists():
            return {}
        events = [orjson.loads(line) for line in ndjson.read_bytes().splitlines()]
        return {event["request_id"]: event for event in events}

    async def in_ndjson() -> bool:
        return set(lines()) == set(sent)

    await until(in_ndjson, "both requests in the NDJSON file")
    db = await asyncpg.connect(database_url)
    try:

        async def in_postgres() -> bool:
            count = await db.fetchval(
                "SELECT count(*) FROM usage_events WHERE request_id = any($1::text[])", list(sent)
            )
            return bool(count == len(sent))

        await until(in_postgres, "both requests in Postgres")
        for request_id, expected in sent.items():
            row = await db.fetchrow("SELECT * FROM usage_events WHERE request_id = $1", request_id)
            line = lines()[request_id]
            assert row is not None
            for record in (dict(row), line):
                assert record["tenant"] == "e2e"
                assert record["stream"] is expected["stream"]
                assert record["prompt_tokens"] == expected["prompt_tokens"]
                assert record["completion_tokens"] == expected["completion_tokens"] == 8
                assert record["usage_source"] == "provider"
            assert row["event_id"] == line["event_id"]
    finally:
        await db.close()
