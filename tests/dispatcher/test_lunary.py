"""Delivery to (the fake) Lunary: outages, rate limits, bad keys and per-event failures, with
the dispatcher as a process on a real Redis."""

from __future__ import annotations

import asyncio

import orjson
import redis.asyncio as aioredis

from llm_gateway_common.events import UsageEvent
from llm_gateway_dispatcher.outcomes import delivery_id
from llm_gateway_fakes.lunary import FakeLunary
from tests.collector.test_ndjson import pending, until
from tests.dispatcher.conftest import LUNARY_KEY, DispatcherFactory, dead_letters
from tests.support.events import ROUTED, make_event, produce


def assert_runs_exactly(lunary: FakeLunary, events: list[UsageEvent]) -> None:
    """One completed run per event, under the event's own id, with its model, routing and
    tokens."""
    runs = lunary.completed_runs()
    assert set(runs) == {delivery_id(e) for e in events}
    assert len(lunary.runs) == len(events)
    for event in events:
        run = runs[delivery_id(event)]
        # Named after the model that answered (Lunary prices runs by name); the public name the
        # client sent is in the metadata.
        answered = event.response_model or event.upstream_model or event.model
        assert run.start["name"] == answered
        assert run.start["metadata"].get("model") == event.model
        metadata = run.start["metadata"]  # as Lunary kept it: flat scalars only
        assert metadata["requestId"] == event.request_id
        assert (metadata["provider"], metadata.get("providerName"), metadata.get("upstreamModel"),
                metadata.get("attempts", 0), metadata.get("failedTargets", "")) == (
            event.provider, event.provider_name, event.upstream_model, event.attempts,
            ",".join(event.failed_targets))  # fmt: skip
        assert run.end is not None
        assert run.end["tokensUsage"]["prompt"] == event.prompt_tokens


async def all_completed(lunary: FakeLunary, count: int) -> None:
    async def done() -> bool:
        return len(lunary.completed_runs()) >= count

    await until(done, f"{count} runs completed at Lunary")


async def nothing_pending(redis: aioredis.Redis, stream: str) -> None:
    async def acknowledged() -> bool:
        return await pending(redis, stream, "dispatcher") == 0

    await until(acknowledged, "every entry acknowledged")


async def test_an_outage_delays_delivery_but_loses_and_duplicates_nothing(
    dispatcher_factory: DispatcherFactory, lunary: FakeLunary, lunary_env: dict[str, str],
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    lunary.fail_next(5, 500)
    events = [make_event(i, **(ROUTED if i % 4 == 0 else {})) for i in range(40)]
    await produce(redis, stream_name, events)
    dispatcher = dispatcher_factory(**lunary_env, DISPATCHER_BATCH_SIZE="10")
    await all_completed(lunary, len(events))
    await nothing_pending(redis, stream_name)
    assert_runs_exactly(lunary, events)
    assert lunary.duplicate_starts == 0  # what Lunary took was never sent again
    assert [r.status for r in lunary.requests[:5]] == [500] * 5
    assert await dead_letters(redis, stream_name) == []
    log = dispatcher.log_text()
    assert "sink_unavailable" in log and "sink_recovered" in log
    assert LUNARY_KEY not in log


async def test_a_rate_limit_is_waited_out_for_as_long_as_lunary_asks(
    dispatcher_factory: DispatcherFactory, lunary: FakeLunary, lunary_env: dict[str, str],
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    lunary.fail_next(1, 429, retry_after="1")
    events = [make_event(i) for i in range(5)]
    await produce(redis, stream_name, events)
    dispatcher_factory(**lunary_env)
    await all_completed(lunary, len(events))
    limited, retried = lunary.requests[0], lunary.requests[1]
    assert limited.status == 429 and retried.status == 200
    assert retried.at - limited.at >= 1.0  # not sooner than Retry-After
    assert_runs_exactly(lunary, events)


async def test_a_bad_key_dead_letters_the_batch_with_the_reason_and_never_shows_the_key(
    dispatcher_factory: DispatcherFactory, lunary: FakeLunary, lunary_env: dict[str, str],
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    wrong_key = "00000000-1111-4222-8333-444444444444"
    events = [make_event(i) for i in range(5)]
    await produce(redis, stream_name, events)
    dispatcher = dispatcher_factory(**{**lunary_env, "DISPATCHER_API_KEY": wrong_key})

    async def all_dead() -> bool:
        return len(await dead_letters(redis, stream_name)) == len(events)

    await until(all_dead, "the batch in the dead-letter stream")
    await nothing_pending(redis, stream_name)
    reasons = {fields[b"reason"].decode() for fields in await dead_letters(redis, stream_name)}
    assert reasons == {'lunary answered 401: {"message": "Invalid API key"}'}
    assert lunary.runs == {}
    assert wrong_key not in dispatcher.log_text()
    assert all(r.headers["authorization"] == f"Bearer {wrong_key}" for r in lunary.requests)


async def test_per_event_failures_inside_a_200_are_retried_until_every_run_is_complete(
    dispatcher_factory: DispatcherFactory, lunary: FakeLunary, lunary_env: dict[str, str],
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    lunary.orphan_delay = 0.2  # the failed starts' ends wait for them (this test is not about it)
    lunary.fail_events_next(3)
    events = [make_event(i) for i in range(10)]
    await produce(redis, stream_name, events)
    dispatcher_factory(**lunary_env)
    await all_completed(lunary, len(events))
    await nothing_pending(redis, stream_name)
    assert_runs_exactly(lunary, events)
    assert len(lunary.requests) >= 2
    assert await dead_letters(redis, stream_name) == []


async def test_an_event_lunary_keeps_refusing_is_dead_lettered_after_max_attempts(
    dispatcher_factory: DispatcherFactory, lunary: FakeLunary, lunary_env: dict[str, str],
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    lunary.fail_events_next(1_000)
    poison = make_event(0)
    await produce(redis, stream_name, [poison])
    dispatcher_factory(**lunary_env, DISPATCHER_MAX_ATTEMPTS="3")

    async def dead() -> bool:
        return len(await dead_letters(redis, stream_name)) == 1

    await until(dead, "the event in the dead-letter stream")
    (fields,) = await dead_letters(redis, stream_name)
    assert fields[b"reason"].decode() == (
        "gave up after 3 attempts: lunary refused the start: "
        "Fake failure: could not store the event"
    )
    assert len(lunary.requests) == 3
    lunary.stop_failing()
    healthy = [make_event(1)]
    await produce(redis, stream_name, healthy)
    await all_completed(lunary, 1)
    assert_runs_exactly(lunary, healthy)


async def test_events_arriving_close_together_go_in_one_request(
    dispatcher_factory: DispatcherFactory, lunary: FakeLunary, lunary_env: dict[str, str],
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    dispatcher_factory(**lunary_env, DISPATCHER_FLUSH_INTERVAL="3")
    events = [make_event(i) for i in range(3)]
    for event in events:  # three separate XADDs, well inside the flush interval
        await produce(redis, stream_name, [event])
        await asyncio.sleep(0.05)
    await all_completed(lunary, len(events))
    (request,) = lunary.requests
    assert len(orjson.loads(request.body)["events"]) == 2 * len(events)
    assert_runs_exactly(lunary, events)


async def test_ends_waiting_for_their_start_do_not_stall_the_stream(
    dispatcher_factory: DispatcherFactory, lunary: FakeLunary, lunary_env: dict[str, str],
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    """Lunary waits for the missing start of each `end`, one after another: three in a request
    push it past the timeout, every time it is sent. The request is split until those events go
    alone; the others are delivered, those three end in the dead-letter stream with their
    reason, and the events after them follow."""
    lunary.orphan_delay = 0.6  # Lunary's is 5 s, against a 10 s default timeout
    events = [make_event(i) for i in range(10)]
    poison = [events[2], events[5], events[7]]
    lunary.fail_starts_of({delivery_id(e) for e in poison})
    await produce(redis, stream_name, events)
    dispatcher_factory(**lunary_env, DISPATCHER_TIMEOUT="1", DISPATCHER_MAX_ATTEMPTS="2")

    async def three_dead() -> bool:
        return len(await dead_letters(redis, stream_name)) == 3

    await until(three_dead, "the three events in the dead-letter stream")
    later = [make_event(i) for i in range(10, 14)]
    await produce(redis, stream_name, later)
    healthy = [e for e in events if e not in poison] + later
    await all_completed(lunary, len(healthy))
    await nothing_pending(redis, stream_name)
    assert_runs_exactly(lunary, healthy)
    dead = await dead_letters(redis, stream_name)
    assert {orjson.loads(f[b"data"])["event_id"] for f in dead} == {e.event_id for e in poison}
    assert {f[b"reason"].decode() for f in dead} == {
        "gave up after 2 attempts: lunary refused the start: Fake failure: could not store the run"
    }
    sizes = [len(orjson.loads(r.body)["events"]) for r in lunary.requests]
    assert sizes[0] == 20 and 2 in sizes  # timed out whole, then sent again down to one run


async def test_nul_characters_never_cost_a_run(
    dispatcher_factory: DispatcherFactory, lunary: FakeLunary, lunary_env: dict[str, str],
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a\x00b"}]}
    event = make_event(0, user="al\x00ice", client_request_id="req\x00-7",
                       captured_request=orjson.dumps(request).decode())  # fmt: skip
    await produce(redis, stream_name, [event])
    dispatcher_factory(**lunary_env)
    await all_completed(lunary, 1)
    (run,) = lunary.completed_runs().values()
    assert run.start["userId"] == "alice"
    assert run.start["input"] == [{"role": "user", "content": "ab"}]
    assert run.start["metadata"]["clientRequestId"] == "req-7"
    assert await dead_letters(redis, stream_name) == []


async def test_a_failed_run_is_stored_as_an_error_with_its_tokens(
    dispatcher_factory: DispatcherFactory, lunary: FakeLunary, lunary_env: dict[str, str],
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    failed = make_event(0, outcome="client_disconnected", error_type="client_disconnected",
                        status_code=200, prompt_tokens=30, completion_tokens=12)  # fmt: skip
    await produce(redis, stream_name, [failed])
    dispatcher_factory(**lunary_env)
    await all_completed(lunary, 1)
    await nothing_pending(redis, stream_name)
    (run,) = lunary.completed_runs().values()
    assert run.status == "error"
    assert run.error == {"message": "client_disconnected (HTTP 200)"}
    assert run.tokens_usage == {"prompt": 30, "completion": 12}
