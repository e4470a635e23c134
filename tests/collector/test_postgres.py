"""The Postgres ledger: every event exactly once, through crashes, outages and redelivery."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from llm_gateway_collector.ledger_schema import (
    column_arrays,
    event_columns,
    insert_statement,
    migrate,
)
from llm_gateway_common.events import UsageEvent
from tests.collector.test_ndjson import pending, until
from tests.conftest import CollectorFactory
from tests.support.events import ROUTED, make_event, produce
from tests.support.postgres import LocalPostgres

ROUTING_COLUMNS = ("provider_name", "upstream_model", "attempts", "failed_targets")
TRACE_COLUMNS = ("trace_id",)  # schema 3
COST_COLUMNS = ("cache_write_tokens", "cost_usd", "price_source")  # schema 4
SESSION_COLUMNS = ("session_id",)  # schema 5
SESSION_ID = "3f0c5a52-9b8e-4d1e-a6c2-7e4b1d9f0a38"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


async def rows_for(db: asyncpg.Connection, tenant_prefix: str) -> list[asyncpg.Record]:
    query = ("SELECT event_id, count(*) OVER (PARTITION BY event_id) AS copies "
             "FROM usage_events WHERE tenant LIKE $1")  # fmt: skip
    return await db.fetch(query, tenant_prefix + "%")


async def test_batches_land_once_and_redelivery_does_not_double_count(
    collector_factory: CollectorFactory,
    redis: aioredis.Redis,
    db: asyncpg.Connection,
    database_url: str,
    stream_name: str,
) -> None:
    tenant = f"ledger-{stream_name[-8:]}"
    events = [make_event(i, tenant=f"{tenant}-{i % 2}", **(ROUTED if i % 5 == 0 else {}))
              for i in range(300)]  # fmt: skip
    await produce(redis, stream_name, events + events[:50])  # the proxy may repeat an event
    collector_factory(EVENTS_STREAM=stream_name, COLLECTOR_SINK="postgres",
                      DATABASE_URL=database_url)  # fmt: skip

    async def landed() -> bool:
        return len(await rows_for(db, tenant)) == 300 and await pending(redis, stream_name) == 0

    await until(landed, "300 rows")
    rows = await rows_for(db, tenant)
    assert {r["event_id"] for r in rows} == {e.event_id for e in events}
    assert all(r["copies"] == 1 for r in rows)
    for event in (events[7], events[10]):  # one served directly, one routed
        stored = await db.fetchrow("SELECT * FROM usage_events WHERE event_id = $1",
                                   event.event_id)  # fmt: skip
        assert stored is not None
        for name in ("request_id", "tenant", "model", "prompt_tokens", "total_tokens", "outcome",
                     "started_at", "latency_ms", "usage_source", "provider", "provider_name",
                     "upstream_model", "attempts"):  # fmt: skip
            assert stored[name] == getattr(event, name), name
        assert stored["failed_targets"] == list(event.failed_targets)
    # What an SRE asks of it: which providers failed requests, and how often.
    failing = await db.fetch("SELECT target, count(*) FROM usage_events, "
                             "unnest(failed_targets) AS target WHERE tenant LIKE $1 "
                             "GROUP BY target", tenant + "%")  # fmt: skip
    assert [tuple(r) for r in failing] == [("openai-us", 120)]  # 60 routed events, 2 failures each


async def test_a_schema_1_ledger_is_upgraded_in_place(db: asyncpg.Connection,
                                                      database_url: str) -> None:  # fmt: skip
    schema = f"ledger_v1_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE SCHEMA {schema}")
    settings = {"search_path": schema}
    replicas = [await asyncpg.connect(database_url, server_settings=settings) for _ in range(2)]
    try:
        old = replicas[0]
        await old.execute(f"CREATE TABLE usage_events ({SCHEMA_1_COLUMNS})")
        before = make_event(1)
        await old.execute(*schema_1_insert(before))

        await asyncio.gather(*(migrate(c) for c in replicas))  # two collectors start at once
        await migrate(old)  # and again: idempotent

        columns = {r["column_name"]: tuple(r)[1:] for r in await old.fetch(
            "SELECT column_name, data_type, is_nullable, column_default FROM "
            "information_schema.columns WHERE (table_schema, table_name) = ($1, 'usage_events')",
            schema)}  # fmt: skip
        assert [columns[n] for n in ROUTING_COLUMNS] == [
            ("text", "YES", None), ("text", "YES", None), ("bigint", "NO", "0"),
            ("ARRAY", "NO", "'{}'::text[]"),
        ]  # fmt: skip
        assert set(columns) == {"ingested_at", *(name for name, _ in event_columns())}
        assert await routing_of(old, before) == [None, None, 0, []]  # as a schema 1 event decodes
        during = make_event(2)  # a collector of the previous version, mid rolling upgrade
        await old.execute(*schema_1_insert(during))
        assert await routing_of(old, during) == [None, None, 0, []]
        after = make_event(3, **ROUTED)
        await old.execute(insert_statement(), *column_arrays([after]))
        assert await routing_of(old, after) == ["azure-eu", "gpt-4o-eu", 3, ["openai-us"] * 2]
        assert await old.fetchval("SELECT sum(requests) FROM usage_daily") == 3
    finally:
        for connection in replicas:
            await connection.close()
        await db.execute(f"DROP SCHEMA {schema} CASCADE")


# The ledger as the schema 1 collector created it: every column nullable, no routing columns.
LATER_COLUMNS = ROUTING_COLUMNS + TRACE_COLUMNS + COST_COLUMNS + SESSION_COLUMNS
SCHEMA_1 = [(name, sql_type) for name, sql_type in event_columns()
            if name not in LATER_COLUMNS]  # fmt: skip
SCHEMA_1_COLUMNS = ", ".join(
    ["event_id text PRIMARY KEY", "ingested_at timestamptz NOT NULL DEFAULT now()"]
    + [f'"{name}" {sql_type}' for name, sql_type in SCHEMA_1 if name != "event_id"]
)


def schema_1_insert(event: UsageEvent, columns: list[tuple[str, str]] = SCHEMA_1) -> list[object]:
    """An older collector's INSERT of one event: only the columns it knew (schema 1's unless
    told)."""
    names = ", ".join(f'"{name}"' for name, _ in columns)
    values = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    statement = f"INSERT INTO usage_events ({names}) VALUES ({values})"
    return [statement, *(getattr(event, name) for name, _ in columns)]


async def routing_of(db: asyncpg.Connection, event: UsageEvent) -> list[object]:
    row = await db.fetchrow(f"SELECT {', '.join(ROUTING_COLUMNS)} FROM usage_events "
                            "WHERE event_id = $1", event.event_id)  # fmt: skip
    assert row is not None
    return list(row)


async def test_a_schema_2_ledger_gets_the_trace_id_column(db: asyncpg.Connection,
                                                          database_url: str) -> None:  # fmt: skip
    schema = f"ledger_v2_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE SCHEMA {schema}")
    old = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        await migrate(old)
        await old.execute('ALTER TABLE usage_events DROP COLUMN "trace_id"')  # as schema 2 left it
        before = make_event(1)
        await old.execute(*schema_1_insert(before))  # an older collector's row
        await migrate(old)
        column = await old.fetchrow(
            "SELECT data_type, is_nullable FROM information_schema.columns WHERE "
            "(table_schema, table_name, column_name) = ($1, 'usage_events', 'trace_id')",
            schema,
        )
        assert column is not None and tuple(column) == ("text", "YES")
        after = make_event(2, trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
        await old.execute(insert_statement(), *column_arrays([after]))
        rows = await old.fetch("SELECT event_id, trace_id FROM usage_events")
        assert {r["event_id"]: r["trace_id"] for r in rows} == {
            before.event_id: None, after.event_id: after.trace_id}  # fmt: skip
    finally:
        await old.close()
        await db.execute(f"DROP SCHEMA {schema} CASCADE")


# The columns a schema 4 collector knew: all but the session.
SCHEMA_4 = [(name, sql_type) for name, sql_type in event_columns()
            if name not in SESSION_COLUMNS]  # fmt: skip


async def test_a_schema_4_ledger_gets_the_session_id_column_and_its_index(
    db: asyncpg.Connection, database_url: str
) -> None:
    schema = f"ledger_v4_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE SCHEMA {schema}")
    old = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        await migrate(old)
        await old.execute("DROP INDEX usage_events_session_id")  # as schema 4 left it
        await old.execute('ALTER TABLE usage_events DROP COLUMN "session_id"')
        before = make_event(1, **ROUTED)
        await old.execute(*schema_1_insert(before, SCHEMA_4))  # a schema 4 collector's row
        await migrate(old)
        column = await old.fetchrow(
            "SELECT data_type, is_nullable FROM information_schema.columns WHERE "
            "(table_schema, table_name, column_name) = ($1, 'usage_events', 'session_id')",
            schema,
        )
        assert column is not None and tuple(column) == ("text", "YES")
        during = make_event(2)  # a schema 4 collector still inserting, mid rolling upgrade
        await old.execute(*schema_1_insert(during, SCHEMA_4))
        after = make_event(3, session_id=SESSION_ID)
        await old.execute(insert_statement(), *column_arrays([after]))
        rows = await old.fetch("SELECT event_id, session_id FROM usage_events")
        assert {r["event_id"]: r["session_id"] for r in rows} == {
            before.event_id: None, during.event_id: None, after.event_id: SESSION_ID}  # fmt: skip
        index = await old.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE (schemaname, indexname) = "
            "($1, 'usage_events_session_id')", schema)  # fmt: skip
        assert index is not None and "WHERE (session_id IS NOT NULL)" in index
        await old.execute("SET enable_seqscan = off")  # a few rows: the planner would scan them
        plan = await old.fetch(
            "EXPLAIN SELECT sum(total_tokens) FROM usage_events WHERE session_id = 'x'"
        )
        assert "usage_events_session_id" in "\n".join(r[0] for r in plan)
    finally:
        await old.close()
        await db.execute(f"DROP SCHEMA {schema} CASCADE")


async def test_a_coding_sessions_usage_lands_in_the_ledger(
    collector_factory: CollectorFactory,
    redis: aioredis.Redis,
    db: asyncpg.Connection,
    database_url: str,
    stream_name: str,
) -> None:
    tenant = f"session-{stream_name[-8:]}"
    sessions = [str(uuid.uuid4()) for _ in range(2)]
    events = [make_event(i, tenant=tenant, session_id=sessions[i % 3] if i % 3 < 2 else None)
              for i in range(30)]  # fmt: skip
    await produce(redis, stream_name, events)
    collector_factory(EVENTS_STREAM=stream_name, COLLECTOR_SINK="postgres",
                      DATABASE_URL=database_url)  # fmt: skip

    async def landed() -> bool:
        return len(await rows_for(db, tenant)) == 30

    await until(landed, "30 rows")
    # What a platform team asks of it: the usage of each coding session.
    rows = await db.fetch("SELECT session_id, count(*), sum(total_tokens) FROM usage_events "
                          "WHERE tenant = $1 GROUP BY session_id", tenant)  # fmt: skip
    expected: dict[str | None, tuple[int, int]] = {}
    for e in events:
        count, tokens = expected.get(e.session_id, (0, 0))
        expected[e.session_id] = (count + 1, tokens + e.total_tokens)
    assert {r["session_id"]: (r["count"], r["sum"]) for r in rows} == expected
    assert set(expected) == {*sessions, None}


async def test_usage_daily_view_and_indexes(
    collector_factory: CollectorFactory,
    redis: aioredis.Redis,
    db: asyncpg.Connection,
    database_url: str,
    stream_name: str,
) -> None:
    tenant = f"daily-{stream_name[-8:]}"
    events = [make_event(i, tenant=tenant, model="gpt-4o", prompt_tokens=10, completion_tokens=2,
                         total_tokens=12, outcome="ok" if i % 4 else "upstream_error")
              for i in range(8)]  # fmt: skip
    await produce(redis, stream_name, events)
    collector_factory(EVENTS_STREAM=stream_name, COLLECTOR_SINK="postgres",
                      DATABASE_URL=database_url)  # fmt: skip

    async def landed() -> bool:
        return len(await rows_for(db, tenant)) == 8

    await until(landed, "8 rows")
    daily = await db.fetchrow("SELECT * FROM usage_daily WHERE tenant = $1", tenant)
    assert daily is not None
    assert (daily["requests"], daily["errors"]) == (8, 2)
    assert (daily["prompt_tokens"], daily["completion_tokens"], daily["total_tokens"]) == (
        80,
        16,
        96,
    )
    assert daily["day"] == events[0].started_at.date()
    indexes = {r["indexname"] for r in await db.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'usage_events'")}  # fmt: skip
    assert {"usage_events_tenant_time", "usage_events_model_time",
            "usage_events_session_id"} <= indexes  # fmt: skip
    plan = await db.fetchval(
        "EXPLAIN SELECT * FROM usage_events WHERE tenant = 'x' AND started_at > now()"
    )
    assert "usage_events_tenant_time" in plan or "Bitmap" in plan


async def test_migrations_are_safe_from_several_replicas_at_once() -> None:
    server = LocalPostgres().start()
    try:
        connections = [await asyncpg.connect(server.dsn) for _ in range(4)]
        await asyncio.gather(*(migrate(c) for c in connections))
        await asyncio.gather(*(migrate(c) for c in connections))  # and again: idempotent
        count = await connections[0].fetchval("SELECT count(*) FROM usage_events")
        assert count == 0
        for connection in connections:
            await connection.close()
    finally:
        server.destroy()


async def test_postgres_outage_mid_run_loses_nothing(
    collector_factory: CollectorFactory, redis: aioredis.Redis, stream_name: str
) -> None:
    # Durable (fsync, synchronous commit) and stopped like a crash: what was committed stays.
    server = LocalPostgres(durable=True).start()
    try:
        collector = collector_factory(EVENTS_STREAM=stream_name, COLLECTOR_SINK="postgres",
                                      DATABASE_URL=server.dsn, DATABASE_TIMEOUT="1")  # fmt: skip
        db = await asyncpg.connect(server.dsn)
        first = [make_event(i) for i in range(200)]
        await produce(redis, stream_name, first)

        async def count_is(n: int) -> bool:
            return await db.fetchval("SELECT count(*) FROM usage_events") == n

        await until(lambda: count_is(200), "first 200 rows")
        await db.close()
        server.stop()
        second = [make_event(i) for i in range(300)]
        await produce(redis, stream_name, second)

        async def unready() -> bool:
            import aiohttp  # noqa: PLC0415

            async with (
                aiohttp.ClientSession() as http,
                http.get(collector.base_url + "/ready") as r,
            ):
                return r.status == 503

        await until(unready, "/ready to report the database gone")
        assert await pending(redis, stream_name) > 0, "nothing may be acknowledged while down"
        server.start()
        db = await asyncpg.connect(server.dsn)
        await until(lambda: count_is(500), "all 500 rows after Postgres returned")
        assert await db.fetchval("SELECT count(DISTINCT event_id) FROM usage_events") == 500
        await db.close()
        await until(lambda: _none_pending(redis, stream_name), "everything acknowledged")
        assert "sink_unavailable" in collector.log_text()
        assert "sink_recovered" in collector.log_text()
    finally:
        server.destroy()


async def _none_pending(redis: aioredis.Redis, stream: str) -> bool:
    return await pending(redis, stream) == 0


async def test_kill_9_repeatedly_while_events_flow_every_event_lands_exactly_once(
    collector_factory: CollectorFactory,
    redis: aioredis.Redis,
    db: asyncpg.Connection,
    database_url: str,
    stream_name: str,
) -> None:
    tenant = f"crash-{stream_name[-8:]}"
    total = 6000
    events = [make_event(i, tenant=tenant) for i in range(total)]
    settings = {"EVENTS_STREAM": stream_name, "COLLECTOR_SINK": "postgres",
                "DATABASE_URL": database_url, "COLLECTOR_BATCH_SIZE": "200",
                "COLLECTOR_CLAIM_IDLE_MS": "500"}  # fmt: skip

    async def producer() -> None:
        for start in range(0, total, 100):
            await produce(redis, stream_name, events[start : start + 100])
            await asyncio.sleep(0.01)

    producing = asyncio.create_task(producer())
    rng = random.Random(7)
    kills = 0
    while not producing.done() or kills < 6:
        # Alternate names: a restarted pod keeps its name (own pending re-read) or gets a new
        # one (the dead consumer's pending entries must be reclaimed with XAUTOCLAIM).
        name = "replica-a" if kills % 2 == 0 else f"replica-{kills}"
        collector = collector_factory(**settings, COLLECTOR_CONSUMER=name)
        await asyncio.sleep(rng.uniform(0.1, 0.5))
        collector.kill()
        kills += 1
    await producing
    collector_factory(**settings, COLLECTOR_CONSUMER="replica-final")

    async def all_landed() -> bool:
        return (
            await db.fetchval("SELECT count(*) FROM usage_events WHERE tenant = $1", tenant)
            == total
            and await pending(redis, stream_name) == 0
        )

    await until(all_landed, f"all {total} events after {kills} kill -9s", deadline=60)
    duplicates = await db.fetchval(
        "SELECT count(*) - count(DISTINCT event_id) FROM usage_events WHERE tenant = $1", tenant
    )
    assert duplicates == 0
    assert kills >= 6
