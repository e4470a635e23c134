"""The OpenAI wire contract, checked on the bytes a client receives through the gateway."""

from __future__ import annotations

import base64

import aiohttp
import orjson
import redis.asyncio as aioredis

from llm_gateway_fakes.openai import FakeOpenAI
from tests.support.events import event_for
from tests.support.services import ProxyProcess

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]}


async def test_chat_completion_non_streaming_shape(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{proxy.base_url}/v1/chat/completions", json=CHAT) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert int(response.headers["Content-Length"]) == len(await response.read())
        body = await response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_vision_message_with_a_multi_megabyte_data_url(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession, redis: aioredis.Redis
) -> None:
    image = base64.b64encode(bytes(range(256)) * 16 * 1024).decode()  # 4 MiB -> ~5.6 MB base64
    url = f"data:image/png;base64,{image}"
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
    ]}]}  # fmt: skip
    raw = orjson.dumps(body)
    assert len(raw) > 5_000_000
    async with http.post(f"{proxy.base_url}/v1/chat/completions", data=raw,
                         headers={"Content-Type": "application/json"}) as response:  # fmt: skip
        assert response.status == 200
        request_id = response.headers["X-LLM-Request-ID"]
    assert upstream.received[-1].body == raw, "the image must reach the provider intact"
    event = await event_for(redis, request_id)
    assert event.request_bytes == len(raw)
    assert event.prompt_tokens == upstream.usages[-1]["prompt_tokens"]


async def test_streaming_frames_end_with_done(
    proxy: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(f"{proxy.base_url}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        assert "Content-Length" not in response.headers
        assert "Content-Encoding" not in response.headers
        raw = await response.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    frames = raw.split(b"\n\n")[:-1]
    assert all(frame.startswith(b"data: ") for frame in frames)
    chunks = [orjson.loads(frame[6:]) for frame in frames[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["total_tokens"] > 0
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


async def test_error_shape_for_a_gateway_error(
    proxy: ProxyProcess, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{proxy.base_url}/v1/embeddings", json={"input": "x"}) as response:
        assert response.status == 400
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["X-LLM-Request-ID"]
        assert await response.json() == {
            "error": {
                "message": "Missing required parameter: 'model'.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "missing_required_parameter",
            }
        }


async def test_probes_and_every_response_carry_a_request_id(
    proxy: ProxyProcess, http: aiohttp.ClientSession
) -> None:
    for url in (proxy.base_url + "/live", proxy.base_url + "/ready", proxy.manage_url + "/health"):
        async with http.get(url) as response:
            assert response.status == 200, url
            assert len(response.headers["X-LLM-Request-ID"]) == 32
    async with http.get(f"{proxy.base_url}/elsewhere") as response:
        assert response.status == 404
        assert len(response.headers["X-LLM-Request-ID"]) == 32
