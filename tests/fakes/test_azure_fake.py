"""The Azure OpenAI fake checks path, api-version and api-key as Azure does and answers with
Azure's quirks (the empty-choice prompt-filter chunk, content filter results), so routing tests
that pass against it say something about the real provider."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from llm_gateway_fakes.azure import FakeAzure, FakeAzureServer

KEY = "azure-key-0123456789"
CHAT = {"messages": [{"role": "user", "content": "Hello there"}]}
CLASSIC = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAzureServer]:
    started = FakeAzureServer().start()
    yield started
    started.stop()


@pytest.fixture
def fake(server: FakeAzureServer) -> FakeAzure:
    server.fake.reset()
    server.fake.behaviour.api_key = KEY
    return server.fake


async def post(
    http: aiohttp.ClientSession,
    server: FakeAzureServer,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    sent = {"api-key": KEY} if headers is None else headers
    async with http.post(f"{server.base_url}{path}", json=body, headers=sent) as response:
        return response.status, orjson.loads(await response.read()), response


async def chunks(
    http: aiohttp.ClientSession, server: FakeAzureServer, body: dict[str, Any]
) -> tuple[list[dict[str, Any]], bool]:
    """The data events of a streamed answer, and whether it ended with [DONE]."""
    url = f"{server.base_url}{CLASSIC}"
    async with http.post(url, json={**body, "stream": True}, headers={"api-key": KEY}) as response:
        assert response.status == 200
        text = (await response.read()).decode()
    frames = [frame.removeprefix("data: ") for frame in text.strip().split("\n\n")]
    done = frames[-1] == "[DONE]"
    return [orjson.loads(frame) for frame in frames if frame != "[DONE]"], done


async def test_classic_deployment_path(
    http: aiohttp.ClientSession, server: FakeAzureServer, fake: FakeAzure
) -> None:
    fake.behaviour.cached_tokens = 4
    status, answer, response = await post(http, server, CLASSIC, {**CHAT, "model": "ignored"})
    assert status == 200, answer
    assert response.headers["apim-request-id"]
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "gpt-4o-2024-11-20", "the deployment's model, not the body's"
    assert answer["prompt_filter_results"][0]["content_filter_results"]["jailbreak"] == {
        "filtered": False, "detected": False}  # fmt: skip
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"].startswith("word0")
    assert choice["content_filter_results"]["hate"] == {"filtered": False, "severity": "safe"}
    assert answer["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    assert fake.received[-1].query == "api-version=2024-10-21"


async def test_v1_path_takes_the_deployment_from_model(
    http: aiohttp.ClientSession, server: FakeAzureServer, fake: FakeAzure
) -> None:
    body = {**CHAT, "model": "gpt-4o-mini"}
    status, answer, _ = await post(http, server, "/openai/v1/chat/completions", body)
    assert (status, answer["model"]) == (200, "gpt-4o-mini-2024-07-18")
    bearer = {"Authorization": f"Bearer {KEY}"}
    status, _, _ = await post(http, server, "/openai/v1/chat/completions?api-version=preview",
                              body, bearer)  # fmt: skip
    assert status == 200, "the v1 API takes the key as the OpenAI SDK sends it"
    status, answer, _ = await post(http, server, "/openai/v1/chat/completions", CHAT)
    assert (status, answer["error"]["code"]) == (404, "DeploymentNotFound")


WRONG = {
    "unknown api-version": (CLASSIC.replace("2024-10-21", "2023-01-01"), None, 404, "404"),
    "no api-version": ("/openai/deployments/gpt-4o/chat/completions", None, 404, "404"),
    "api-version on v1": ("/openai/v1/chat/completions?api-version=2024-10-21", None, 404, "404"),
    "openai path": ("/v1/chat/completions", None, 404, "404"),
    "no /openai prefix": ("/deployments/gpt-4o/chat/completions?api-version=2024-10-21", None,
                          404, "404"),
    "unknown deployment": (CLASSIC.replace("gpt-4o", "gpt-5"), None, 404, "DeploymentNotFound"),
    "no key": (CLASSIC, {}, 401, "401"),
    "wrong key": (CLASSIC, {"api-key": "nope"}, 401, "401"),
    "bearer on classic": (CLASSIC, {"Authorization": f"Bearer {KEY}"}, 401, "401"),
}  # fmt: skip


@pytest.mark.parametrize("path, headers, status, code", WRONG.values(), ids=WRONG.keys())
async def test_rejects_as_azure_does(
    http: aiohttp.ClientSession,
    server: FakeAzureServer,
    fake: FakeAzure,
    path: str,
    headers: dict[str, str] | None,
    status: int,
    code: str,
) -> None:
    got, answer, _ = await post(http, server, path, {**CHAT, "model": "gpt-4o"}, headers)
    assert (got, answer["error"]["code"]) == (status, code)
    assert fake.usages == []


async def test_stream_has_azure_quirks(
    http: aiohttp.ClientSession, server: FakeAzureServer, fake: FakeAzure
) -> None:
    fake.behaviour.words = 2
    body = {**CHAT, "stream_options": {"include_usage": True}}
    events, done = await chunks(http, server, body)
    assert done
    first = events[0]
    assert first["choices"] == [] and first["model"] == "" and first["id"] == ""
    assert first["prompt_filter_results"][0]["prompt_index"] == 0
    assert events[1]["choices"][0]["delta"]["role"] == "assistant"
    assert events[1]["choices"][0]["content_filter_results"] == {}
    words = events[2:4]
    assert [e["choices"][0]["delta"]["content"] for e in words] == ["word0 ", "word1 "]
    assert all(e["choices"][0]["content_filter_results"]["violence"]["filtered"] is False
               for e in words)  # fmt: skip
    assert all(e["model"] == "gpt-4o-2024-11-20" for e in events[1:])
    assert events[4]["choices"][0]["finish_reason"] == "stop"
    assert events[5]["choices"] == [] and events[5]["usage"]["completion_tokens"] == 2
    events, _ = await chunks(http, server, CHAT)
    assert "usage" not in events[-1], "no usage chunk unless include_usage"


async def test_stream_options_needs_a_recent_api_version(
    http: aiohttp.ClientSession, server: FakeAzureServer, fake: FakeAzure
) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    status, answer, _ = await post(http, server, CLASSIC.replace("2024-10-21", "2024-06-01"), body)
    assert status == 400
    assert answer["error"]["message"] == "Unrecognized request argument supplied: stream_options"
    status, _, _ = await post(http, server, CLASSIC.replace("2024-10-21", "2024-09-01-preview"),
                              {**body, "stream": False})  # fmt: skip
    assert status == 200


async def test_content_filter_and_errors_inside_the_stream(
    http: aiohttp.ClientSession, server: FakeAzureServer, fake: FakeAzure
) -> None:
    fake.behaviour.filter_after = 1
    events, done = await chunks(http, server, CHAT)
    last = events[-1]["choices"][0]
    assert done and last["finish_reason"] == "content_filter"
    assert last["content_filter_results"]["violence"] == {"filtered": True, "severity": "medium"}
    _, answer, _ = await post(http, server, CLASSIC, CHAT)
    assert answer["choices"][0]["finish_reason"] == "content_filter"
    assert answer["choices"][0]["message"]["content"] == "word0 "

    fake.behaviour.filter_after = None
    fake.behaviour.stream_error_after = 2
    events, done = await chunks(http, server, CHAT)
    assert not done, "an error inside a 200 stream is not followed by [DONE]"
    assert [e["choices"][0]["delta"].get("content") for e in events[2:4]] == ["word0 ", "word1 "]
    assert events[-1]["error"]["type"] == "server_error"


async def test_refusals_and_scripted_failures(
    http: aiohttp.ClientSession, server: FakeAzureServer, fake: FakeAzure
) -> None:
    fake.behaviour.refuse_prompt = True
    status, answer, _ = await post(http, server, CLASSIC, CHAT)
    assert (status, answer["error"]["code"]) == (400, "content_filter")
    assert answer["error"]["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    fake.behaviour.refuse_prompt = False
    fake.behaviour.fail_status = 429
    fake.behaviour.retry_after = 3
    fake.behaviour.fail_times = 1
    status, answer, response = await post(http, server, CLASSIC, CHAT)
    assert (status, answer["error"]["code"]) == (429, "429")
    assert response.headers["retry-after"] == "3" and response.headers["retry-after-ms"] == "3000"
    assert "retry after 3 second" in answer["error"]["message"]
    assert (await post(http, server, CLASSIC, CHAT))[0] == 200, "fail_times ran out"
    fake.behaviour.fail_status, fake.behaviour.fail_times = 500, None
    status, answer, _ = await post(http, server, CLASSIC, CHAT)
    assert (status, answer["error"]["code"]) == (500, "InternalServerError")


async def test_embeddings_on_both_paths(
    http: aiohttp.ClientSession, server: FakeAzureServer, fake: FakeAzure
) -> None:
    classic = "/openai/deployments/gpt-4o-mini/embeddings?api-version=2024-10-21"
    status, answer, _ = await post(http, server, classic, {"input": ["a b", "c"]})
    assert (status, len(answer["data"]), answer["usage"]["prompt_tokens"]) == (200, 2, 6)
    status, answer, _ = await post(http, server, "/openai/v1/embeddings",
                                   {"model": "gpt-4o-mini", "input": "a"})  # fmt: skip
    assert (status, answer["model"]) == (200, "gpt-4o-mini-2024-07-18")
