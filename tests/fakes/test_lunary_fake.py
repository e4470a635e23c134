"""The Lunary fake answers as Lunary's backend does (its auth middleware, rate limiter, body
parser, ingestion route and PostgreSQL), so dispatcher tests that pass against it say something
about the real service."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from llm_gateway_fakes.lunary import INGEST_PATH, FakeLunary
from llm_gateway_fakes.threaded import ThreadedServer

KEY = "00000000-1111-4222-8333-444444444444"
AUTH = {"Authorization": f"Bearer {KEY}"}
T0, T1 = "2026-11-22T10:00:00.000Z", "2026-11-22T10:00:01.000Z"
TEXT_NUL = 'invalid byte sequence for encoding "UTF8": 0x00'
JSONB_NUL = "unsupported Unicode escape sequence"


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer[FakeLunary]]:
    started = ThreadedServer(FakeLunary()).start()
    yield started
    started.stop()


@pytest.fixture
def fake(server: ThreadedServer[FakeLunary]) -> FakeLunary:
    server.fake.reset()
    server.fake.api_key = KEY
    return server.fake


async def post(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], body: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:  # fmt: skip
    """Lunary's answer: the status, the JSON body (or the text of one that is not JSON)."""
    sent = {**AUTH, "Content-Type": "application/json", **(headers or {})}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(server.base_url + INGEST_PATH, data=data, headers=sent) as response:
        raw = await response.read()
        is_json = response.content_type == "application/json"
        return response.status, orjson.loads(raw) if is_json else raw.decode(), response


def start(run_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "llm", "event": "start", "runId": run_id, "timestamp": T0, "name": "gpt-4o",
            "input": [{"role": "user", "content": "Hello"}], **fields}  # fmt: skip


def end(run_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "llm", "event": "end", "runId": run_id, "timestamp": T1,
            "output": [{"role": "assistant", "content": "Hi"}],
            "tokensUsage": {"prompt": 3, "completion": 2}, **fields}  # fmt: skip


def run_id() -> str:
    return str(uuid.uuid4())


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({"Authorization": ""}, 402, "Incorrect project id format"),
        ({"Authorization": f"Bearer{KEY}"}, 402, "Incorrect project id format"),
        ({"Authorization": "Bearer sk-not-a-uuid"}, 401, "Invalid access token"),
        ({"Authorization": f"Bearer {uuid.uuid4()}"}, 401, "Invalid API key"),
        ({"Authorization": "", "X-Api-Key": "sk-not-a-uuid"}, 404, "Not Found"),
    ],
)
async def test_keys_are_refused_as_lunary_refuses_them(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary,
    headers: dict[str, str], status: int, message: str,
) -> None:  # fmt: skip
    answer = await post(http, server, {"events": [start(run_id())]}, headers)
    assert answer[:2] == (status, {"message": message})
    assert fake.runs == {}


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Basic {KEY}"}, {"Authorization": "", "X-Api-Key": KEY}]
)
async def test_the_scheme_is_not_looked_at_and_x_api_key_is_a_key(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary,
    headers: dict[str, str],
) -> None:  # fmt: skip
    status, answer, _ = await post(http, server, {"events": [start("r")]}, headers)
    assert (status, answer) == (200, {"results": [{"id": "r", "success": True}]})


async def test_no_events_is_an_empty_answer_and_a_missing_payload_a_500(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary
) -> None:
    assert (await post(http, server, {"events": []}))[:2] == (200, {"results": []})
    missing = (500, {"message": "Missing events payload."})
    bodies: list[Any] = [{"event": []}, {"events": None}, {"events": 0}, [start(run_id())], b""]
    for body in bodies:
        assert (await post(http, server, body))[:2] == missing, body
    not_json = await post(http, server, {"events": [start(run_id())]}, {"Content-Type": ""})
    assert not_json[:2] == missing  # Lunary's body parser leaves a body it does not read empty
    assert (await post(http, server, b'"events"'))[:2] == (
        400, {"message": "invalid JSON, only supports object and array"})  # fmt: skip
    assert fake.runs == {}


async def test_one_event_not_in_a_list_is_ingested(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary
) -> None:
    run = run_id()
    status, answer, _ = await post(http, server, {"events": start(run)})
    assert (status, answer) == (200, {"results": [{"id": run, "success": True}]})
    assert list(fake.runs) == [run]


async def test_orphan_ends_wait_for_their_start_one_after_another_then_succeed_unstored(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary
) -> None:
    fake.orphan_delay = 0.2
    orphans = [run_id() for _ in range(3)]
    began = time.monotonic()
    status, answer, _ = await post(http, server, {"events": [end(run) for run in orphans]})
    assert time.monotonic() - began >= 0.6  # 3 x 0.2 s: Lunary waits per event, in turn
    assert (status, answer) == (200, {"results": [{"id": r, "success": True} for r in orphans]})
    assert [event["runId"] for event in fake.orphans] == orphans
    assert fake.runs == {}


async def test_an_orphan_error_is_answered_success_at_once(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary
) -> None:
    run = run_id()
    error = {"type": "llm", "event": "error", "runId": run, "timestamp": T1,
             "error": {"message": "upstream timed out"}}  # fmt: skip
    began = time.monotonic()
    status, answer, _ = await post(http, server, {"events": [error]})
    assert time.monotonic() - began < 2.0  # orphan_delay is 5 s: Lunary waits only for ends
    assert (status, answer) == (200, {"results": [{"id": run, "success": True}]})
    assert [event["runId"] for event in fake.orphans] == [run]
    assert fake.runs == {}


async def test_a_start_arriving_while_its_end_waits_is_completed_by_it(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary
) -> None:
    fake.orphan_delay = 1.0
    run = run_id()
    waiting = asyncio.create_task(post(http, server, {"events": [end(run)]}))
    await asyncio.sleep(0.2)
    began = time.monotonic()
    assert (await post(http, server, {"events": [start(run)]}))[0] == 200
    assert time.monotonic() - began < 0.5  # the wait blocks no other request
    status, answer, _ = await waiting
    assert (status, answer) == (200, {"results": [{"id": run, "success": True}]})
    assert list(fake.completed_runs()) == [run]
    assert fake.orphans == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input": [{"role": "user", "content": "a\x00b"}]}, JSONB_NUL),
        ({"input": [{"ro\x00le": "user", "content": "a"}]}, JSONB_NUL),
        ({"metadata": {"requestId": "r\x00"}}, JSONB_NUL),
        ({"params": {"stop": ["\x00"]}}, JSONB_NUL),
        ({"userId": "alice\x00"}, TEXT_NUL),
        ({"name": "gpt\x00"}, TEXT_NUL),
        ({"tags": ["tenant:\x00"]}, TEXT_NUL),
        ({"name": "gpt\x00", "input": [{"content": "\x00"}]}, TEXT_NUL),  # the name binds first
        ({"userId": "alice", "userProps": {"plan": "\x00"}}, JSONB_NUL),
    ],
)
async def test_a_start_holding_nul_fails_inside_the_200_with_postgres_message(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary,
    fields: dict[str, Any], message: str,
) -> None:  # fmt: skip
    run = run_id()
    status, answer, _ = await post(http, server, {"events": [start(run, **fields)]})
    assert (status, answer) == (200, {"results": [{"id": run, "success": False,
                                                   "error": message}]})  # fmt: skip
    assert fake.runs == {}


async def test_nul_where_lunary_stores_nothing_or_an_escaped_backslash_is_no_failure(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary
) -> None:
    run = run_id()
    fields = {"metadata": {"dropped": {"nested": "\x00"}}, "output": "\x00",
              "input": [{"role": "user", "content": "ab \\u0000 c"}]}  # fmt: skip
    status, answer, _ = await post(http, server, {"events": [start(run, **fields)]})
    assert (status, answer) == (200, {"results": [{"id": run, "success": True}]})


async def test_an_end_or_error_holding_nul_fails_and_leaves_the_run_started(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary
) -> None:
    run, orphan = run_id(), run_id()
    bad_end = end(run, output=[{"role": "assistant", "content": "\x00"}])
    bad_error = {"type": "llm", "event": "error", "runId": orphan, "timestamp": T1,
                 "error": {"message": "boom\x00"}}  # fmt: skip
    status, answer, _ = await post(http, server, {"events": [start(run), bad_end, bad_error]})
    assert status == 200
    refused = [{"id": r, "success": False, "error": JSONB_NUL} for r in (run, orphan)]
    assert answer["results"][1:] == refused
    assert fake.completed_runs() == {} and list(fake.runs) == [run]
    assert fake.orphans == []  # an error refused is no orphan: Lunary did not answer success


async def test_metadata_keeps_scalars_and_arrays_of_scalars_in_camel_case(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary
) -> None:
    metadata = {"request_id": "r1", "x-tenant": "acme", "attempts": 2, "cached": False,
                "failed_targets": ["openai-us", 3, True], "none": [], "a_1": 1.5,
                "nested": {"a": 1}, "objects": [{"a": 1}], "mixed": ["a", ["b"]], "nothing": None,
                "enrichment": {"some_thing": [{"x": 1}]}}  # fmt: skip
    run = run_id()
    await post(http, server, {"events": [start(run, metadata=metadata)]})
    assert fake.runs[run].start["metadata"] == {
        "requestId": "r1", "xTenant": "acme", "attempts": 2, "cached": False,
        "failedTargets": ["openai-us", 3, True], "none": [], "a_1": 1.5,
        "enrichment": {"someThing": [{"x": 1}]}}  # fmt: skip


async def test_keys_are_camel_cased_and_a_short_run_id_derived_as_lunary_derives_it(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary
) -> None:
    event = start("gateway-request-1", params={"max_tokens": 5}, user_id="alice")
    status, answer, _ = await post(http, server, {"events": [event]})
    assert (status, answer) == (200, {"results": [{"id": "gateway-request-1", "success": True}]})
    (stored,) = fake.runs.values()
    assert stored.run_id == "0be7008f-ef06-4b90-addc-ce419a849d64"  # uuidFromSeed, in Node
    assert (stored.start["params"], stored.start["userId"]) == ({"maxTokens": 5}, "alice")


async def test_past_150_requests_a_minute_a_client_is_told_to_slow_down(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary
) -> None:
    assert (await post(http, server, {}, {"Authorization": "Bearer sk-x"}))[0] == 401  # uncounted
    began = time.time()
    for sent in range(1, 151):
        status, _, response = await post(http, server, {"events": []})
        assert status == 200 and response.headers["Rate-Limit-Remaining"] == str(150 - sent)
    status, text, response = await post(http, server, {"events": []})
    assert (status, text, response.content_type) == (
        429, "Sometimes You Just Have to Slow Down.", "text/plain")  # fmt: skip
    assert response.headers["Rate-Limit-Total"] == "150"
    assert response.headers["Rate-Limit-Remaining"] == "0"
    reset = float(response.headers["Rate-Limit-Reset"])
    assert began + 60 <= reset <= time.time() + 60  # a minute from the first counted request
    assert 55 <= int(response.headers["Retry-After"]) <= 60
    other = {"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}  # another client, behind a proxy
    assert (await post(http, server, {"events": []}, other))[0] == 200
    fake.clock = lambda: reset + 0.001  # the minute is over: a new one begins
    assert (await post(http, server, {"events": []}))[0] == 200


async def test_the_rate_limit_is_a_knob_that_reset_restores(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary
) -> None:
    fake.rate_limit = None
    for _ in range(3):
        status, _, response = await post(http, server, {"events": []})
        assert status == 200 and "Rate-Limit-Total" not in response.headers
    fake.rate_limit, fake.orphan_delay = 1, 0.0
    assert [(await post(http, server, {"events": []}))[0] for _ in range(2)] == [200, 429]
    fake.reset()
    assert (fake.rate_limit, fake.orphan_delay, fake.orphans) == (150, 5.0, [])
    assert (await post(http, server, {"events": []}))[0] == 200


async def test_an_end_stamped_before_its_start_fails_though_lunary_would_take_it(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary
) -> None:
    run = run_id()
    await post(http, server, {"events": [start(run, timestamp=T1)]})
    status, answer, _ = await post(http, server, {"events": [end(run, timestamp=T0)]})
    assert status == 200 and answer["results"][0]["success"] is False
    assert fake.completed_runs() == {}


async def test_a_request_still_waiting_at_reset_stores_nothing_in_the_next_test(
    http: aiohttp.ClientSession, server: ThreadedServer[FakeLunary], fake: FakeLunary
) -> None:
    fake.orphan_delay = 0.5
    later = start(run_id(), timestamp="2026-11-22T10:00:02.000Z")
    waiting = asyncio.create_task(post(http, server, {"events": [end(run_id()), later]}))
    await asyncio.sleep(0.2)
    fake.reset()
    fake.api_key = KEY
    assert (await waiting)[0] == 503
    assert (fake.runs, fake.orphans) == ({}, [])


async def test_a_waiting_request_does_not_hold_up_the_fake_stopping(
    http: aiohttp.ClientSession,
) -> None:
    server = ThreadedServer(FakeLunary(orphan_delay=60.0)).start()
    waiting = asyncio.create_task(post(http, server, {"events": [end(run_id())]}))
    await asyncio.sleep(0.2)
    began = time.monotonic()
    await asyncio.to_thread(server.stop)
    assert time.monotonic() - began < 5.0
    with contextlib.suppress(aiohttp.ClientError):
        await waiting
