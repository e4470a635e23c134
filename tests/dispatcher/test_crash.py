"""SIGKILL in the middle of a batch: the sink has the events but the dispatcher dies before it
hears so and acknowledges them. The next start re-reads its pending entries and sends them
again; the sinks keep one record per event, because each event keeps its id there."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from llm_gateway_dispatcher.outcomes import delivery_id
from llm_gateway_fakes.helicone import FakeHelicone
from llm_gateway_fakes.lunary import FakeLunary
from tests.collector.test_ndjson import pending, until
from tests.dispatcher.conftest import DispatcherFactory, dead_letters
from tests.support.events import make_event, produce

SLOW_ANSWER = 3.0  # seconds the sink holds its answer after storing the events


@pytest.mark.parametrize("sink", ["lunary", "helicone"])
async def test_kill_mid_batch_loses_nothing_and_duplicates_nothing_at_the_sink(
    sink: str, dispatcher_factory: DispatcherFactory, request: pytest.FixtureRequest,
    redis: aioredis.Redis, stream_name: str,
) -> None:  # fmt: skip
    fake: FakeLunary | FakeHelicone = request.getfixturevalue(sink)
    env: dict[str, str] = request.getfixturevalue(f"{sink}_env")

    def stored() -> set[str]:
        if isinstance(fake, FakeLunary):
            return set(fake.completed_runs())
        return set(fake.logs)

    events = [make_event(i) for i in range(30)]
    await produce(redis, stream_name, events)
    fake.response_delay = SLOW_ANSWER
    first = dispatcher_factory(**env, DISPATCHER_BATCH_SIZE="10")

    async def first_batch_stored() -> bool:
        return len(stored()) >= 4

    await until(first_batch_stored, "part of the first batch stored at the sink")
    await asyncio.to_thread(first.kill)
    assert await pending(redis, stream_name, "dispatcher") == 10  # unacknowledged, not lost

    fake.response_delay = 0.0
    dispatcher_factory(**env, DISPATCHER_BATCH_SIZE="10")  # same consumer name: re-reads its own

    async def everything_delivered() -> bool:
        return (len(stored()) == len(events)
                and await pending(redis, stream_name, "dispatcher") == 0)  # fmt: skip

    await until(everything_delivered, "every event at the sink and acknowledged")
    assert stored() == {delivery_id(e) for e in events}
    if isinstance(fake, FakeLunary):
        assert len(fake.runs) == len(events)
        assert fake.duplicate_starts >= 4  # the redelivery happened, and made no second run
    else:
        assert fake.duplicates >= 4  # resent, replacing the earlier log of the same request
    assert await dead_letters(redis, stream_name) == []
