"""The official `openai` SDK pointed at the gateway, as a real application would use it."""

from __future__ import annotations

import asyncio

import openai
import pytest
import redis.asyncio as aioredis

from llm_gateway_fakes.openai import FakeOpenAI
from tests.support.events import event_for
from tests.support.services import ProxyProcess

MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "Say hello in five words"}]


def sync_client(proxy: ProxyProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="gw-client-key", max_retries=0)


def async_client(proxy: ProxyProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{proxy.base_url}/v1", api_key="gw-client-key", max_retries=0
    )


async def test_sync_chat_non_streaming(
    proxy: ProxyProcess, upstream: FakeOpenAI, redis: aioredis.Redis
) -> None:
    def call() -> tuple[str, object]:
        with sync_client(proxy) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=MESSAGES,  # type: ignore[arg-type]
            )
            return raw.headers["x-llm-request-id"], raw.parse()

    request_id, completion = await asyncio.to_thread(call)
    assert completion.choices[0].message.content  # type: ignore[attr-defined]
    event = await event_for(redis, request_id)
    assert event.total_tokens == completion.usage.total_tokens  # type: ignore[attr-defined]


async def test_sync_chat_streaming_without_usage_option(
    proxy: ProxyProcess, upstream: FakeOpenAI
) -> None:
    def call() -> list[object]:
        with sync_client(proxy) as client:
            stream = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                stream=True,  # type: ignore[arg-type]
            )
            return list(stream)

    chunks = await asyncio.to_thread(call)
    assert chunks and all(c.choices for c in chunks)  # type: ignore[attr-defined]
    assert all(c.usage is None for c in chunks)  # type: ignore[attr-defined]


async def test_async_chat_streaming_with_usage(proxy: ProxyProcess, upstream: FakeOpenAI) -> None:
    async with async_client(proxy) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


async def test_async_chat_non_streaming_and_embeddings(
    proxy: ProxyProcess, upstream: FakeOpenAI
) -> None:
    async with async_client(proxy) as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
        embeddings = await client.embeddings.create(
            model="text-embedding-3-small", input=["a", "b"]
        )
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    assert len(embeddings.data) == 2 and embeddings.usage.prompt_tokens > 0


async def test_responses_api_streaming_and_not(proxy: ProxyProcess, upstream: FakeOpenAI) -> None:
    async with async_client(proxy) as client:
        response = await client.responses.create(model="gpt-4o", input="hello there")
        stream = await client.responses.create(model="gpt-4o", input="hello there", stream=True)
        events = [event async for event in stream]
    assert response.output_text.strip()
    assert response.usage is not None and response.usage.output_tokens == 8
    assert events[-1].type == "response.completed"


async def test_models_list(proxy: ProxyProcess, upstream: FakeOpenAI) -> None:
    async with async_client(proxy) as client:
        models = await client.models.list()
    assert "gpt-4o-mini" in [m.id for m in models.data]


async def test_sdk_sees_typed_errors(proxy: ProxyProcess, upstream: FakeOpenAI) -> None:
    async with async_client(proxy) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="", messages=MESSAGES)  # type: ignore[arg-type]
        assert bad.value.code == "missing_required_parameter"
        assert bad.value.param == "model"
        upstream.behaviour.fail_status = 429
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,  # type: ignore[arg-type]
            )
