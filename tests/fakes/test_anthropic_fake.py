"""The Anthropic fake rejects what the real Messages API rejects and speaks its wire format,
so routing tests that pass against it say something about the real provider."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from llm_gateway_fakes.anthropic import FakeAnthropic, FakeAnthropicServer

KEY = "sk-ant-fake-0123456789"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
HELLO = {"role": "user", "content": "Hello there"}
BODY: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [HELLO]}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"},
                                                      "days": {"type": "integer"}}},
}  # fmt: skip
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(32)).decode()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropicServer]:
    started = FakeAnthropicServer().start()
    yield started
    started.stop()


@pytest.fixture
def fake(server: FakeAnthropicServer) -> FakeAnthropic:
    server.fake.reset()
    server.fake.behaviour.api_key = KEY
    return server.fake


@pytest.fixture
def url(server: FakeAnthropicServer, fake: FakeAnthropic) -> str:
    return f"{server.base_url}/v1/messages"


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str] = HEADERS
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    async with http.post(url, json=body, headers=headers) as response:
        return response.status, orjson.loads(await response.read()), response


async def events(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> list[dict[str, Any]]:
    """The SSE events of a streamed answer, each checked to name its own type."""
    async with http.post(url, json={**body, "stream": True}, headers=HEADERS) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = (await response.read()).decode()
    assert "[DONE]" not in text, "Anthropic streams have no [DONE]"
    parsed = []
    for frame in text.strip().split("\n\n"):
        name_line, data_line = frame.split("\n")
        event = orjson.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {event['type']}"
        parsed.append(event)
    return parsed


def error_of(status: int, body: dict[str, Any]) -> tuple[int, str, str]:
    assert body["type"] == "error" and "request_id" in body
    return status, body["error"]["type"], body["error"]["message"]


async def test_key_and_version_are_checked(http: aiohttp.ClientSession, url: str) -> None:
    status, body, _ = await post(http, url, BODY, {"anthropic-version": "2023-06-01"})
    assert error_of(status, body)[:2] == (401, "authentication_error")
    status, body, _ = await post(http, url, BODY, {**HEADERS, "x-api-key": "sk-ant-wrong"})
    assert error_of(status, body) == (401, "authentication_error", "invalid x-api-key")
    status, body, _ = await post(http, url, BODY, {"x-api-key": KEY})
    assert error_of(status, body) == (
        400,
        "invalid_request_error",
        "anthropic-version: header is required",
    )
    status, body, _ = await post(http, url, BODY, {**HEADERS, "anthropic-version": "2099-01-01"})
    assert error_of(status, body)[:2] == (400, "invalid_request_error")
    bearer = {"authorization": f"Bearer {KEY}", "anthropic-version": "2026-10-21"}
    status, _, _ = await post(http, url, BODY, bearer)
    assert status == 200, "anthropic SDK 2.14 sends the key as a Bearer token"


TOOL_TURN = {"role": "assistant", "content": [
    {"type": "text", "text": "Checking."},
    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
]}  # fmt: skip


def result_for(tool_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": "sunny"}


REJECTED = {
    "no max_tokens": ({"max_tokens": None}, "max_tokens: Field required"),
    "max_tokens 0": ({"max_tokens": 0}, "greater than or equal to 1"),
    "max_tokens float": ({"max_tokens": 1.5}, "valid integer"),
    "no model": ({"model": None}, "model: Field required"),
    "no messages": ({"messages": []}, "at least one message"),
    "unknown field": ({"stream_options": {"include_usage": True}}, "stream_options: Extra inputs"),
    "openai field n": ({"n": 1}, "n: Extra inputs"),
    "system role": ({"messages": [{"role": "system", "content": "Be brief."}, HELLO]},
                    'Unexpected role "system"'),
    "first is assistant": ({"messages": [{"role": "assistant", "content": "Hi"}, HELLO]},
                           'first message must use the "user" role'),
    "two user turns": ({"messages": [HELLO, HELLO]}, "roles must alternate"),
    "empty content": ({"messages": [{"role": "user", "content": ""}]}, "non-empty content"),
    "tool role": ({"messages": [HELLO, {"role": "tool", "content": "x"}]}, "'user' or 'assistant'"),
    "openai image block": (
        {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}]},
        "Input tag 'image_url'"),
    "image not base64": (
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": "not base64!"}}]}]},
        "not valid base64"),
    "image media type": (
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/bmp", "data": PNG}}]}]},
        "media_type"),
    "image data url as url": (
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {
            "type": "url", "url": f"data:image/png;base64,{PNG}"}}]}]},
        "valid URL"),
    "tool_result for another id": (
        {"messages": [HELLO, TOOL_TURN, {"role": "user", "content": [result_for("toolu_9")]}]},
        "unexpected `tool_use_id` found in `tool_result` blocks: toolu_9"),
    "tool_use left unanswered": (
        {"messages": [HELLO, TOOL_TURN, HELLO]},
        "messages.1: `tool_use` ids were found without `tool_result` blocks"),
    "tool_result with no tool_use before": (
        {"messages": [{"role": "user", "content": [result_for("toolu_1")]}]},
        "unexpected `tool_use_id`"),
    "tool_result after text": (
        {"messages": [HELLO, TOOL_TURN, {"role": "user", "content": [
            {"type": "text", "text": "here"}, result_for("toolu_1")]}]},
        "must come before any other content"),
    "tool_choice without tools": ({"tool_choice": {"type": "auto"}}, "while providing tools"),
    "named tool missing": ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "tool", "name": "x"}},
                           "was not found"),
    "openai tool shape": ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools.0"),
    "whitespace stop": ({"stop_sequences": ["\n"]}, "non-whitespace"),
    "temperature 2": ({"temperature": 2}, "temperature"),
}  # fmt: skip


@pytest.mark.parametrize("change, message", REJECTED.values(), ids=REJECTED.keys())
async def test_rejects_what_the_real_api_rejects(
    http: aiohttp.ClientSession, url: str, fake: FakeAnthropic, change: dict[str, Any], message: str
) -> None:
    body = {k: v for k, v in {**BODY, **change}.items() if v is not None}
    status, answer, _ = await post(http, url, body)
    assert error_of(status, answer)[:2] == (400, "invalid_request_error")
    assert message in answer["error"]["message"]
    assert fake.usages == [], "a rejected request is not answered"


async def test_accepts_a_full_valid_conversation(http: aiohttp.ClientSession, url: str) -> None:
    """What a correct translation sends: top-level system, images, a tool round trip."""
    body = {
        **BODY,
        "system": [{"type": "text", "text": "Be brief."}],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "metadata": {"user_id": "u-1"},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather where this is?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
            ]},
            TOOL_TURN,
            {"role": "user", "content": [result_for("toolu_1"), {"type": "text", "text": "ok?"}]},
            {"role": "assistant", "content": "It is"},
        ],
    }  # fmt: skip
    status, answer, _ = await post(http, url, body)
    assert status == 200, answer


async def test_text_answer_with_cache_usage(
    http: aiohttp.ClientSession, url: str, fake: FakeAnthropic
) -> None:
    fake.behaviour.cache_creation_input_tokens = 100
    fake.behaviour.cache_read_input_tokens = 2000
    status, answer, response = await post(http, url, BODY)
    assert status == 200
    assert response.headers["request-id"].startswith("req_")
    assert answer["type"] == "message" and answer["role"] == "assistant"
    assert answer["model"] == "claude-sonnet-4-5"
    assert answer["content"] == [{"type": "text", "text": "".join(f"word{i} " for i in range(8))}]
    assert answer["stop_reason"] == "end_turn" and answer["stop_sequence"] is None
    assert answer["usage"] == {"input_tokens": 5, "cache_creation_input_tokens": 100,
                               "cache_read_input_tokens": 2000, "output_tokens": 8}  # fmt: skip
    status, answer, _ = await post(http, url, {**BODY, "max_tokens": 3})
    assert answer["stop_reason"] == "max_tokens" and answer["usage"]["output_tokens"] == 3


async def test_tool_use_answers(http: aiohttp.ClientSession, url: str, fake: FakeAnthropic) -> None:
    second = {**WEATHER_TOOL, "name": "get_time"}
    body = {**BODY, "tools": [WEATHER_TOOL, second]}
    _, answer, _ = await post(http, url, body)
    assert [b["type"] for b in answer["content"]] == ["text"], "auto without the knob: text"

    fake.behaviour.use_tools = True
    fake.behaviour.tool_calls = 2
    _, answer, _ = await post(http, url, body)
    assert [b["type"] for b in answer["content"]] == ["text", "tool_use", "tool_use"]
    assert answer["stop_reason"] == "tool_use"
    calls = answer["content"][1:]
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]
    assert calls[0]["input"] == {"city": "fake", "days": 1}
    assert calls[0]["id"].startswith("toolu_") and calls[0]["id"] != calls[1]["id"]

    named = {**body, "tool_choice": {"type": "tool", "name": "get_time",
                                     "disable_parallel_tool_use": True}}  # fmt: skip
    _, answer, _ = await post(http, url, named)
    assert [(b["type"], b.get("name")) for b in answer["content"]] == [("tool_use", "get_time")]

    fake.behaviour.use_tools = False
    _, answer, _ = await post(http, url, {**body, "tool_choice": {"type": "any"}})
    assert answer["content"][0]["type"] == "tool_use", "tool_choice any forces a tool"
    _, answer, _ = await post(http, url, {**body, "tool_choice": {"type": "none"}})
    assert answer["stop_reason"] == "end_turn"


async def test_stream_follows_the_real_event_sequence(
    http: aiohttp.ClientSession, url: str, fake: FakeAnthropic
) -> None:
    fake.behaviour.words = 3
    fake.behaviour.cache_read_input_tokens = 40
    stream = await events(http, url, BODY)
    assert [e["type"] for e in stream] == [
        "message_start", "content_block_start", "ping", "content_block_delta",
        "content_block_delta", "content_block_delta", "content_block_stop", "message_delta",
        "message_stop",
    ]  # fmt: skip
    start = stream[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"] == {"input_tokens": 5, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 40, "output_tokens": 1}  # fmt: skip
    assert stream[1]["content_block"] == {"type": "text", "text": ""}
    text = "".join(e["delta"]["text"] for e in stream if e["type"] == "content_block_delta")
    assert text == "word0 word1 word2 "
    assert stream[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert stream[-2]["usage"] == {"output_tokens": 3}, "cumulative, not a per-event count"


async def test_stream_of_tool_use_sends_json_fragments(
    http: aiohttp.ClientSession, url: str, fake: FakeAnthropic
) -> None:
    fake.behaviour.use_tools = True
    fake.behaviour.ping_every = 2
    stream = await events(http, url, {**BODY, "tools": [WEATHER_TOOL]})
    starts = [e for e in stream if e["type"] == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use"]
    tool = starts[1]["content_block"]
    assert starts[1]["index"] == 1 and tool["name"] == "get_weather" and tool["input"] == {}
    fragments = [e["delta"] for e in stream
                 if e["type"] == "content_block_delta" and e["index"] == 1]  # fmt: skip
    assert all(f["type"] == "input_json_delta" for f in fragments)
    assert fragments[0]["partial_json"] == "" and len(fragments) > 2
    assert orjson.loads("".join(f["partial_json"] for f in fragments)) == {
        "city": "fake",
        "days": 1,
    }
    assert sum(e["type"] == "ping" for e in stream) > 1
    assert stream[-2]["delta"]["stop_reason"] == "tool_use"


async def test_error_event_in_the_middle_of_a_stream(
    http: aiohttp.ClientSession, url: str, fake: FakeAnthropic
) -> None:
    fake.behaviour.error_after_deltas = 2
    stream = await events(http, url, BODY)
    assert [e["type"] for e in stream][-3:] == ["content_block_delta", "content_block_delta",
                                               "error"]  # fmt: skip
    assert stream[-1]["error"]["type"] == "overloaded_error"
    fake.behaviour.error_after_deltas = 0
    stream = await events(http, url, BODY)
    assert [e["type"] for e in stream] == ["message_start", "content_block_start", "ping", "error"]
    assert (fake.streams_errored, fake.streams_completed) == (2, 0)


async def test_scripted_failures_in_anthropic_shape(
    http: aiohttp.ClientSession, url: str, fake: FakeAnthropic
) -> None:
    fake.behaviour.fail_status = 429
    fake.behaviour.retry_after = 7
    status, body, response = await post(http, url, BODY)
    assert error_of(status, body)[:2] == (429, "rate_limit_error")
    assert response.headers["retry-after"] == "7"
    for code, kind in ((529, "overloaded_error"), (500, "api_error"), (403, "permission_error")):
        fake.behaviour.fail_status = code
        status, body, _ = await post(http, url, BODY)
        assert error_of(status, body)[:2] == (code, kind)
    fake.behaviour.fail_times = 1
    assert (await post(http, url, BODY))[0] == 403
    assert (await post(http, url, BODY))[0] == 200, "fail_times ran out"


async def test_unknown_model_and_count_tokens(
    http: aiohttp.ClientSession, server: FakeAnthropicServer, fake: FakeAnthropic
) -> None:
    fake.behaviour.models = frozenset({"claude-haiku-4-5"})
    status, body, _ = await post(http, f"{server.base_url}/v1/messages", BODY)
    assert error_of(status, body) == (404, "not_found_error", "model: claude-sonnet-4-5")
    count_url = f"{server.base_url}/v1/messages/count_tokens"
    status, body, _ = await post(http, count_url, {"model": "claude-haiku-4-5",
                                                   "messages": [HELLO]})  # fmt: skip
    assert (status, body) == (200, {"input_tokens": 5})
    assert len(fake.received) == 2 and fake.received[0].json()["model"] == "claude-sonnet-4-5"


async def test_delays_for_timeout_tests(
    http: aiohttp.ClientSession, url: str, fake: FakeAnthropic
) -> None:
    """`stream_start_delay` holds the first event after a 200 (a first-token timeout);
    `response_delay` holds the headers, and a caller that gives up is counted."""
    fake.behaviour.stream_start_delay = 0.3
    body = {**BODY, "stream": True}
    async with http.post(url, json=body, headers=HEADERS) as response:
        assert response.status == 200
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(response.content.readany(), 0.1)
        assert (await response.content.readline()).startswith(b"event: message_start")
    fake.behaviour.stream_start_delay = 0
    fake.behaviour.response_delay = 0.5
    short = aiohttp.ClientTimeout(total=0.1)
    with pytest.raises(TimeoutError):
        await http.post(url, json=BODY, headers=HEADERS, timeout=short)
    for _ in range(100):
        if fake.abandoned:
            break
        await asyncio.sleep(0.01)
    assert fake.abandoned == 1 and len(fake.usages) == 1, "only the stream was answered"
