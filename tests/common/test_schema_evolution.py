"""An older consumer meets a newer producer's event: values added to the open vocabularies
(`outcome`, `usage_source`) and fields it does not know are read, stored and forwarded, never
dead-lettered, and a new outcome is judged a failure only by the status the client got. And this
version reads schema 1 events (before routing), schema 2 events (before traces), schema 3 events
(before cost), schema 4 events (before sessions) and schema 5 events (before the cache), and
consumers of those schemas read its events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import msgspec
import orjson
import pytest
import redis.asyncio as aioredis

from llm_gateway_common.events import SCHEMA_VERSION, UsageEvent, decode_event, encode_event
from llm_gateway_dispatcher.helicone import log_body, log_headers
from llm_gateway_dispatcher.lunary import run_events
from llm_gateway_dispatcher.outcomes import delivery_id
from llm_gateway_fakes.helicone import LOG_PATH, FakeHelicone
from llm_gateway_fakes.threaded import ThreadedServer
from tests.collector.test_ndjson import lines, until
from tests.conftest import CollectorFactory
from tests.dispatcher.conftest import HELICONE_KEY, DispatcherFactory, dead_letters
from tests.support.events import ROUTED, make_event, produce

ROUTING_FIELDS = ("provider_name", "upstream_model", "attempts", "failed_targets")  # schema 2
TRACE_FIELDS = ("trace_id",)  # schema 3
COST_FIELDS = ("cache_write_tokens", "cost_usd", "price_source")  # schema 4
SESSION_FIELDS = ("session_id",)  # schema 5
CACHE_FIELDS = ("cache_status", "saved_cost_usd")  # schema 6
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SESSION_ID = "3f0c5a52-9b8e-4d1e-a6c2-7e4b1d9f0a38"  # as Claude Code sends it


def newer_event(index: int, **overrides: object) -> bytes:
    """The JSON a newer producer would write: a newer schema, a field this version lacks,
    overrides."""
    data = orjson.loads(encode_event(make_event(index)))
    data |= {"schema_version": SCHEMA_VERSION + 1, "fallback_from": {"provider": "openai"}}
    data |= overrides
    return orjson.dumps(data)


FALLBACK = {"outcome": "fallback", "usage_source": "cache", "status_code": 200}  # succeeded
SHED = {"outcome": "shed", "usage_source": "none", "status_code": 503}  # a new kind of failure


def test_new_vocabulary_and_fields_decode() -> None:
    event = decode_event(newer_event(1, **FALLBACK))
    assert (event.outcome, event.usage_source) == ("fallback", "cache")
    assert event.schema_version == SCHEMA_VERSION + 1
    assert not event.failed
    assert decode_event(newer_event(2, **SHED)).failed


def test_a_schema_1_event_decodes_with_the_routing_fields_at_their_defaults() -> None:
    event = make_event(1)
    data = orjson.loads(encode_event(event))
    for name in ROUTING_FIELDS + TRACE_FIELDS:
        del data[name]
    old = decode_event(orjson.dumps({**data, "schema_version": 1}))
    assert (old.provider_name, old.upstream_model, old.attempts, old.failed_targets) == (
        None, None, 0, ()
    )  # fmt: skip
    assert msgspec.structs.replace(old, schema_version=SCHEMA_VERSION) == event


def test_a_schema_1_consumer_decodes_a_routed_event() -> None:
    routed = make_event(1, **ROUTED)
    data = encode_event(routed)
    assert orjson.loads(data)["failed_targets"] == ["openai-us", "openai-us"]  # a JSON array
    old = schema_1_decoder().decode(data)
    for field in msgspec.structs.fields(old):
        assert getattr(old, field.name) == getattr(routed, field.name), field.name
    assert old.provider == "azure.ai.openai"


def test_a_schema_2_event_decodes_without_a_trace_and_a_schema_2_consumer_reads_one() -> None:
    traced = make_event(1, **ROUTED, trace_id=TRACE_ID)
    data = orjson.loads(encode_event(traced))
    assert data["trace_id"] == TRACE_ID
    del data["trace_id"]
    old = decode_event(orjson.dumps({**data, "schema_version": 2}))
    assert old.trace_id is None
    assert msgspec.structs.replace(old, schema_version=SCHEMA_VERSION, trace_id=TRACE_ID) == traced
    seen_by_schema_2 = older_decoder(
        "UsageEventV2", TRACE_FIELDS + COST_FIELDS + SESSION_FIELDS
    ).decode(encode_event(traced))
    for field in msgspec.structs.fields(seen_by_schema_2):
        assert getattr(seen_by_schema_2, field.name) == getattr(traced, field.name), field.name


def schema_1_decoder() -> msgspec.json.Decoder[msgspec.Struct]:
    """How a consumer built before schema 2 decodes: `UsageEvent` without the routing fields
    (nor the trace, which came after)."""
    return older_decoder("UsageEventV1",
                         ROUTING_FIELDS + TRACE_FIELDS + COST_FIELDS + SESSION_FIELDS)  # fmt: skip


def older_decoder(name: str, missing: tuple[str, ...]) -> msgspec.json.Decoder[msgspec.Struct]:
    """`UsageEvent` as a consumer built before `missing` were added decodes it."""
    fields = [
        (f.name, f.type) if f.required else (f.name, f.type, f.default)
        for f in msgspec.structs.fields(UsageEvent)
        if f.name not in missing
    ]
    shape = msgspec.defstruct(name, fields, kw_only=True, frozen=True)
    return msgspec.json.Decoder(shape)


def test_known_outcomes_keep_their_meaning_whatever_the_status() -> None:
    assert not make_event(1, outcome="ok", status_code=404).failed  # the upstream's own 404
    for outcome in ("upstream_error", "gateway_error", "client_disconnected"):
        assert make_event(1, outcome=outcome, status_code=200).failed, outcome


def test_types_are_still_checked() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.outcome"):
        decode_event(newer_event(1, outcome=7))


def test_lunary_and_helicone_report_a_new_successful_outcome_as_a_success() -> None:
    fallback = decode_event(newer_event(1, **FALLBACK))
    start, end = run_events(fallback)
    assert end["event"] == "end" and end["tokensUsage"]["prompt"] == fallback.prompt_tokens
    assert start["metadata"]["outcome"] == "fallback"
    assert start["metadata"]["usageSource"] == "cache"
    body = log_body(fallback)["providerResponse"]["json"]
    assert "error" not in body and body["usage"]["total_tokens"] == fallback.total_tokens
    assert log_headers(fallback)["Helicone-Property-Outcome"] == "fallback"


def test_lunary_and_helicone_report_a_new_failing_outcome_as_an_error() -> None:
    shed = decode_event(newer_event(1, **SHED))
    *_, last = run_events(shed)
    assert last["event"] == "error" and last["error"] == {"message": "shed (HTTP 503)"}
    assert log_body(shed)["providerResponse"]["json"]["error"]["message"] == "shed"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


async def all_acknowledged(redis: aioredis.Redis, stream: str, group: str) -> bool:
    """The consumer group has read up to the stream's last entry and has nothing pending (the
    dead-lettered are acknowledged too: check the dead-letter stream besides)."""
    last = await redis.xrevrange(stream, count=1)
    groups = {g["name"].decode(): g for g in await redis.xinfo_groups(stream)}
    if group not in groups or not last:
        return False
    return bool(groups[group]["last-delivered-id"] == last[0][0] and not groups[group]["pending"])


async def produce_old_and_new(redis: aioredis.Redis, stream: str, tenant: str) -> list[bytes]:
    """One event as this version writes it, then a newer successful and a newer failed one."""
    old = make_event(0, tenant=tenant)
    await produce(redis, stream, [old])
    newer = [newer_event(1, tenant=tenant, **FALLBACK), newer_event(2, tenant=tenant, **SHED)]
    for data in newer:
        await redis.xadd(stream, {"data": data})
    return [encode_event(old), *newer]


async def test_collector_stores_newer_events_and_counts_only_real_failures(
    collector_factory: CollectorFactory, redis: aioredis.Redis, db: asyncpg.Connection,
    database_url: str, stream_name: str,
) -> None:  # fmt: skip
    tenant = f"evolution-{stream_name[-8:]}"
    await produce_old_and_new(redis, stream_name, tenant)
    collector_factory(EVENTS_STREAM=stream_name, COLLECTOR_SINK="postgres",
                      DATABASE_URL=database_url)  # fmt: skip

    await until(lambda: all_acknowledged(redis, stream_name, "collector"), "all acknowledged")
    assert await dead_letters(redis, stream_name) == []
    rows = await db.fetch("SELECT outcome, usage_source FROM usage_events WHERE tenant = $1 "
                          "ORDER BY outcome", tenant)  # fmt: skip
    assert [tuple(r) for r in rows] == [("fallback", "cache"), ("ok", "provider"),
                                        ("shed", "none")]  # fmt: skip
    daily = await db.fetchrow("SELECT sum(requests), sum(errors) FROM usage_daily "
                              "WHERE tenant = $1", tenant)  # fmt: skip
    assert daily is not None and tuple(daily) == (3, 1)  # `shed` only: `fallback` answered 200


async def test_dispatcher_forwards_newer_events(
    dispatcher_factory: DispatcherFactory, redis: aioredis.Redis, stream_name: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    written = await produce_old_and_new(redis, stream_name, "evolution")
    dispatcher_factory(DISPATCHER_ENDPOINT=str(path))

    await until(lambda: all_acknowledged(redis, stream_name, "dispatcher"), "all acknowledged")
    assert await dead_letters(redis, stream_name) == []
    forwarded = [decode_event(line) for line in lines(path)]
    assert [e.outcome for e in forwarded] == ["ok", "fallback", "shed"]
    assert forwarded[1] == decode_event(written[1])  # all that this version knows, unchanged


def test_a_schema_3_event_decodes_unpriced_and_a_schema_3_consumer_reads_a_priced_one() -> None:
    priced = make_event(1, **ROUTED, cache_write_tokens=4, cost_usd=Decimal("0.000123456789"),
                        price_source="genai-prices 0.2.3")  # fmt: skip
    data = orjson.loads(encode_event(priced))
    assert encode_event(priced).count(b'"cost_usd":0.000123456789') == 1  # a number, exact
    for name in COST_FIELDS:
        del data[name]
    old = decode_event(orjson.dumps({**data, "schema_version": 3}))
    assert (old.cache_write_tokens, old.cost_usd, old.price_source) == (0, None, "none")
    assert decode_event(encode_event(priced)) == priced
    seen_by_schema_3 = older_decoder("UsageEventV3", COST_FIELDS + SESSION_FIELDS).decode(
        encode_event(priced)
    )
    for field in msgspec.structs.fields(seen_by_schema_3):
        assert getattr(seen_by_schema_3, field.name) == getattr(priced, field.name), field.name


def test_a_schema_4_event_decodes_without_a_session_and_a_schema_4_consumer_reads_one() -> None:
    priced = {"cost_usd": Decimal("0.0042"), "price_source": "genai-prices 0.2.3"}
    in_session = make_event(1, **ROUTED, **priced, trace_id=TRACE_ID, session_id=SESSION_ID)
    data = orjson.loads(encode_event(in_session))
    assert data["session_id"] == SESSION_ID
    del data["session_id"]
    old = decode_event(orjson.dumps({**data, "schema_version": 4}))
    assert old.session_id is None
    assert msgspec.structs.replace(old, schema_version=SCHEMA_VERSION,
                                   session_id=SESSION_ID) == in_session  # fmt: skip
    seen_by_schema_4 = older_decoder("UsageEventV4", SESSION_FIELDS).decode(
        encode_event(in_session)
    )
    assert not hasattr(seen_by_schema_4, "session_id")
    for field in msgspec.structs.fields(seen_by_schema_4):
        assert getattr(seen_by_schema_4, field.name) == getattr(in_session, field.name), field.name
    outside = orjson.loads(encode_event(make_event(2)))
    assert "session_id" in outside and outside["session_id"] is None  # written, as null


def test_a_schema_5_event_decodes_without_a_cache_status_and_a_schema_5_consumer_reads_one(
) -> None:  # fmt: skip
    assert SCHEMA_VERSION == 6
    hit = make_event(1, **ROUTED, cost_usd=Decimal(0), usage_source="cache", cache_status="hit",
                     saved_cost_usd=Decimal("0.000123"))  # fmt: skip
    data = orjson.loads(encode_event(hit))
    assert (data["cache_status"], data["saved_cost_usd"]) == ("hit", 0.000123)
    del data["cache_status"], data["saved_cost_usd"]
    old = decode_event(orjson.dumps({**data, "schema_version": 5}))
    assert (old.cache_status, old.saved_cost_usd) == (None, None)
    assert old.usage_source == "cache"  # an open vocabulary: read as it is
    seen_by_schema_5 = older_decoder("UsageEventV5", CACHE_FIELDS).decode(encode_event(hit))
    for field in msgspec.structs.fields(seen_by_schema_5):
        assert getattr(seen_by_schema_5, field.name) == getattr(hit, field.name), field.name


def test_helicone_groups_a_coding_session_and_lunary_is_unchanged() -> None:
    in_session = make_event(1, session_id=SESSION_ID)
    assert log_headers(in_session)["Helicone-Session-Id"] == SESSION_ID
    assert "Helicone-Session-Id" not in log_headers(make_event(2))
    long = make_event(3, session_id="s" * 300)  # a producer that did not cut it: the header does
    assert log_headers(long)["Helicone-Session-Id"] == "s" * 256
    # Lunary's ingestion has no session field (REFERENCE.md, section 3): the run is as before.
    assert run_events(in_session) == run_events(
        msgspec.structs.replace(in_session, session_id=None)
    )


async def test_the_dispatcher_logs_a_session_at_the_fake_helicone(
    dispatcher_factory: DispatcherFactory, redis: aioredis.Redis, stream_name: str
) -> None:
    server = ThreadedServer(FakeHelicone(api_key=HELICONE_KEY)).start()
    try:
        events = [make_event(0, session_id=SESSION_ID), make_event(1)]
        await produce(redis, stream_name, events)
        dispatcher_factory(DISPATCHER_SINK="helicone", DISPATCHER_API_KEY=HELICONE_KEY,
                           DISPATCHER_ENDPOINT=server.base_url + LOG_PATH)  # fmt: skip
        await until(lambda: all_acknowledged(redis, stream_name, "dispatcher"), "all acknowledged")
        assert await dead_letters(redis, stream_name) == []
        logs = server.fake.logs
        assert [logs[delivery_id(e)].headers.get("helicone-session-id") for e in events] == [
            SESSION_ID, None]  # fmt: skip
    finally:
        server.stop()
