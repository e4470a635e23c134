"""Azure and Anthropic behind the gateway, driven by the official openai SDK: one proxy whose
MODELS_FILE routes public model names to the Azure fake (classic deployment paths and the v1 API)
and to the Anthropic fake (chat/completions translated to the Messages API), and what each
provider's answers, streams, errors and usage become for the client and in the usage event.

Provider names start with `pr-`: cooldowns are shared through the session Redis, so no other
module's targets may share ours. The cooldown threshold is out of reach: one test's failures
never steer another's.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import redis.asyncio as aioredis
import yaml
from openai.lib.streaming.chat import ChatCompletionStreamState

from llm_gateway_common.events import UsageEvent
from llm_gateway_fakes.anthropic import FakeAnthropic, FakeAnthropicServer
from llm_gateway_fakes.azure import FakeAzure, FakeAzureServer
from tests.conftest import ProxyFactory
from tests.support.events import event_for
from tests.support.services import ProxyProcess

AZURE_KEY = "azure-provider-key-0123456789"
ANTHROPIC_KEY = "sk-ant-provider-key-0123456789"
CLIENT_KEY = "sk-client-key-never-forwarded"
API_VERSION = "2024-10-21"
MAX_TOKENS = 512  # the anthropic provider's max_tokens when the client sets none
HELLO: list[Any] = [{"role": "user", "content": "say hello please"}]
WORDS = "word0 word1 word2 word3 word4 word5 word6 word7 "  # both fakes' default answer
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                        "days": {"type": "integer"}}},
    },
}  # fmt: skip
WEATHER_ARGUMENTS = {"city": "fake", "days": 1}  # what the fake fills the schema with
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(32)).decode()


def _models_file(azure_url: str, anthropic_url: str) -> dict[str, Any]:
    first = 1.0e9  # weights that make the anthropic target the first one tried, every time
    return {
        "providers": {
            "pr-azure": {"type": "azure", "base_url": azure_url, "api_key_env": "PR_AZURE_KEY",
                         "api_version": API_VERSION},
            "pr-azure-v1": {"type": "azure", "base_url": azure_url,
                            "api_key_env": "PR_AZURE_KEY", "api_version": "v1"},
            "pr-claude": {"type": "anthropic", "base_url": anthropic_url,
                          "api_key_env": "PR_ANTHROPIC_KEY", "max_tokens": MAX_TOKENS},
        },
        "models": {
            "azure-4o": {"targets": [{"provider": "pr-azure", "model": "gpt-4o"}]},
            "azure-embed": {"targets": [{"provider": "pr-azure",
                                         "model": "text-embedding-3-small"}]},
            "azure-v1-mini": {"targets": [{"provider": "pr-azure-v1", "model": "gpt-4o-mini"}]},
            "claude": {"targets": [{"provider": "pr-claude", "model": "claude-sonnet-4-5"}]},
            "claude-or-azure": {
                "targets": [{"provider": "pr-claude", "model": "claude-haiku-4-5", "weight": first},
                            {"provider": "pr-azure", "model": "gpt-4o", "weight": 1 / first}],
                "retries": 1,
            },
        },
        "routing": {"retries": 0, "backoff": {"base": 0.01, "max": 0.05},
                    "cooldown": {"failures": 1000, "seconds": 1}, "deadline": 10},
    }  # fmt: skip


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def azure_server() -> Iterator[FakeAzureServer]:
    server = FakeAzureServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def routes_proxy(
    proxy_factory: ProxyFactory,
    azure_server: FakeAzureServer,
    anthropic_server: FakeAnthropicServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> ProxyProcess:
    path: Path = tmp_path_factory.mktemp("provider-routes") / "models.yaml"
    path.write_text(yaml.safe_dump(_models_file(azure_server.base_url, anthropic_server.base_url)))
    return proxy_factory(MODELS_FILE=str(path), PR_AZURE_KEY=AZURE_KEY,
                         PR_ANTHROPIC_KEY=ANTHROPIC_KEY)  # fmt: skip


@pytest.fixture
def azure(azure_server: FakeAzureServer) -> FakeAzure:
    fake = azure_server.fake
    fake.reset()
    fake.behaviour.api_key = AZURE_KEY
    fake.behaviour.deployments["text-embedding-3-small"] = "text-embedding-3-small"
    return fake


@pytest.fixture
def anthropic(anthropic_server: FakeAnthropicServer) -> FakeAnthropic:
    fake = anthropic_server.fake
    fake.reset()
    fake.behaviour.api_key = ANTHROPIC_KEY
    return fake


@pytest.fixture
async def client(
    routes_proxy: ProxyProcess, azure: FakeAzure, anthropic: FakeAnthropic
) -> AsyncIterator[openai.AsyncOpenAI]:
    """The SDK as an application uses it; its own retries off, so the fakes count the
    gateway's attempts only. Both fakes are reset for every test that has a client."""
    async with openai.AsyncOpenAI(base_url=f"{routes_proxy.base_url}/v1", api_key=CLIENT_KEY,
                                  max_retries=0) as sdk:  # fmt: skip
        yield sdk


async def chat(client: openai.AsyncOpenAI, model: str, **extra: Any) -> tuple[Any, Any]:
    """A chat completion: the response headers and the SDK's parsed answer."""
    extra.setdefault("messages", HELLO)
    raw = await client.chat.completions.with_raw_response.create(model=model, **extra)
    return raw.headers, raw.parse()


async def stream_chunks(
    client: openai.AsyncOpenAI, model: str, **extra: Any
) -> tuple[Any, list[Any]]:
    """A streamed chat completion read to its end: the response headers and every chunk."""
    extra.setdefault("messages", HELLO)
    stream = await client.chat.completions.create(model=model, stream=True, **extra)
    return stream.response.headers, [chunk async for chunk in stream]


async def broken_stream(
    client: openai.AsyncOpenAI, model: str
) -> tuple[Any, list[Any], openai.APIError]:
    """A stream the provider breaks after some content: the headers, the chunks the SDK gave
    before it raised, and what it raised (the error event the gateway ended the stream with)."""
    stream = await client.chat.completions.create(model=model, messages=HELLO, stream=True)
    chunks = []
    with pytest.raises(openai.APIError) as raised:
        async for chunk in stream:
            chunks.append(chunk)
    return stream.response.headers, chunks, raised.value


def content_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finish_of(chunks: list[Any]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


def assert_routed(event: UsageEvent, provider: str, name: str, upstream_model: str) -> None:
    assert (event.provider, event.provider_name, event.upstream_model) == (
        provider, name, upstream_model)  # fmt: skip
    assert (event.attempts, event.failed_targets) == (1, ())


def anthropic_usage(fake: FakeAnthropic) -> tuple[int, int]:
    """(prompt, completion) in OpenAI's meaning, from what the fake reported last."""
    usage = fake.usages[-1]
    prompt = (usage["input_tokens"] + usage["cache_creation_input_tokens"]
              + usage["cache_read_input_tokens"])  # fmt: skip
    return prompt, usage["output_tokens"]


# --- Azure ---------------------------------------------------------------------------------------


async def test_azure_classic_chat_goes_to_the_deployment_path_with_the_api_key(
    client: openai.AsyncOpenAI, azure: FakeAzure, redis: aioredis.Redis
) -> None:
    headers, answer = await chat(client, "azure-4o", user="u-7")
    assert headers["x-llm-route"] == "pr-azure/gpt-4o"
    assert headers["x-llm-attempts"] == "1"
    sent = azure.received[-1]
    assert (sent.path, sent.query) == (
        "/openai/deployments/gpt-4o/chat/completions",
        f"api-version={API_VERSION}",
    )
    assert sent.headers["api-key"] == AZURE_KEY
    assert "authorization" not in sent.headers
    assert sent.json()["model"] == "gpt-4o" and sent.json()["user"] == "u-7"
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content == WORDS
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "gpt-4o-2024-11-20"
    assert answer.usage.model_dump(exclude_none=True) == azure.usages[-1]
    event = await event_for(redis, headers["x-llm-request-id"])
    assert_routed(event, "azure.ai.openai", "pr-azure", "gpt-4o")
    assert (event.model, event.response_model) == ("azure-4o", "gpt-4o-2024-11-20")
    assert (event.outcome, event.status_code, event.usage_source) == ("ok", 200, "provider")
    assert event.upstream_request_id is not None and event.upstream_request_id.startswith("req-")


@pytest.mark.parametrize("include_usage", [False, True])
async def test_azure_classic_stream_survives_the_prompt_filter_chunk(
    client: openai.AsyncOpenAI, azure: FakeAzure, redis: aioredis.Redis, include_usage: bool
) -> None:
    azure.behaviour.cached_tokens = 2
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    headers, chunks = await stream_chunks(client, "azure-4o", **extra)
    sent = azure.received[-1]
    assert sent.path == "/openai/deployments/gpt-4o/chat/completions"
    assert sent.query == f"api-version={API_VERSION}"
    assert sent.json()["stream_options"] == {"include_usage": True}  # asked for the meter
    # Azure's prompt-filter chunk (no choices, model "") reaches the client as Azure sent it.
    assert chunks[0].choices == [] and chunks[0].model == ""
    assert content_of(chunks) == WORDS
    assert finish_of(chunks) == ["stop"]
    fake_usage = azure.usages[-1]
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
        assert usage_chunks[0].usage.model_dump(exclude_none=True) == fake_usage
    else:
        assert usage_chunks == [], "the usage chunk the gateway asked for reached the client"
    assert azure.streams_completed == 1
    event = await event_for(redis, headers["x-llm-request-id"])
    assert_routed(event, "azure.ai.openai", "pr-azure", "gpt-4o")
    assert event.stream and event.outcome == "ok" and event.usage_source == "provider"
    assert (event.prompt_tokens, event.completion_tokens, event.total_tokens) == (
        fake_usage["prompt_tokens"],
        fake_usage["completion_tokens"],
        fake_usage["total_tokens"],
    )
    assert event.cached_tokens == 2
    assert event.response_model == "gpt-4o-2024-11-20"


@pytest.mark.parametrize("stream", [False, True])
async def test_azure_content_filter_finish_reaches_the_client_and_the_request_is_ok(
    client: openai.AsyncOpenAI, azure: FakeAzure, redis: aioredis.Redis, stream: bool
) -> None:
    azure.behaviour.filter_after = 3
    if stream:
        headers, chunks = await stream_chunks(client, "azure-4o")
        content, finishes = content_of(chunks), finish_of(chunks)
    else:
        headers, answer = await chat(client, "azure-4o")
        content, finishes = answer.choices[0].message.content, [answer.choices[0].finish_reason]
    assert content == "word0 word1 word2 "
    assert finishes == ["content_filter"]
    event = await event_for(redis, headers["x-llm-request-id"])
    assert (event.outcome, event.status_code, event.error_type) == ("ok", 200, None)
    assert event.completion_tokens == 3


async def test_azure_embeddings_through_the_classic_path(
    client: openai.AsyncOpenAI, azure: FakeAzure, redis: aioredis.Redis
) -> None:
    raw = await client.embeddings.with_raw_response.create(
        model="azure-embed", input=["one two three", "four five"]
    )
    answer = raw.parse()
    sent = azure.received[-1]
    assert (sent.path, sent.query) == (
        "/openai/deployments/text-embedding-3-small/embeddings",
        f"api-version={API_VERSION}",
    )
    assert sent.headers["api-key"] == AZURE_KEY and "authorization" not in sent.headers
    assert [item.index for item in answer.data] == [0, 1]
    assert len(answer.data[0].embedding) == 8
    event = await event_for(redis, raw.headers["x-llm-request-id"])
    assert_routed(event, "azure.ai.openai", "pr-azure", "text-embedding-3-small")
    assert event.endpoint == "/v1/embeddings"
    assert event.prompt_tokens == azure.usages[-1]["prompt_tokens"] > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_azure_v1_api_takes_the_deployment_as_model(
    client: openai.AsyncOpenAI, azure: FakeAzure, redis: aioredis.Redis, stream: bool
) -> None:
    if stream:
        headers, chunks = await stream_chunks(client, "azure-v1-mini")
        assert content_of(chunks) == WORDS
    else:
        headers, answer = await chat(client, "azure-v1-mini")
        assert answer.choices[0].message.content == WORDS
        assert answer.model == "gpt-4o-mini-2024-07-18"
    sent = azure.received[-1]
    assert (sent.path, sent.query) == ("/openai/v1/chat/completions", "")
    assert sent.json()["model"] == "gpt-4o-mini"
    assert sent.headers["api-key"] == AZURE_KEY and "authorization" not in sent.headers
    event = await event_for(redis, headers["x-llm-request-id"])
    assert_routed(event, "azure.ai.openai", "pr-azure-v1", "gpt-4o-mini")
    assert event.prompt_tokens == azure.usages[-1]["prompt_tokens"]


async def test_azure_error_inside_the_200_stream_after_content_reaches_the_client(
    client: openai.AsyncOpenAI, azure: FakeAzure, redis: aioredis.Redis
) -> None:
    azure.behaviour.stream_error_after = 2
    headers, chunks, error = await broken_stream(client, "azure-4o")
    assert content_of(chunks) == "word0 word1 "
    assert error.message == "The server had an error while processing your request."
    assert len(azure.received) == 1
    event = await event_for(redis, headers["x-llm-request-id"])
    assert (event.outcome, event.error_type, event.status_code) == (
        "upstream_error", "stream_error", 200)  # fmt: skip
    assert_routed(event, "azure.ai.openai", "pr-azure", "gpt-4o")
    # No usage chunk came: what reached the client is estimated, not recorded as nothing.
    assert event.usage_source == "estimated"
    assert event.prompt_tokens > 0 and event.completion_tokens > 0


# --- Anthropic: answers --------------------------------------------------------------------------


async def test_anthropic_text_answer_and_the_headers_at_the_provider(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, redis: aioredis.Redis
) -> None:
    headers, answer = await chat(client, "claude")
    assert headers["x-llm-route"] == "pr-claude/claude-sonnet-4-5"
    sent = anthropic.received[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers  # the client's key never reaches the provider
    assert CLIENT_KEY not in str(sent.headers)
    assert sent.json() == {"model": "claude-sonnet-4-5", "max_tokens": MAX_TOKENS,
                           "messages": [{"role": "user", "content": [
                               {"type": "text", "text": "say hello please"}]}]}  # fmt: skip
    assert answer.object == "chat.completion"
    assert answer.id.startswith("msg_")
    assert answer.model == "claude-sonnet-4-5"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == WORDS
    assert answer.choices[0].finish_reason == "stop"
    prompt, completion = anthropic_usage(anthropic)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (prompt, completion)
    assert answer.usage.total_tokens == prompt + completion
    event = await event_for(redis, headers["x-llm-request-id"])
    assert_routed(event, "anthropic", "pr-claude", "claude-sonnet-4-5")
    assert (event.model, event.response_model) == ("claude", "claude-sonnet-4-5")
    assert (event.outcome, event.status_code, event.usage_source) == ("ok", 200, "provider")
    assert (event.prompt_tokens, event.completion_tokens) == (prompt, completion)
    assert event.upstream_request_id is not None and event.upstream_request_id.startswith("req_")


async def test_anthropic_system_message_becomes_the_system_field(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic
) -> None:
    messages = [{"role": "system", "content": "You are terse."}, *HELLO]
    _, answer = await chat(client, "claude", messages=messages, max_tokens=64, temperature=0.5)
    sent = anthropic.received[-1].json()
    assert sent["system"] == "You are terse."
    assert [m["role"] for m in sent["messages"]] == ["user"]
    assert (sent["max_tokens"], sent["temperature"]) == (64, 0.5)
    assert answer.choices[0].message.content == WORDS


@pytest.mark.parametrize("include_usage", [False, True])
async def test_anthropic_stream_arrives_as_chat_completion_chunks(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, redis: aioredis.Redis,
    include_usage: bool,
) -> None:  # fmt: skip
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    headers, chunks = await stream_chunks(client, "claude", **extra)
    assert "stream_options" not in anthropic.received[-1].json()
    assert anthropic.received[-1].json()["stream"] is True
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("msg_")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert content_of(chunks) == WORDS
    assert finish_of(chunks) == ["stop"]
    prompt, completion = anthropic_usage(anthropic)
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert chunks[-1] is usage_chunks[0] and chunks[-1].choices == []
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
            prompt, completion)  # fmt: skip
    else:
        assert usage_chunks == []
    assert anthropic.streams_completed == 1
    event = await event_for(redis, headers["x-llm-request-id"])
    assert_routed(event, "anthropic", "pr-claude", "claude-sonnet-4-5")
    assert event.stream and event.outcome == "ok" and event.usage_source == "provider"
    assert (event.prompt_tokens, event.completion_tokens) == (prompt, completion)


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_max_tokens_stop_is_finish_reason_length(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, stream: bool
) -> None:
    if stream:
        _, chunks = await stream_chunks(client, "claude", max_completion_tokens=3)
        content, finishes = content_of(chunks), finish_of(chunks)
    else:
        _, answer = await chat(client, "claude", max_completion_tokens=3)
        content, finishes = answer.choices[0].message.content, [answer.choices[0].finish_reason]
    assert anthropic.received[-1].json()["max_tokens"] == 3
    assert (content, finishes) == ("word0 word1 word2 ", ["length"])


async def test_anthropic_tool_calls(client: openai.AsyncOpenAI, anthropic: FakeAnthropic) -> None:
    anthropic.behaviour.use_tools = True
    anthropic.behaviour.tool_calls = 2
    _, answer = await chat(client, "claude", tools=[WEATHER_TOOL])
    sent = anthropic.received[-1].json()
    function = WEATHER_TOOL["function"]
    assert sent["tools"] == [{"name": function["name"], "description": function["description"],
                              "input_schema": function["parameters"]}]  # fmt: skip
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check that."
    calls = choice.message.tool_calls
    assert len(calls) == 2 and len({call.id for call in calls}) == 2
    for call in calls:
        assert call.id.startswith("toolu_") and call.type == "function"
        assert call.function.name == "get_weather"
        assert orjson.loads(call.function.arguments) == WEATHER_ARGUMENTS


async def test_anthropic_streamed_tool_calls_assemble_in_the_sdk(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, redis: aioredis.Redis
) -> None:
    anthropic.behaviour.use_tools = True
    anthropic.behaviour.tool_calls = 2
    headers, chunks = await stream_chunks(client, "claude", tools=[WEATHER_TOOL])
    fragments = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    # OpenAI's 0-based count of tool calls (the text block is Anthropic's block 0), in order.
    assert [call.index for call in fragments] == sorted(call.index for call in fragments)
    opening = [call for call in fragments if call.id]
    assert [call.index for call in opening] == [0, 1]
    assert all(call.function.name == "get_weather" for call in opening)
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState(input_tools=[WEATHER_TOOL])
    for chunk in chunks:
        state.handle_chunk(chunk)
    choice = state.get_final_completion().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check that."
    calls = choice.message.tool_calls or []
    assert [call.id for call in calls] == [call.id for call in opening]
    assert [orjson.loads(call.function.arguments) for call in calls] == [WEATHER_ARGUMENTS] * 2
    event = await event_for(redis, headers["x-llm-request-id"])
    assert event.completion_tokens == anthropic.usages[-1]["output_tokens"]


async def test_anthropic_tool_result_turn(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic
) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_01", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_01", "content": "sunny, 21 C"},
    ]  # fmt: skip
    _, answer = await chat(client, "claude", messages=messages, tools=[WEATHER_TOOL])
    sent = anthropic.received[-1].json()["messages"]
    assert sent[1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
         "input": {"city": "Paris"}}]}  # fmt: skip
    assert sent[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_01",
         "content": [{"type": "text", "text": "sunny, 21 C"}]}]}  # fmt: skip
    assert answer.choices[0].message.content == WORDS
    assert answer.choices[0].finish_reason == "stop"


async def test_anthropic_image_as_data_url(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic
) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    _, answer = await chat(client, "claude", messages=[{"role": "user", "content": content}])
    blocks = anthropic.received[-1].json()["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                     "data": PNG}}  # fmt: skip
    assert answer.usage.prompt_tokens == anthropic_usage(anthropic)[0] > 85  # the image counts


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_cache_tokens_are_normalised(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, redis: aioredis.Redis, stream: bool
) -> None:
    anthropic.behaviour.cache_creation_input_tokens = 100
    anthropic.behaviour.cache_read_input_tokens = 300
    if stream:
        headers, chunks = await stream_chunks(
            client, "claude", stream_options={"include_usage": True}
        )
        usage = chunks[-1].usage
    else:
        headers, answer = await chat(client, "claude")
        usage = answer.usage
    reported = anthropic.usages[-1]
    prompt = reported["input_tokens"] + 100 + 300
    assert usage.prompt_tokens == prompt
    assert usage.prompt_tokens_details.cached_tokens == 300
    assert usage.completion_tokens == reported["output_tokens"]
    assert usage.total_tokens == prompt + reported["output_tokens"]
    event = await event_for(redis, headers["x-llm-request-id"])
    assert (event.prompt_tokens, event.cached_tokens) == (prompt, 300)
    assert event.total_tokens == prompt + reported["output_tokens"]


async def test_anthropic_response_format_json_schema(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic
) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}},
              "required": ["answer"], "additionalProperties": False}  # fmt: skip
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": schema, "strict": True},
    }
    _, answer = await chat(client, "claude", response_format=response_format)
    sent = anthropic.received[-1].json()
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "response_format" not in sent
    assert answer.choices[0].finish_reason == "stop"


# --- Anthropic: failures -------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_overloaded_is_answered_by_the_azure_target(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, azure: FakeAzure,
    redis: aioredis.Redis, stream: bool,
) -> None:  # fmt: skip
    anthropic.behaviour.fail_status = 529
    if stream:
        headers, chunks = await stream_chunks(client, "claude-or-azure")
        content, model = content_of(chunks), chunks[-1].model
    else:
        headers, answer = await chat(client, "claude-or-azure")
        content, model = answer.choices[0].message.content, answer.model
    assert (content, model) == (WORDS, "gpt-4o-2024-11-20")
    assert headers["x-llm-route"] == "pr-azure/gpt-4o"
    assert headers["x-llm-attempts"] == "2"
    assert len(anthropic.received) == 1 and len(azure.received) == 1
    assert azure.received[-1].path == "/openai/deployments/gpt-4o/chat/completions"
    event = await event_for(redis, headers["x-llm-request-id"])
    assert (event.provider, event.provider_name, event.upstream_model) == (
        "azure.ai.openai", "pr-azure", "gpt-4o")  # fmt: skip
    assert (event.attempts, event.failed_targets) == (2, ("pr-claude",))
    assert (event.outcome, event.status_code) == ("ok", 200)
    assert event.prompt_tokens == azure.usages[-1]["prompt_tokens"]


async def test_anthropic_error_before_any_content_is_answered_by_the_azure_target(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, azure: FakeAzure, redis: aioredis.Redis
) -> None:
    """`event: error` right after message_start and the (empty) text block's start: the client
    has had nothing yet, so the other target still may answer."""
    anthropic.behaviour.error_after_deltas = 0
    headers, chunks = await stream_chunks(client, "claude-or-azure")
    assert content_of(chunks) == WORDS
    assert anthropic.streams_errored == 1 and azure.streams_completed == 1
    event = await event_for(redis, headers["x-llm-request-id"])
    assert (event.provider_name, event.attempts, event.failed_targets) == (
        "pr-azure", 2, ("pr-claude",))  # fmt: skip
    assert event.outcome == "ok"


async def test_anthropic_error_mid_stream_ends_the_clients_stream_with_an_error(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, azure: FakeAzure, redis: aioredis.Redis
) -> None:
    anthropic.behaviour.error_after_deltas = 3
    headers, chunks, error = await broken_stream(client, "claude-or-azure")
    assert content_of(chunks) == "word0 word1 word2 "
    assert finish_of(chunks) == []
    assert error.message == "Overloaded"
    assert error.body == {"message": "Overloaded", "type": "api_error", "param": None,
                                 "code": "overloaded_error"}  # fmt: skip
    assert anthropic.streams_errored == 1
    assert not azure.received, "content had reached the client: no other target may answer"
    event = await event_for(redis, headers["x-llm-request-id"])
    assert (event.outcome, event.error_type, event.status_code) == (
        "upstream_error", "stream_error", 200)  # fmt: skip
    assert_routed(event, "anthropic", "pr-claude", "claude-haiku-4-5")
    # The usage seen so far: message_start's input and its output count.
    reported = anthropic.usages[-1]
    assert event.usage_source == "provider"
    assert (event.prompt_tokens, event.completion_tokens) == (reported["input_tokens"], 1)


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_400_is_the_clients_error_in_openai_shape_and_not_retried(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, azure: FakeAzure,
    redis: aioredis.Redis, stream: bool,
) -> None:  # fmt: skip
    # Translation passes a tool name with a space; the Messages API refuses it.
    bad_tool = {"type": "function", "function": {"name": "get weather", "parameters": {
        "type": "object", "properties": {}}}}  # fmt: skip
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="claude-or-azure", messages=HELLO,
                                             tools=[bad_tool], stream=stream)  # fmt: skip
    error = raised.value
    assert error.status_code == 400
    assert error.body == {
        "message": "tools.0.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'",
        "type": "invalid_request_error", "param": None, "code": "invalid_request_error",
    }  # fmt: skip
    assert error.response.headers["content-type"] == "application/json"
    assert len(anthropic.received) == 1 and not azure.received
    event = await event_for(redis, error.response.headers["x-llm-request-id"])
    assert (event.outcome, event.status_code, event.error_type) == (
        "upstream_error", 400, "invalid_request_error")  # fmt: skip
    assert_routed(event, "anthropic", "pr-claude", "claude-haiku-4-5")


async def test_anthropic_overloaded_with_no_other_target_is_a_503_in_openai_shape(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, redis: aioredis.Redis
) -> None:
    anthropic.behaviour.fail_status = 529
    with pytest.raises(openai.InternalServerError) as raised:
        await client.chat.completions.create(model="claude", messages=HELLO)
    error = raised.value
    assert error.status_code == 503
    assert error.body == {"message": "Overloaded", "type": "api_error", "param": None,
                          "code": "overloaded_error"}  # fmt: skip
    assert len(anthropic.received) == 1  # the model's routing allows no retry
    event = await event_for(redis, error.response.headers["x-llm-request-id"])
    assert (event.outcome, event.status_code, event.error_type) == (
        "upstream_error", 503, "overloaded_error")  # fmt: skip
    assert (event.provider_name, event.attempts, event.failed_targets) == (
        "pr-claude", 1, ("pr-claude",))  # fmt: skip


async def test_anthropic_refusing_the_gateways_key_is_a_502_in_the_gateways_words(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, redis: aioredis.Redis
) -> None:
    anthropic.behaviour.api_key = "sk-ant-another-key"
    with pytest.raises(openai.APIStatusError) as raised:
        await client.chat.completions.create(model="claude", messages=HELLO)
    error = raised.value
    assert error.status_code == 502
    assert isinstance(error.body, dict) and error.body["code"] == "upstream_misconfigured"
    assert "x-api-key" not in error.body["message"]  # not the provider's words: the client's
    assert anthropic.received[-1].headers["x-api-key"] == ANTHROPIC_KEY  # key is not at fault
    event = await event_for(redis, error.response.headers["x-llm-request-id"])
    assert (event.status_code, event.outcome) == (502, "upstream_error")
    assert (event.attempts, event.failed_targets) == (1, ("pr-claude",))


async def test_what_the_messages_api_cannot_express_is_the_gateways_400(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, redis: aioredis.Redis
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="claude", messages=HELLO, temperature=1.5)
    error = raised.value
    assert error.body["param"] == "temperature" and error.body["type"] == "invalid_request_error"
    assert not anthropic.received
    event = await event_for(redis, error.response.headers["x-llm-request-id"])
    assert (event.status_code, event.outcome) == (400, "gateway_error")


async def test_a_request_one_target_cannot_express_goes_to_one_that_can(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, azure: FakeAzure, redis: aioredis.Redis
) -> None:
    """`n: 2` has no Messages form: the Anthropic target (always picked first here) refuses it
    before sending anything, and the Azure target of the same model takes it."""
    headers, answer = await chat(client, "claude-or-azure", n=2)
    assert headers["x-llm-route"] == "pr-azure/gpt-4o" and headers["x-llm-attempts"] == "1"
    assert len(answer.choices) >= 1
    assert not anthropic.received and len(azure.received) == 1
    event = await event_for(redis, headers["x-llm-request-id"])
    assert (event.attempts, event.failed_targets, event.outcome) == (1, (), "ok")


async def test_embeddings_for_an_anthropic_model_is_a_400_naming_the_problem(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, redis: aioredis.Redis
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.embeddings.create(model="claude", input="hello")
    error = raised.value
    assert error.body["code"] == "unsupported_by_provider"
    assert error.body["param"] == "model"
    assert "claude" in error.body["message"] and "/v1/embeddings" in error.body["message"]
    assert not anthropic.received
    event = await event_for(redis, error.response.headers["x-llm-request-id"])
    assert (event.status_code, event.attempts, event.endpoint) == (400, 0, "/v1/embeddings")


# --- prices: the events of a real proxy against hand-computed figures ------------------------

PER_MTOK = Decimal(1_000_000)


@pytest.mark.parametrize("stream", [False, True])
async def test_azure_events_are_priced_with_cache_reads(
    client: openai.AsyncOpenAI, azure: FakeAzure, redis: aioredis.Redis, stream: bool
) -> None:
    """gpt-4o on Azure: $2.50 input, $1.25 cached input, $10 output per million tokens."""
    azure.behaviour.cached_tokens = 3
    if stream:
        headers, _ = await stream_chunks(client, "azure-4o")
    else:
        headers, _ = await chat(client, "azure-4o")
    usage = azure.usages[-1]
    uncached = usage["prompt_tokens"] - 3
    expected = (uncached * Decimal("2.50") + 3 * Decimal("1.25")
                + usage["completion_tokens"] * Decimal(10)) / PER_MTOK  # fmt: skip
    event = await event_for(redis, headers["x-llm-request-id"])
    assert event.price_source.startswith("genai-prices ")
    assert event.cost_usd == expected


@pytest.mark.parametrize(("reads", "rates"), [
    (300, ("3", "0.30", "3.75", "15")),  # claude-sonnet-4-5 up to 200k input tokens
    (250_000, ("6", "0.60", "7.50", "22.50")),  # every token at the >200k rates
], ids=["below-200k", "above-200k"])  # fmt: skip
async def test_anthropic_events_are_priced_with_cache_reads_writes_and_the_200k_cliff(
    client: openai.AsyncOpenAI, anthropic: FakeAnthropic, redis: aioredis.Redis, reads: int,
    rates: tuple[str, str, str, str],
) -> None:  # fmt: skip
    anthropic.behaviour.cache_read_input_tokens = reads
    anthropic.behaviour.cache_creation_input_tokens = 100
    headers, _ = await stream_chunks(client, "claude", stream_options={"include_usage": True})
    usage = anthropic.usages[-1]
    rate_in, rate_read, rate_write, rate_out = (Decimal(r) for r in rates)
    expected = (usage["input_tokens"] * rate_in + reads * rate_read + 100 * rate_write
                + usage["output_tokens"] * rate_out) / PER_MTOK  # fmt: skip
    event = await event_for(redis, headers["x-llm-request-id"])
    assert (event.cached_tokens, event.cache_write_tokens) == (reads, 100)
    assert event.cost_usd == expected
