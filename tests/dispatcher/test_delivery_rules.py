"""The delivery rules, the backoff and the settings, without processes: what is acknowledged,
dead-lettered or retried for each combination of per-event outcomes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from email.utils import formatdate

import pytest

from llm_gateway_common.config import ConfigError
from llm_gateway_common.consumer import Delivery, RetryLater
from llm_gateway_common.events import UsageEvent
from llm_gateway_dispatcher.backoff import MAX_HINT, Backoff, retry_hint
from llm_gateway_dispatcher.delivery import DeliveryHandler
from llm_gateway_dispatcher.outcomes import (
    ACCEPTED,
    Outcome,
    refused,
    rejected,
    unavailable,
)
from llm_gateway_dispatcher.settings import DispatcherSettings
from tests.dispatcher.conftest import LUNARY_KEY
from tests.support.events import make_event

Answer = Callable[[UsageEvent, int], Outcome]  # (event, round number from 1) -> outcome


class ScriptedSink:
    name = "scripted"

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self.rounds: list[list[str]] = []  # event ids sent, per round

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ready(self) -> bool:
        return True

    async def send(self, events: Sequence[UsageEvent]) -> list[Outcome]:
        self.rounds.append([e.event_id for e in events])
        return [self._answer(event, len(self.rounds)) for event in events]


def handler_for(answer: Answer, max_attempts: int = 3) -> tuple[DeliveryHandler, ScriptedSink]:
    sink = ScriptedSink(answer)
    return DeliveryHandler(sink, max_attempts=max_attempts, backoff=Backoff(0.01, 0.1)), sink


def batch(count: int) -> list[Delivery]:
    return [Delivery(f"{i}-0", make_event(i)) for i in range(count)]


async def deliver(handler: DeliveryHandler, deliveries: list[Delivery]) -> tuple[dict[str, str],
                                                                                  int]:  # fmt: skip
    """Call the handler as the consumer does until it returns; (dead letters, retries)."""
    retries = 0
    while True:
        try:
            return await handler(deliveries), retries
        except RetryLater:
            retries += 1
            assert retries < 50, "never settled"


async def test_everything_accepted_is_acknowledged_and_a_duplicate_entry_is_sent_once() -> None:
    handler, sink = handler_for(lambda event, _: ACCEPTED)
    deliveries = batch(3)
    deliveries.append(Delivery("9-0", deliveries[0].event))  # the same event twice in the stream
    assert await deliver(handler, deliveries) == ({}, 0)
    assert sink.rounds == [[d.event.event_id for d in deliveries[:3]]]


async def test_a_retry_resends_only_what_the_sink_has_not_taken() -> None:
    deliveries = batch(4)
    late = deliveries[2].event.event_id

    def answer(event: UsageEvent, round_number: int) -> Outcome:
        if event.event_id == late and round_number < 3:
            return unavailable("helicone answered 503")
        return ACCEPTED

    handler, sink = handler_for(answer, max_attempts=5)
    assert await deliver(handler, deliveries) == ({}, 2)
    assert sink.rounds[1:] == [[late], [late]]


async def test_a_sink_that_is_down_is_waited_for_however_many_rounds() -> None:
    handler, sink = handler_for(
        lambda _, n: unavailable("lunary: cannot connect") if n <= 10 else ACCEPTED,
        max_attempts=2,
    )
    assert await deliver(handler, batch(3)) == ({}, 10)
    assert len(sink.rounds) == 11


async def test_an_event_the_sink_keeps_rejecting_is_dead_lettered_after_max_attempts() -> None:
    deliveries = batch(3)
    poison = deliveries[1]

    def answer(event: UsageEvent, _: int) -> Outcome:
        return rejected("lunary refused the end: bad") if event == poison.event else ACCEPTED

    handler, _ = handler_for(answer, max_attempts=3)
    dead, retries = await deliver(handler, deliveries)
    assert retries == 2
    assert dead == {poison.entry_id: "gave up after 3 attempts: lunary refused the end: bad"}


async def test_unavailable_counts_only_when_the_sink_took_others_in_the_same_round() -> None:
    deliveries = batch(2)
    flaky = deliveries[0].event.event_id
    handler, _ = handler_for(
        lambda event, _: unavailable("helicone answered 500") if event.event_id == flaky
        else ACCEPTED,
        max_attempts=1,
    )  # fmt: skip
    dead, _ = await deliver(handler, deliveries)
    assert dead == {deliveries[0].entry_id: "gave up after 1 attempt: helicone answered 500"}


async def test_a_refused_event_is_dead_lettered_at_once_and_the_rest_acknowledged() -> None:
    deliveries = batch(3)
    handler, _ = handler_for(
        lambda event, _: refused("lunary answered 401: nope") if event == deliveries[0].event
        else ACCEPTED
    )  # fmt: skip
    assert await deliver(handler, deliveries) == (
        {deliveries[0].entry_id: "lunary answered 401: nope"}, 0,
    )  # fmt: skip


async def test_retry_later_carries_the_sinks_retry_after() -> None:
    handler, _ = handler_for(lambda event, _: unavailable("lunary answered 429", retry_after=2.5))
    with pytest.raises(RetryLater) as raised:
        await handler(batch(2))
    assert raised.value.after is not None and raised.value.after >= 2.5
    assert "2 of 2 events" in raised.value.reason


def test_backoff_grows_to_its_cap_with_jitter_in_the_upper_half() -> None:
    low, high = Backoff(1.0, 8.0, rand=lambda: 0.0), Backoff(1.0, 8.0, rand=lambda: 0.999)
    assert [low.delay(n) for n in (1, 2, 3, 4, 5, 60)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [round(high.delay(n), 2) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert low.delay(3, hint=30.0) == 30.0
    assert low.delay(3, hint=10 * MAX_HINT) == MAX_HINT


def test_retry_hints_in_seconds_http_dates_and_lunarys_reset_time() -> None:
    now = 1_800_000_000.0
    assert retry_hint({"Retry-After": "7"}, now) == 7.0
    assert retry_hint({"Retry-After": formatdate(now + 30, usegmt=True)}, now) == 30.0
    assert retry_hint({"Rate-Limit-Reset": str(int(now) + 12)}, now) == 12.0  # Unix time
    assert retry_hint({"Rate-Limit-Reset": "4"}, now) == 4.0  # seconds from now
    assert retry_hint({"Retry-After": "2", "Rate-Limit-Reset": "5"}, now) == 5.0
    assert retry_hint({"Retry-After": "soon"}, now) is None
    assert retry_hint({}, now) is None


def test_settings_defaults_per_sink_and_errors_that_name_the_variable() -> None:
    assert DispatcherSettings.from_env({}).endpoint == "/data/events.jsonl"
    lunary = DispatcherSettings.from_env({"DISPATCHER_SINK": "lunary",
                                          "DISPATCHER_API_KEY": LUNARY_KEY})  # fmt: skip
    assert lunary.endpoint == "https://api.lunary.ai/v1/runs/ingest"
    assert (lunary.group, lunary.events_stream, lunary.listen_port) == (
        "dispatcher", "llm-gateway:events", 8082,
    )  # fmt: skip
    helicone = DispatcherSettings.from_env({"DISPATCHER_SINK": "helicone",
                                            "DISPATCHER_API_KEY": "sk-h"})  # fmt: skip
    assert helicone.endpoint == "https://api.worker.helicone.ai/custom/v1/log"
    for env, variable in [
        ({"DISPATCHER_SINK": "kafka"}, "DISPATCHER_SINK"),
        ({"DISPATCHER_SINK": "helicone"}, "DISPATCHER_API_KEY"),
        ({"DISPATCHER_BATCH_SIZE": "0"}, "DISPATCHER_BATCH_SIZE"),
        ({"DISPATCHER_TIMEOUT": "soon"}, "DISPATCHER_TIMEOUT"),
        ({"DISPATCHER_LISTEN_ADDR": "nowhere"}, "DISPATCHER_LISTEN_ADDR"),
        ({"DISPATCHER_SINK": "lunary", "DISPATCHER_API_KEY": LUNARY_KEY,
          "DISPATCHER_ENDPOINT": "api.lunary.ai"}, "DISPATCHER_ENDPOINT"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=variable):
            DispatcherSettings.from_env(env)


def test_the_key_is_never_shown_by_the_settings_or_their_errors() -> None:
    settings = DispatcherSettings.from_env({
        "DISPATCHER_SINK": "helicone", "DISPATCHER_API_KEY": "sk-secret-value",
        "DISPATCHER_ENDPOINT": "https://user:pw@helicone.internal:8443/custom/v1/log",
    })  # fmt: skip
    assert "sk-secret-value" not in repr(settings) and "pw" not in repr(settings)
    assert "helicone.internal:8443" in repr(settings)
    with pytest.raises(ConfigError) as raised:
        DispatcherSettings.from_env({"DISPATCHER_SINK": "lunary",
                                     "DISPATCHER_API_KEY": "not-a-uuid-secret"})  # fmt: skip
    assert "not-a-uuid-secret" not in str(raised.value)
