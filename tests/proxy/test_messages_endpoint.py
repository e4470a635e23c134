"""The Anthropic Messages API in front (`/v1/messages`), driven by the official anthropic SDK and
by Claude Code-shaped requests: one proxy with gateway keys whose MODELS_FILE routes one model to
the Anthropic fake (passed through but `model`) and others to an OpenAI fake (translated to
chat/completions and back), and what clients and the usage event see on every path.

Provider names start with `msg-`: cooldowns are shared through the session Redis.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
import redis.asyncio as aioredis
import yaml

from llm_gateway_common.events import UsageEvent
from llm_gateway_fakes.anthropic import FakeAnthropic, FakeAnthropicServer
from llm_gateway_fakes.azure import FakeAzure, FakeAzureServer
from llm_gateway_fakes.openai import FakeOpenAI, FakeOpenAIServer
from llm_gateway_proxy.keys import Limits, new_key
from llm_gateway_proxy.keystore import KeyStore
from tests.conftest import ProxyFactory
from tests.proxy.test_access import record
from tests.support.events import event_for
from tests.support.metrics import scrape, value
from tests.support.services import ProxyProcess

ANTHROPIC_KEY = "sk-ant-provider-key-msg-0123456789"
OPENAI_KEY = "sk-openai-provider-key-msg-0123456789"
CLAUDE = "claude-sonnet-4-5"  # routed to the Anthropic fake under its own name
GPT = "gpt-coder"  # routed to the OpenAI fake as gpt-4o
AZURE = "azure-coder"  # routed to the Azure fake's gpt-4o deployment
AZURE_KEY = "azure-provider-key-msg-0123456789"
HELLO: list[Any] = [{"role": "user", "content": "say hello please"}]
WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]},
}  # fmt: skip
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(32)).decode()
SESSION = "5f0c2c8e-claude-code-session"
CLAUDE_CODE_BETAS = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"
)


def _models_file(anthropic_url: str, openai_url: str, azure_url: str) -> dict[str, Any]:
    first = 1.0e9  # weights that make the anthropic target the first one tried, every time
    return {
        "providers": {
            "msg-claude": {"type": "anthropic", "base_url": anthropic_url,
                           "api_key_env": "MSG_ANTHROPIC_KEY"},
            "msg-openai": {"type": "openai", "base_url": openai_url,
                           "api_key_env": "MSG_OPENAI_KEY"},
            "msg-azure": {"type": "azure", "base_url": azure_url, "api_key_env": "MSG_AZURE_KEY",
                          "api_version": "2024-10-21"},
            "msg-strict": {"type": "anthropic", "base_url": anthropic_url,
                           "api_key_env": "MSG_ANTHROPIC_KEY", "betas": ["claude-code-20250219"]},
        },
        "models": {
            CLAUDE: {"targets": [{"provider": "msg-claude"}]},
            GPT: {"targets": [{"provider": "msg-openai", "model": "gpt-4o"}]},
            "claude-strict": {"targets": [{"provider": "msg-strict", "model": CLAUDE}]},
            AZURE: {"targets": [{"provider": "msg-azure", "model": "gpt-4o"}]},
            "claude-then-gpt": {
                "targets": [{"provider": "msg-claude", "model": CLAUDE, "weight": first},
                            {"provider": "msg-openai", "model": "gpt-4o", "weight": 1 / first}],
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
def openai_server() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def messages_proxy(
    proxy_factory: ProxyFactory,
    anthropic_server: FakeAnthropicServer,
    openai_server: FakeOpenAIServer,
    azure_server: FakeAzureServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> ProxyProcess:
    path: Path = tmp_path_factory.mktemp("messages") / "models.yaml"
    urls = (anthropic_server.base_url, openai_server.base_url, azure_server.base_url)
    path.write_text(yaml.safe_dump(_models_file(*urls)))
    return proxy_factory(MODELS_FILE=str(path), MSG_ANTHROPIC_KEY=ANTHROPIC_KEY,
                         MSG_OPENAI_KEY=OPENAI_KEY, MSG_AZURE_KEY=AZURE_KEY, AUTH_MODE="keys",
                         MANAGEMENT_TOKEN="msg-token")  # fmt: skip


@pytest.fixture
def claude(anthropic_server: FakeAnthropicServer) -> FakeAnthropic:
    fake = anthropic_server.fake
    fake.reset()
    fake.behaviour.api_key = ANTHROPIC_KEY
    return fake


@pytest.fixture
def gpt(openai_server: FakeOpenAIServer) -> FakeOpenAI:
    fake = openai_server.fake
    fake.reset()
    fake.behaviour.api_key = OPENAI_KEY
    return fake


async def _key(redis_url: str, limits: Limits | None = None) -> str:
    key = new_key()
    client = aioredis.Redis.from_url(redis_url)
    await KeyStore(client, cache_ttl=0, timeout=2).save(record(key, limits=limits or Limits()))
    await client.aclose()
    return key


@pytest.fixture
async def key(redis_url: str) -> str:
    return await _key(redis_url)


@pytest.fixture
async def sdk(
    messages_proxy: ProxyProcess, key: str, claude: FakeAnthropic, gpt: FakeOpenAI
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The async SDK as an application uses it (its key as `x-api-key`); its own retries off,
    so the fakes count the gateway's attempts only."""
    async with anthropic.AsyncAnthropic(
        base_url=messages_proxy.base_url, api_key=key, max_retries=0,
        default_headers={"X-Claude-Code-Session-Id": SESSION},
    ) as client:  # fmt: skip
        yield client


def sync_sdk(proxy: ProxyProcess, key: str) -> anthropic.Anthropic:
    """The sync SDK authenticating as Claude Code does with ANTHROPIC_AUTH_TOKEN (Bearer)."""
    return anthropic.Anthropic(base_url=proxy.base_url, auth_token=key, max_retries=0)


async def event_of(redis: aioredis.Redis, request_id: str | None) -> UsageEvent:
    assert request_id is not None
    return await event_for(redis, request_id)


def expected_usage(fake: FakeAnthropic) -> tuple[int, int, int, int]:
    """(prompt, completion, cache reads, cache writes) in the event's meaning, from the fake."""
    usage = fake.usages[-1]
    prompt = (usage["input_tokens"] + usage["cache_creation_input_tokens"]
              + usage["cache_read_input_tokens"])  # fmt: skip
    return (prompt, usage["output_tokens"], usage["cache_read_input_tokens"],
            usage["cache_creation_input_tokens"])  # fmt: skip


def metered(event: UsageEvent) -> tuple[int, int, int, int]:
    return (event.prompt_tokens, event.completion_tokens, event.cached_tokens,
            event.cache_write_tokens)  # fmt: skip


# --- an anthropic target: passed through -----------------------------------------------------


async def test_sdk_message_to_anthropic_passes_through_but_the_model(
    sdk: anthropic.AsyncAnthropic, claude: FakeAnthropic, redis: aioredis.Redis
) -> None:
    claude.behaviour.cache_read_input_tokens = 30
    claude.behaviour.cache_creation_input_tokens = 12
    raw = await sdk.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=64, messages=HELLO, metadata={"user_id": "dev-7"},
        system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        extra_headers={"anthropic-version": "2023-06-01"},
    )  # fmt: skip
    message = await raw.parse()
    assert message.type == "message" and message.content[0].type == "text"
    assert message.content[0].text.startswith("word0")
    sent = claude.received[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"  # the client's, forwarded
    body = sent.json()
    assert body["model"] == CLAUDE and body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert raw.headers["x-llm-route"] == f"msg-claude/{CLAUDE}"
    event = await event_of(redis, raw.headers.get("x-llm-request-id"))
    assert (event.endpoint, event.provider, event.status_code, event.outcome) == (
        "/v1/messages", "anthropic", 200, "ok")  # fmt: skip
    assert metered(event) == expected_usage(claude)
    assert event.usage_source == "provider"
    assert event.session_id == SESSION
    assert event.user == "dev-7"
    assert event.upstream_request_id is not None and event.upstream_request_id.startswith("req_")


async def test_anthropic_stream_is_relayed_byte_for_byte(
    messages_proxy: ProxyProcess, key: str, claude: FakeAnthropic,
    http: aiohttp.ClientSession, anthropic_server: FakeAnthropicServer,
) -> None:  # fmt: skip
    body = {"model": CLAUDE, "max_tokens": 64, "messages": HELLO, "stream": True}
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    async with http.post(f"{messages_proxy.base_url}/v1/messages", json=body,
                         headers=headers) as response:  # fmt: skip
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        through = await response.read()
    direct_headers = {**headers, "x-api-key": ANTHROPIC_KEY}
    async with http.post(f"{anthropic_server.base_url}/v1/messages", json=body,
                         headers=direct_headers) as response:  # fmt: skip
        direct = await response.read()

    def ids_out(raw: bytes) -> bytes:
        return re.sub(rb"(msg|toolu|req)_[A-Za-z0-9_]+", rb"\1_X", raw)

    assert ids_out(through) == ids_out(direct)
    assert b"event: message_stop" in through and b"[DONE]" not in through


async def test_sdk_stream_from_anthropic_meters_usage_and_first_content(
    sdk: anthropic.AsyncAnthropic, claude: FakeAnthropic, redis: aioredis.Redis
) -> None:
    claude.behaviour.content_delay = 0.4  # message_start at once, the first token 0.4 s later
    claude.behaviour.chunk_delay = 0.05
    claude.behaviour.cache_read_input_tokens = 7
    async with sdk.messages.stream(model=CLAUDE, max_tokens=64, messages=HELLO) as stream:
        text = await stream.get_final_text()
        message = await stream.get_final_message()
        request_id = stream.response.headers.get("x-llm-request-id")
    assert text.startswith("word0 word1")
    assert message.usage.cache_read_input_tokens == 7
    event = await event_of(redis, request_id)
    assert event.stream and event.outcome == "ok"
    assert metered(event) == expected_usage(claude)
    assert event.ttfb_ms is not None and event.ttfb_ms >= 400  # the first content, not a byte
    assert event.latency_ms - event.ttfb_ms >= 5 * 50  # ... and not the end


def test_sync_sdk_with_bearer_auth_and_typed_errors(
    messages_proxy: ProxyProcess, key: str, claude: FakeAnthropic
) -> None:
    client = sync_sdk(messages_proxy, key)
    message = client.messages.create(model=CLAUDE, max_tokens=32, messages=HELLO)
    assert message.stop_reason == "end_turn"
    assert claude.received[-1].headers["x-api-key"] == ANTHROPIC_KEY  # never the client's key
    assert "authorization" not in claude.received[-1].headers
    with pytest.raises(anthropic.AuthenticationError) as denied:
        sync_sdk(messages_proxy, "gw-wrong").messages.create(
            model=CLAUDE, max_tokens=8, messages=HELLO
        )
    assert denied.value.body["type"] == "error"  # type: ignore[index]
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(model="no-such-model", max_tokens=8, messages=HELLO)
    assert unknown.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=CLAUDE, max_tokens=8, messages=HELLO,
                               extra_body={"max_tokens": "many"})  # fmt: skip
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


async def test_anthropic_errors_reach_the_client_unchanged(
    messages_proxy: ProxyProcess, key: str, claude: FakeAnthropic, http: aiohttp.ClientSession,
    redis: aioredis.Redis,
) -> None:  # fmt: skip
    claude.behaviour.fail_status = 529
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    body = {"model": CLAUDE, "max_tokens": 8, "messages": HELLO}
    async with http.post(f"{messages_proxy.base_url}/v1/messages", json=body,
                         headers=headers) as response:  # fmt: skip
        assert response.status == 529
        sent = await response.read()
        request_id = response.headers["x-llm-request-id"]
    expected = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                "request_id": "req_fake_error"}  # fmt: skip
    assert orjson.loads(sent) == expected
    claude.behaviour.fail_status = None
    claude.received.clear()
    invalid = {**body, "messages": [{"role": "assistant", "content": "first"}]}
    async with http.post(f"{messages_proxy.base_url}/v1/messages", json=invalid,
                         headers=headers) as response:  # fmt: skip
        assert response.status == 400
        refused = await response.json()
    assert refused["error"]["message"] == 'messages: first message must use the "user" role'
    event = await event_of(redis, request_id)
    assert (event.status_code, event.outcome, event.error_type) == (
        529, "upstream_error", "overloaded_error")  # fmt: skip


async def test_count_tokens_by_anthropic_and_estimated_for_openai_targets(
    sdk: anthropic.AsyncAnthropic, claude: FakeAnthropic, gpt: FakeOpenAI, redis: aioredis.Redis
) -> None:
    counted = await sdk.messages.count_tokens(model=CLAUDE, messages=HELLO, tools=[WEATHER])
    assert counted.input_tokens > 0
    assert claude.received[-1].path == "/v1/messages/count_tokens"
    raw = await sdk.messages.with_raw_response.count_tokens(
        model=GPT, messages=HELLO, system="You answer in French, briefly.", tools=[WEATHER]
    )
    estimated = await raw.parse()
    assert raw.headers["x-llm-token-count"] == "estimated"
    assert 30 < estimated.input_tokens < 200  # tokenizer counts, not a constant
    assert gpt.received == []  # nothing sent upstream
    event = await event_of(redis, raw.headers.get("x-llm-request-id"))
    assert event.endpoint == "/v1/messages/count_tokens"
    assert (event.total_tokens, event.usage_source) == (0, "none")  # a count uses no tokens


async def test_models_in_anthropic_shape_for_anthropic_clients(
    sdk: anthropic.AsyncAnthropic, messages_proxy: ProxyProcess, key: str,
    http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    page = await sdk.models.list()
    names = [model.id for model in page.data]
    assert CLAUDE in names and GPT in names
    assert all(model.type == "model" for model in page.data)
    one = await sdk.models.retrieve(GPT)
    assert (one.id, one.type) == (GPT, "model")
    async with http.get(f"{messages_proxy.base_url}/v1/models",
                        headers={"Authorization": f"Bearer {key}"}) as response:  # fmt: skip
        openai_shape = await response.json()
    assert openai_shape["object"] == "list"  # OpenAI clients keep OpenAI's shape


# --- an OpenAI target: translated ----------------------------------------------------------------


async def test_sdk_message_to_openai_is_translated_and_metered(
    sdk: anthropic.AsyncAnthropic, gpt: FakeOpenAI, redis: aioredis.Redis
) -> None:
    gpt.behaviour.cached_tokens = 4
    raw = await sdk.messages.with_raw_response.create(
        model=GPT, max_tokens=50, system="be brief", messages=HELLO,
        stop_sequences=["END"], extra_body={"temperature": 0.5},
    )  # fmt: skip
    message = await raw.parse()
    assert message.model == GPT and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text.startswith("word0")
    assert message.stop_reason == "end_turn"
    sent = gpt.received[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert not any(name.startswith("anthropic-") for name in sent.headers)
    body = sent.json()
    assert body["model"] == "gpt-4o" and body["messages"][0] == {
        "role": "system",
        "content": "be brief",
    }
    assert body["stop"] == ["END"]
    usage = gpt.usages[-1]
    assert message.usage.input_tokens == usage["prompt_tokens"] - 4
    assert message.usage.cache_read_input_tokens == 4
    event = await event_of(redis, raw.headers.get("x-llm-request-id"))
    assert (event.endpoint, event.provider, event.upstream_model) == (
        "/v1/messages", "openai", "gpt-4o")  # fmt: skip
    assert (event.prompt_tokens, event.completion_tokens, event.cached_tokens) == (
        usage["prompt_tokens"], usage["completion_tokens"], 4)  # fmt: skip


async def test_sdk_stream_from_openai_is_a_messages_stream(
    sdk: anthropic.AsyncAnthropic, gpt: FakeOpenAI, redis: aioredis.Redis
) -> None:
    events: list[str] = []
    async with sdk.messages.stream(model=GPT, max_tokens=64, messages=HELLO) as stream:
        async for item in stream:
            events.append(item.type)
        message = await stream.get_final_message()
        request_id = stream.response.headers.get("x-llm-request-id")
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_delta" in events and "message_delta" in events
    text = "".join(block.text for block in message.content if block.type == "text")
    assert text.startswith("word0 word1")
    usage = gpt.usages[-1]
    assert message.usage.output_tokens == usage["completion_tokens"]
    assert message.usage.input_tokens == usage["prompt_tokens"]
    assert gpt.received[-1].json()["stream_options"] == {"include_usage": True}
    event = await event_of(redis, request_id)
    assert (event.prompt_tokens, event.completion_tokens, event.usage_source) == (
        usage["prompt_tokens"], usage["completion_tokens"], "provider")  # fmt: skip


@pytest.mark.parametrize("model", [CLAUDE, GPT])
async def test_tool_use_round_trip_with_the_sdk(
    sdk: anthropic.AsyncAnthropic, claude: FakeAnthropic, gpt: FakeOpenAI, model: str
) -> None:
    asked = [{"role": "user", "content": "weather in Paris?"}]
    first = await sdk.messages.create(
        model=model, max_tokens=64, messages=asked, tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
    )  # fmt: skip
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and "city" in call.input
    history = [*asked, {"role": "assistant", "content": [b.model_dump() for b in first.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                             "content": "sunny, 21C"}]}]  # fmt: skip
    second = await sdk.messages.create(model=model, max_tokens=64, messages=history,  # type: ignore[arg-type]
                                       tools=[WEATHER])  # type: ignore[list-item]  # fmt: skip
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    if model == GPT:
        sent = gpt.received[-1].json()["messages"]
        assert sent[-1] == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}


async def test_streamed_tool_use_from_openai_and_long_tool_names_restored(
    sdk: anthropic.AsyncAnthropic, gpt: FakeOpenAI
) -> None:
    long_name = "mcp__company_internal_knowledge_base__search_documents_by_semantic_query"
    assert len(long_name) > 64
    tool = {**WEATHER, "name": long_name}
    async with sdk.messages.stream(
        model=GPT, max_tokens=64, messages=[{"role": "user", "content": "find it"}],
        tools=[tool], tool_choice={"type": "any"},  # type: ignore[list-item]
    ) as stream:  # fmt: skip
        message = await stream.get_final_message()
    calls = [block for block in message.content if block.type == "tool_use"]
    assert [call.name for call in calls] == [long_name]
    assert isinstance(calls[0].input, dict) and "city" in calls[0].input
    assert message.stop_reason == "tool_use"
    sent_name = gpt.received[-1].json()["tools"][0]["function"]["name"]
    assert len(sent_name) <= 64 and sent_name != long_name


async def test_images_reach_both_kinds_of_target(
    sdk: anthropic.AsyncAnthropic, claude: FakeAnthropic, gpt: FakeOpenAI
) -> None:
    content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                            "data": PNG}},
               {"type": "text", "text": "what is this?"}]  # fmt: skip
    for model in (CLAUDE, GPT):
        message = await sdk.messages.create(
            model=model, max_tokens=32,
            messages=[{"role": "user", "content": content}],  # type: ignore[typeddict-item]
        )  # fmt: skip
        assert message.content[0].type == "text"
    assert claude.received[-1].json()["messages"][0]["content"][0]["source"]["data"] == PNG
    part = gpt.received[-1].json()["messages"][0]["content"][0]
    assert part == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}


async def test_openai_errors_reach_anthropic_clients_in_anthropic_shape(
    sdk: anthropic.AsyncAnthropic, gpt: FakeOpenAI
) -> None:
    gpt.behaviour.fail_status = 429
    with pytest.raises(anthropic.RateLimitError) as limited:
        await sdk.messages.create(model=GPT, max_tokens=8, messages=HELLO)
    assert limited.value.body["type"] == "error"  # type: ignore[index]
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert limited.value.response.headers["retry-after"] == "1"


# --- Claude Code ---------------------------------------------------------------------------------


def claude_code_request(model: str) -> dict[str, Any]:
    """What Claude Code sends: system blocks with cache_control, tools, metadata, a stream."""
    return {
        "model": model, "max_tokens": 32000, "stream": True,
        "system": [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI.",
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "list the files", "cache_control": {"type": "ephemeral"}}]}],
        "tools": [{"name": "Bash", "description": "Run a shell command",
                   "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                                    "required": ["command"]}}],
        "metadata": {"user_id": "user_abc_account_def_session_" + SESSION},
        "temperature": 1,
    }  # fmt: skip


def claude_code_headers(key: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01",
        "anthropic-beta": CLAUDE_CODE_BETAS, "x-app": "cli",
        "User-Agent": "claude-cli/2.0.14 (external, cli)", "X-Claude-Code-Session-Id": SESSION,
        "anthropic-dangerous-direct-browser-access": "true", "x-stainless-lang": "js",
    }  # fmt: skip


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in raw.split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in frame.split(b"\n") if b": " in line)
        if b"event" in lines:
            events.append((lines[b"event"].decode(), orjson.loads(lines[b"data"])))
    return events


@pytest.mark.parametrize("model", [CLAUDE, GPT, "claude-strict"])
async def test_a_claude_code_request_with_a_tool_use_round_trip(
    messages_proxy: ProxyProcess, key: str, claude: FakeAnthropic, gpt: FakeOpenAI,
    http: aiohttp.ClientSession, redis: aioredis.Redis, model: str,
) -> None:  # fmt: skip
    claude.behaviour.use_tools = True
    gpt.behaviour.use_tools = True
    url = f"{messages_proxy.base_url}/v1/messages?beta=true"
    body = claude_code_request(model)
    async with http.post(url, json=body, headers=claude_code_headers(key)) as response:
        assert response.status == 200, await response.text()
        raw = await response.read()
        request_id = response.headers["x-llm-request-id"]
    events = sse_events(raw)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    call = next(block for block in starts if block["type"] == "tool_use")
    assert call["name"] == "Bash"
    arguments = "".join(data["delta"]["partial_json"] for name, data in events
                        if name == "content_block_delta"
                        and data["delta"]["type"] == "input_json_delta")  # fmt: skip
    assert "command" in orjson.loads(arguments)
    stop = next(data for name, data in events if name == "message_delta")
    assert stop["delta"]["stop_reason"] == "tool_use"
    if model == GPT:
        assert gpt.received[-1].path == "/v1/chat/completions"
    else:
        sent = claude.received[-1]
        assert (sent.path, sent.query) == ("/v1/messages", "beta=true")
        betas = CLAUDE_CODE_BETAS if model == CLAUDE else "claude-code-20250219"
        assert sent.headers["anthropic-beta"] == betas
    event = await event_of(redis, request_id)
    assert (event.endpoint, event.outcome, event.session_id) == ("/v1/messages", "ok", SESSION)
    assert event.completion_tokens > 0 and event.usage_source == "provider"
    # The tool's result goes back; the answer is text.
    use = {"type": "tool_use", "id": call["id"], "name": "Bash", "input": orjson.loads(arguments)}
    result = {"type": "tool_result", "tool_use_id": call["id"], "content": "README.md\nsrc"}
    history = [
        *body["messages"],
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result]},
    ]
    claude.behaviour.use_tools = gpt.behaviour.use_tools = False
    async with http.post(url, json={**body, "messages": history},
                         headers=claude_code_headers(key)) as response:  # fmt: skip
        assert response.status == 200, await response.text()
        finished = sse_events(await response.read())
    assert any(data.get("delta", {}).get("type") == "text_delta" for _, data in finished)
    # Flags a target does not take were dropped, each logged once however often it came.
    accepted = {CLAUDE: CLAUDE_CODE_BETAS, GPT: "", "claude-strict": "claude-code-20250219"}
    provider = {CLAUDE: "msg-claude", GPT: "msg-openai", "claude-strict": "msg-strict"}[model]
    dropped = [line["beta"] for line in messages_proxy.log_lines()
               if line.get("event") == "anthropic_beta_dropped"
               and line.get("provider") == provider]  # fmt: skip
    expected = set(CLAUDE_CODE_BETAS.split(",")) - set(accepted[model].split(","))
    assert sorted(dropped) == sorted(expected)


async def test_an_overloaded_first_event_falls_back_to_the_next_target(
    sdk: anthropic.AsyncAnthropic, claude: FakeAnthropic, gpt: FakeOpenAI, redis: aioredis.Redis
) -> None:
    claude.behaviour.error_after_deltas = 0  # event: error overloaded before any content
    async with sdk.messages.stream(model="claude-then-gpt", max_tokens=32,
                                   messages=HELLO) as stream:  # fmt: skip
        text = await stream.get_final_text()
        request_id = stream.response.headers.get("x-llm-request-id")
        attempts = stream.response.headers.get("x-llm-attempts")
    assert text.startswith("word0")
    assert attempts == "2" and len(gpt.received) == 1
    event = await event_of(redis, request_id)
    assert (event.attempts, event.failed_targets, event.provider) == (2, ("msg-claude",), "openai")


async def test_gateway_errors_on_the_endpoint_are_anthropic_shaped(
    messages_proxy: ProxyProcess, redis_url: str, http: aiohttp.ClientSession,
    claude: FakeAnthropic,
) -> None:  # fmt: skip
    url = f"{messages_proxy.base_url}/v1/messages"
    async with http.post(url, json={"model": CLAUDE}) as response:
        assert response.status == 401
        assert (await response.json())["error"]["type"] == "authentication_error"
    limited = await _key(redis_url, Limits(requests_per_minute=1))
    client = anthropic.AsyncAnthropic(base_url=messages_proxy.base_url, api_key=limited,
                                      max_retries=0)  # fmt: skip
    await client.messages.create(model=CLAUDE, max_tokens=8, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as refused:
        await client.messages.create(model=CLAUDE, max_tokens=8, messages=HELLO)
    assert refused.value.body == {  # type: ignore[comparison-overlap]
        "type": "error", "error": {"type": "rate_limit_error",
                                   "message": refused.value.body["error"]["message"]},  # type: ignore[index]
    }  # fmt: skip
    assert int(refused.value.response.headers["retry-after"]) >= 1
    async with http.post(url, data=b"{not json", headers={"x-api-key": limited}) as response:
        assert response.status in (400, 429)
        assert (await response.json())["type"] == "error"
    await client.close()


async def test_messages_requests_in_the_metrics(
    messages_proxy: ProxyProcess, sdk: anthropic.AsyncAnthropic, http: aiohttp.ClientSession
) -> None:
    before = await scrape(http, messages_proxy.manage_url)
    async with sdk.messages.stream(model=GPT, max_tokens=16, messages=HELLO) as stream:
        await stream.get_final_message()
    await sdk.messages.create(model=CLAUDE, max_tokens=16, messages=HELLO)
    await sdk.messages.count_tokens(model=GPT, messages=HELLO)
    after = await scrape(http, messages_proxy.manage_url)

    def added(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "llm_gateway_requests_total"
    assert added(requests, endpoint="/v1/messages", status_class="2xx", outcome="ok") == 2
    assert added(requests, endpoint="/v1/messages/count_tokens", status_class="2xx",
                 outcome="ok") == 1  # fmt: skip
    duration = "gen_ai_client_operation_duration_seconds_count"
    chat = {"gen_ai_operation_name": "chat", "error_type": ""}
    assert added(duration, **chat, gen_ai_provider_name="openai", gen_ai_request_model=GPT) == 1
    assert added(duration, **chat, gen_ai_provider_name="anthropic",
                 gen_ai_request_model=CLAUDE) == 1  # fmt: skip
    first_chunk = "gen_ai_client_operation_time_to_first_chunk_seconds_count"
    assert added(first_chunk, gen_ai_operation_name="chat", gen_ai_provider_name="openai",
                 gen_ai_request_model=GPT) == 1  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
async def test_an_azure_target_is_translated_too(
    sdk: anthropic.AsyncAnthropic, azure_server: FakeAzureServer, redis: aioredis.Redis,
    stream: bool,
) -> None:  # fmt: skip
    azure: FakeAzure = azure_server.fake
    azure.reset()
    azure.behaviour.api_key = AZURE_KEY
    if stream:  # Azure's prompt-filter chunk (no choices) comes first
        async with sdk.messages.stream(model=AZURE, max_tokens=16, messages=HELLO) as events:
            message = await events.get_final_message()
            request_id = events.response.headers.get("x-llm-request-id")
    else:
        raw = await sdk.messages.with_raw_response.create(model=AZURE, max_tokens=16,
                                                          messages=HELLO)  # fmt: skip
        message = await raw.parse()
        request_id = raw.headers.get("x-llm-request-id")
    assert message.model == AZURE and message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and message.content[0].text.startswith("word0")
    sent = azure.received[-1]
    assert sent.path == "/openai/deployments/gpt-4o/chat/completions"
    assert sent.headers["api-key"] == AZURE_KEY
    assert sent.json()["max_completion_tokens"] == 16  # Azure's name for it
    event = await event_of(redis, request_id)
    assert (event.endpoint, event.provider, event.outcome) == (
        "/v1/messages", "azure.ai.openai", "ok")  # fmt: skip
    assert event.completion_tokens == azure.usages[-1]["completion_tokens"]
    assert event.usage_source == "provider"
