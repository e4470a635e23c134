"""The ledger's money: `cost_usd` exact from the event to the views; unpriced requests counted.

Each test runs a real collector into a real Postgres. The session's time zone is set far from
UTC, so a view that grouped by local time instead of UTC would put events in the wrong day or
month.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis

from llm_gateway_collector.ledger_schema import event_columns, migrate
from llm_gateway_common.events import UsageEvent
from tests.collector.test_ndjson import pending, until
from tests.collector.test_postgres import COST_COLUMNS, schema_1_insert
from tests.conftest import CollectorFactory
from tests.support.events import make_event, produce

GENAI_PRICES = "genai-prices 0.2.3"
# Around a month's end in UTC: the events of a run span 31 October to 2 November.
START = datetime(2026, 10, 31, 22, 0, tzinfo=UTC)
FAR_FROM_UTC = {"TimeZone": "Pacific/Kiritimati"}  # UTC+14: already November at START
Group = tuple[date, str | None]  # (UTC day or month, model), for one tenant


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url, server_settings=FAR_FROM_UTC)
    yield connection
    await connection.close()


def cost(i: int) -> Decimal:
    """Deterministic, random-looking: 12 decimals, from a millionth of a cent to $99,999
    (more significant digits than a float holds), some in exponent form (3.81820E-7)."""
    return Decimal((i * 0x9E3779B97F4A7C15) % 10 ** (6 + i % 12)).scaleb(-12)


def event(i: int, tenant: str, **overrides: object) -> UsageEvent:
    started = START + timedelta(minutes=i)
    fields: dict[str, object] = {
        "tenant": tenant, "started_at": started, "finished_at": started,
        "cached_tokens": i % 3, "cache_write_tokens": i % 5, "cost_usd": cost(i),
        "price_source": GENAI_PRICES,
    }  # fmt: skip
    return make_event(i, **{**fields, **overrides})


@dataclass(frozen=True)
class Totals:
    """What the views report for one group, computed in Python from the events."""

    requests: int
    unpriced_requests: int
    cost_usd: Decimal | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_write_tokens: int


def totals(events: list[UsageEvent], key: Callable[[UsageEvent], Group]) -> dict[Group, Totals]:
    groups: dict[Group, list[UsageEvent]] = {}
    for e in events:
        groups.setdefault(key(e), []).append(e)
    return {k: _totals(group) for k, group in groups.items()}


def _totals(events: list[UsageEvent]) -> Totals:
    prices = [e.cost_usd for e in events if e.cost_usd is not None]
    return Totals(
        requests=len(events),
        unpriced_requests=len(events) - len(prices),
        cost_usd=sum(prices, Decimal(0)) if prices else None,  # SQL's sum of no rows: NULL
        prompt_tokens=sum(e.prompt_tokens for e in events),
        completion_tokens=sum(e.completion_tokens for e in events),
        cached_tokens=sum(e.cached_tokens for e in events),
        cache_write_tokens=sum(e.cache_write_tokens for e in events),
    )


def day(e: UsageEvent) -> Group:
    return e.started_at.astimezone(UTC).date(), e.model


def month(e: UsageEvent) -> Group:
    return e.started_at.astimezone(UTC).date().replace(day=1), e.model


async def daily(db: asyncpg.Connection, tenant: str) -> dict[Group, tuple[object, ...]]:
    rows = await db.fetch("SELECT * FROM usage_daily WHERE tenant = $1", tenant)
    return {(r["day"], r["model"]): (r["requests"], r["unpriced_requests"], r["cost_usd"],
                                     r["prompt_tokens"]) for r in rows}  # fmt: skip


async def monthly(db: asyncpg.Connection, tenant: str) -> dict[Group, Totals]:
    rows = await db.fetch("SELECT * FROM spend_monthly WHERE tenant = $1", tenant)
    for r in rows:
        assert r["requests"] == r["priced_requests"] + r["unpriced_requests"]
    return {(r["month"], r["model"]): Totals(*(r[f.name] for f in fields(Totals)))
            for r in rows}  # fmt: skip


def as_daily(expected: dict[Group, Totals]) -> dict[Group, tuple[object, ...]]:
    return {k: (t.requests, t.unpriced_requests, t.cost_usd, t.prompt_tokens)
            for k, t in expected.items()}  # fmt: skip


async def collect(
    collector_factory: CollectorFactory, redis: aioredis.Redis, db: asyncpg.Connection,
    database_url: str, stream_name: str, events: list[UsageEvent],
) -> None:  # fmt: skip
    """Run the events through a collector into the ledger; wait until all landed, acknowledged."""
    await produce(redis, stream_name, events)
    collector_factory(EVENTS_STREAM=stream_name, COLLECTOR_SINK="postgres",
                      DATABASE_URL=database_url)  # fmt: skip
    ids = [e.event_id for e in events]

    async def landed() -> bool:
        count = await db.fetchval("SELECT count(*) FROM usage_events WHERE event_id = ANY($1)",
                                  ids)  # fmt: skip
        return bool(count == len(ids)) and await pending(redis, stream_name) == 0

    await until(landed, f"{len(ids)} rows")


async def test_costs_sum_exactly_in_the_ledger_and_both_views(
    collector_factory: CollectorFactory, redis: aioredis.Redis, db: asyncpg.Connection,
    database_url: str, stream_name: str,
) -> None:  # fmt: skip
    tenant = f"cost-{uuid.uuid4().hex[:8]}"
    events = [event(i, tenant) for i in range(3000)]
    exact = sum((e.cost_usd for e in events if e.cost_usd is not None), Decimal(0))
    # The data would catch a float anywhere on the way: per row and summed.
    assert any(Decimal(repr(float(c))) != c for c in map(cost, range(3000)))
    assert Decimal(repr(sum(float(cost(i)) for i in range(3000)))) != exact
    await collect(collector_factory, redis, db, database_url, stream_name, events)

    rows = await db.fetch("SELECT event_id, cost_usd, price_source, cache_write_tokens "
                          "FROM usage_events WHERE tenant = $1", tenant)  # fmt: skip
    assert {r["event_id"]: tuple(r)[1:] for r in rows} == {
        e.event_id: (e.cost_usd, GENAI_PRICES, e.cache_write_tokens) for e in events}  # fmt: skip
    ledger_sum = await db.fetchval("SELECT sum(cost_usd) FROM usage_events WHERE tenant = $1",
                                   tenant)  # fmt: skip
    assert type(ledger_sum) is Decimal and ledger_sum == exact
    assert ledger_sum.quantize(Decimal("0.01")) == exact.quantize(Decimal("0.01"))
    assert await daily(db, tenant) == as_daily(totals(events, day))
    assert len(await daily(db, tenant)) == 6  # 3 UTC days, 2 models
    assert await monthly(db, tenant) == totals(events, month)
    assert {m for m, _ in await monthly(db, tenant)} == {date(2026, 10, 1), date(2026, 11, 1)}
    per_view = [await db.fetchval(f"SELECT sum(cost_usd) FROM {view} WHERE tenant = $1", tenant)
                for view in ("usage_daily", "spend_monthly")]  # fmt: skip
    assert per_view == [exact, exact]


async def test_events_without_a_price_are_counted_unpriced_not_as_free(
    collector_factory: CollectorFactory, redis: aioredis.Redis, db: asyncpg.Connection,
    database_url: str, stream_name: str,
) -> None:  # fmt: skip
    tenant = f"unpriced-{uuid.uuid4().hex[:8]}"
    unpriced = {"cost_usd": None, "price_source": "none"}
    events = [
        *(event(i, tenant, model="gpt-4o", **(unpriced if i % 4 == 0 else {})) for i in range(40)),
        event(40, tenant, model="gpt-4o", cost_usd=Decimal("0"), price_source="override"),  # free
        *(event(i, tenant, model="in-house-llm", **unpriced) for i in range(41, 51)),
    ]
    await collect(collector_factory, redis, db, database_url, stream_name, events)

    months = await monthly(db, tenant)
    assert months == totals(events, month)
    gpt, in_house = (
        months[(date(2026, 10, 1), "gpt-4o")],
        months[(date(2026, 10, 1), "in-house-llm")],
    )
    assert (gpt.requests, gpt.unpriced_requests) == (41, 10)  # the free one is priced
    assert gpt.cost_usd == sum(cost(i) for i in range(40) if i % 4)
    assert (in_house.requests, in_house.unpriced_requests, in_house.cost_usd) == (10, 10, None)
    assert await daily(db, tenant) == as_daily(totals(events, day))
    sources = await db.fetch("SELECT price_source, count(*), count(cost_usd) FROM usage_events "
                             "WHERE tenant = $1 GROUP BY 1", tenant)  # fmt: skip
    assert {tuple(r) for r in sources} == {(GENAI_PRICES, 30, 30), ("override", 1, 1),
                                           ("none", 20, 0)}  # fmt: skip


# usage_daily as the schema 3 collector created it: the migration must replace it in place.
SCHEMA_3_USAGE_DAILY = """CREATE VIEW usage_daily AS
    SELECT (started_at AT TIME ZONE 'UTC')::date AS day, tenant, model,
           count(*) AS requests,
           count(*) FILTER (WHERE outcome IN ('client_disconnected', 'gateway_error',
               'upstream_error') OR (outcome NOT IN ('client_disconnected', 'gateway_error', 'ok',
               'upstream_error') AND status_code >= 400)) AS errors,
           coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
           coalesce(sum(completion_tokens), 0) AS completion_tokens,
           coalesce(sum(total_tokens), 0) AS total_tokens
    FROM usage_events
    GROUP BY 1, 2, 3"""
SCHEMA_3 = [(name, sql_type) for name, sql_type in event_columns() if name not in COST_COLUMNS]


async def test_a_schema_3_ledger_is_migrated_on_start_and_its_rows_read_unpriced(
    collector_factory: CollectorFactory, redis: aioredis.Redis, db: asyncpg.Connection,
    database_url: str, stream_name: str,
) -> None:  # fmt: skip
    schema = f"ledger_v3_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE SCHEMA {schema}")
    old = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        await migrate(old)  # then take back what schema 4 added
        await old.execute("DROP VIEW spend_monthly, usage_daily")
        drops = ", ".join(f'DROP COLUMN "{name}"' for name in COST_COLUMNS)
        await old.execute(f"ALTER TABLE usage_events {drops}")
        await old.execute(SCHEMA_3_USAGE_DAILY)
        before = event(1, schema)
        await insert_as_schema_3(old, before)

        # asyncpg passes a DSN's unknown query parameters to the server as settings.
        ledger_url = f"{database_url}{'&' if '?' in database_url else '?'}search_path={schema}"
        new = [event(i, schema) for i in range(2, 12)]
        await collect(collector_factory, redis, old, ledger_url, stream_name, new)
        during = event(12, schema)  # a schema 3 collector still inserting, mid rolling upgrade
        await insert_as_schema_3(old, during)

        columns = await old.fetch(
            "SELECT column_name, data_type, is_nullable, column_default FROM "
            "information_schema.columns WHERE (table_schema, table_name) = ($1, 'usage_events') "
            "AND column_name = ANY($2) ORDER BY 1", schema, list(COST_COLUMNS))  # fmt: skip
        assert [tuple(c) for c in columns] == [
            ("cache_write_tokens", "bigint", "NO", "0"), ("cost_usd", "numeric", "YES", None),
            ("price_source", "text", "NO", "'none'::text"),
        ]  # fmt: skip
        rows = await old.fetch("SELECT event_id, cost_usd, price_source, cache_write_tokens "
                               "FROM usage_events")  # fmt: skip
        old_ones = [e.event_id for e in (before, during)]
        assert {r["event_id"]: tuple(r)[1:] for r in rows} == {
            **{e.event_id: (e.cost_usd, GENAI_PRICES, e.cache_write_tokens) for e in new},
            **dict.fromkeys(old_ones, (None, "none", 0)),
        }  # fmt: skip
        ledger = [_as_read(e) if e.event_id in old_ones else e for e in (before, *new, during)]
        assert await monthly(old, schema) == totals(ledger, month)
        assert await daily(old, schema) == as_daily(totals(ledger, day))
    finally:
        await old.close()
        await db.execute(f"DROP SCHEMA {schema} CASCADE")


async def insert_as_schema_3(db: asyncpg.Connection, event: UsageEvent) -> None:
    statement, *values = schema_1_insert(event, SCHEMA_3)
    await db.execute(str(statement), *values)


def _as_read(e: UsageEvent) -> UsageEvent:
    """A row a schema 3 collector wrote, as the migrated ledger reads it (a schema 3 event)."""
    return msgspec.structs.replace(e, cost_usd=None, price_source="none", cache_write_tokens=0)
