"""End to end: client -> proxy -> Redis stream -> two dispatchers (their own groups) -> the fake
Lunary and Helicone, for a streamed and a non-streamed chat request, bodies captured."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiohttp

from llm_gateway_fakes.helicone import FakeHelicone
from llm_gateway_fakes.lunary import FakeLunary
from llm_gateway_fakes.openai import FakeOpenAI
from tests.collector.test_ndjson import until
from tests.conftest import ProxyFactory
from tests.dispatcher.conftest import DispatcherFactory

MESSAGES = [{"role": "user", "content": "one two three"}]
ANSWER_TEXT = "".join(f"word{i} " for i in range(8))  # what the fake upstream says


async def test_requests_reach_lunary_and_helicone_with_model_tokens_and_timings(
    proxy_factory: ProxyFactory, dispatcher_factory: DispatcherFactory, upstream: FakeOpenAI,
    lunary: FakeLunary, lunary_env: dict[str, str], helicone: FakeHelicone,
    helicone_env: dict[str, str], http: aiohttp.ClientSession, stream_name: str,
) -> None:  # fmt: skip
    proxy = proxy_factory(EVENTS_STREAM=stream_name, METERING_CAPTURE_BYTES="65536")
    dispatcher_factory(**lunary_env, DISPATCHER_GROUP="lunary")
    dispatcher_factory(**helicone_env, DISPATCHER_GROUP="helicone")

    sent: dict[str, dict[str, Any]] = {}
    for stream in (False, True):
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream, "user": "alice"}
        async with http.post(f"{proxy.base_url}/v1/chat/completions", json=body,
                             headers={"X-LLM-Tenant": "e2e"}) as response:  # fmt: skip
            assert response.status == 200
            await response.read()
            sent[response.headers["X-LLM-Request-ID"]] = {"stream": stream, **upstream.usages[-1]}

    async def arrived() -> bool:
        return len(lunary.completed_runs()) == 2 and len(helicone.logs) == 2

    await until(arrived, "both requests at Lunary and at Helicone")
    runs = {run.start["metadata"]["requestId"]: run for run in lunary.completed_runs().values()}
    logs = {log.headers["helicone-property-request-id"]: log for log in helicone.logs.values()}
    assert set(runs) == set(logs) == set(sent)
    for request_id, expected in sent.items():
        check_lunary_run(runs[request_id], expected)
        check_helicone_log(logs[request_id], expected)


def check_lunary_run(run: Any, expected: dict[str, Any]) -> None:
    start, end = run.start, run.end
    assert start["name"] == "gpt-4o-mini-2024-07-18"  # the model that answered
    assert "model:gpt-4o-mini" in start["tags"]
    assert start["userId"] == "alice"
    assert start["input"] == MESSAGES
    assert "tenant:e2e" in start["tags"]
    assert start["metadata"]["tenant"] == "e2e"
    assert start["metadata"]["stream"] is expected["stream"]
    assert end["event"] == "end"
    assert end["tokensUsage"]["prompt"] == expected["prompt_tokens"]
    assert end["tokensUsage"]["completion"] == expected["completion_tokens"] == 8
    (message,) = end["output"]
    assert (message["role"], message["content"]) == ("assistant", ANSWER_TEXT)
    assert _instant(start["timestamp"]) < _instant(end["timestamp"])


def check_helicone_log(log: Any, expected: dict[str, Any]) -> None:
    request, response = log.body["providerRequest"], log.body["providerResponse"]
    assert request["url"] == "custom-model-nopath"
    assert request["json"]["model"] == "gpt-4o-mini"
    assert request["json"]["messages"] == MESSAGES
    assert request["json"]["stream"] is False  # a stream is logged as the completion it became
    assert response["status"] == 200
    assert response["json"]["model"] == "gpt-4o-mini-2024-07-18"
    assert response["json"]["choices"][0]["message"]["content"] == ANSWER_TEXT
    usage = response["json"]["usage"]
    assert usage["prompt_tokens"] == expected["prompt_tokens"]
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == expected["total_tokens"]
    assert log.headers["helicone-user-id"] == "alice"
    assert log.headers["helicone-property-tenant"] == "e2e"
    timing = log.body["timing"]
    started, ended = _millis(timing["startTime"]), _millis(timing["endTime"])
    assert started < ended
    if expected["stream"]:
        assert log.headers["helicone-property-stream"] == "true"
        assert 0 <= timing["timeToFirstToken"] <= ended - started
    else:
        assert "helicone-property-stream" not in log.headers
        assert "timeToFirstToken" not in timing


def _instant(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def _millis(moment: dict[str, int]) -> int:
    return moment["seconds"] * 1000 + moment["milliseconds"]
