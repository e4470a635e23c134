"""Delivery to (the fake) Helicone: outages, its "200 with an error", bad keys, with the
dispatcher as a process on a real Redis."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from llm_gateway_common.events import UsageEvent
from llm_gateway_dispatcher.outcomes import delivery_id
from llm_gateway_fakes.helicone import FakeHelicone
from tests.collector.test_ndjson import pending, until
from tests.dispatcher.conftest import HELICONE_KEY, DispatcherFactory, dead_letters
from tests.support.events import ROUTED, make_event, produce

ROUTING = ("provider", "provider-name", "upstream-model", "attempts", "failed-targets")


def assert_logged_exactly(helicone: FakeHelicone, events: list[UsageEvent]) -> None:
    """One log per event, under the event's own request id, with its model, tokens, ids and
    routing."""
    assert set(helicone.logs) == {delivery_id(e) for e in events}
    for event in events:
        logged = helicone.logs[delivery_id(event)]
        assert uuid.UUID(logged.request_id).version == 5
        assert logged.headers["helicone-property-request-id"] == event.request_id
        assert logged.headers["helicone-property-tenant"] == event.tenant
        routing = [logged.headers.get(f"helicone-property-{name}") for name in ROUTING]
        assert routing == [event.provider, event.provider_name, event.upstream_model,
                           str(event.attempts) if event.attempts else None,
                           ",".join(event.failed_targets) or None]  # fmt: skip
        response = logged.body["providerResponse"]["json"]
        assert response["model"] == event.model
        assert response["usage"]["prompt_tokens"] == event.prompt_tokens


async def all_logged(helicone: FakeHelicone, redis: aioredis.Redis, stream: str,
                     count: int) -> None:  # fmt: skip
    async def done() -> bool:
        return len(helicone.logs) >= count and await pending(redis, stream, "dispatcher") == 0

    await until(done, f"{count} events logged at Helicone and acknowledged")


async def test_an_outage_delays_delivery_but_loses_and_duplicates_nothing(
    dispatcher_factory: DispatcherFactory, helicone: FakeHelicone, helicone_env: dict[str, str],
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    helicone.fail_next(6, 503)
    events = [make_event(i, **(ROUTED if i % 4 == 0 else {})) for i in range(24)]
    await produce(redis, stream_name, events)
    dispatcher = dispatcher_factory(**helicone_env, DISPATCHER_CONCURRENCY="4")
    await all_logged(helicone, redis, stream_name, len(events))
    assert_logged_exactly(helicone, events)
    assert helicone.duplicates == 0  # what Helicone took was never sent again
    assert sum(r.status == 503 for r in helicone.requests) == 6
    assert await dead_letters(redis, stream_name) == []
    assert HELICONE_KEY not in dispatcher.log_text()


async def test_a_200_with_an_error_body_is_a_failure_and_retried(
    dispatcher_factory: DispatcherFactory, helicone: FakeHelicone, helicone_env: dict[str, str],
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    helicone.fail_next(3, 200)
    events = [make_event(i) for i in range(6)]
    await produce(redis, stream_name, events)
    dispatcher_factory(**helicone_env, DISPATCHER_CONCURRENCY="2")
    await all_logged(helicone, redis, stream_name, len(events))
    assert sum(r.errored for r in helicone.requests) == 3
    assert_logged_exactly(helicone, events)
    assert helicone.duplicates == 0
    assert await dead_letters(redis, stream_name) == []


async def test_a_rate_limit_is_waited_out_for_as_long_as_helicone_asks(
    dispatcher_factory: DispatcherFactory, helicone: FakeHelicone, helicone_env: dict[str, str],
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    helicone.fail_next(1, 429, retry_after="1")
    events = [make_event(0)]
    await produce(redis, stream_name, events)
    dispatcher_factory(**helicone_env)
    await all_logged(helicone, redis, stream_name, 1)
    limited, retried = helicone.requests
    assert (limited.status, retried.status) == (429, 200)
    assert retried.at - limited.at >= 1.0  # not sooner than Retry-After
    assert_logged_exactly(helicone, events)


async def test_a_bad_key_dead_letters_the_events_with_the_reason_and_never_shows_the_key(
    dispatcher_factory: DispatcherFactory, helicone: FakeHelicone, helicone_env: dict[str, str],
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    wrong_key = "sk-helicone-wrong-9a8b7c6d5e4f"
    events = [make_event(i) for i in range(3)]
    await produce(redis, stream_name, events)
    dispatcher = dispatcher_factory(**{**helicone_env, "DISPATCHER_API_KEY": wrong_key})

    async def all_dead() -> bool:
        return len(await dead_letters(redis, stream_name)) == len(events)

    await until(all_dead, "the events in the dead-letter stream")
    dead = await dead_letters(redis, stream_name)
    assert {fields[b"reason"].decode() for fields in dead} == {
        'helicone answered 401: {"error": "Authentication failed"}'
    }
    originals = [fields[b"data"] for _, fields in await redis.xrange(stream_name, "-", "+")]
    assert [fields[b"data"] for fields in dead] == originals  # the entry as it was, to replay
    assert helicone.logs == {}
    assert wrong_key not in dispatcher.log_text()
