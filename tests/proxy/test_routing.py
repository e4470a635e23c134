"""Routing across OpenAI-compatible providers, driven by the official openai SDK: weighted
targets, each failure class and what it does, fallbacks, cooldowns seen by a second replica,
`x-should-retry: false`, unknown models, and the model list.

Two fake providers (A and B) stand behind many provider entries, one set per scenario, so that
one scenario's cooldowns never steer another's. A socket that never accepts is the hung
provider; a port nobody listens on the dead one. Both replicas share a Redis of this module.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis
import yaml

from llm_gateway_fakes.localnet import free_port
from llm_gateway_fakes.openai import FakeOpenAI, FakeOpenAIServer
from tests.support.events import event_for
from tests.support.servers import LocalRedis
from tests.support.services import ProxyProcess

KEY_A = "sk-provider-a-0123456789"
KEY_B = "sk-provider-b-0123456789"
MESSAGES: list[Any] = [{"role": "user", "content": "say hello please"}]
FAST = {"retries": 2, "backoff": {"base": 0.01, "max": 0.5}, "deadline": 10}


def _providers(a: str, b: str, hung: str, dead: str, raw: str) -> dict[str, Any]:
    def entry(base: str, key_env: str | None = "KEY_A", **extra: Any) -> dict[str, Any]:
        provider = {"type": "openai", "base_url": base, **extra}
        if key_env:
            provider["api_key_env"] = key_env
        return provider

    providers = {}
    for scenario in ("basic", "spread", "fo", "fb", "wrong", "cool", "pat", "sdk", "stream"):
        providers[f"a-{scenario}"] = entry(a)
        providers[f"b-{scenario}"] = entry(b, "KEY_B")
    providers["a-wrong"] = entry(a, "KEY_WRONG")
    providers["hung"] = entry(hung, timeouts={"connect": 1, "read": 1.5, "first_token": 0.5})
    providers["dead"] = entry(dead, timeouts={"connect": 1, "read": 5})
    providers["b-hung"] = entry(b, "KEY_B")
    providers["b-dead"] = entry(b, "KEY_B")
    providers["cut"] = entry(f"{raw}/cut/v1", None)
    providers["empty"] = entry(f"{raw}/empty/v1", None)
    providers["b-raw"] = entry(b, "KEY_B")
    return providers


def _models() -> dict[str, Any]:
    heavy = 1000  # the first target is always tried first while it is healthy
    return {
        "basic": {"targets": [{"provider": "a-basic", "model": "gpt-4o-mini"}]},
        "spread": {"targets": [{"provider": "a-spread", "model": "gpt-4o-mini", "weight": 3},
                               {"provider": "b-spread", "model": "gpt-4o", "weight": 1}]},
        "failover": {"targets": [{"provider": "a-fo", "model": "gpt-4o-mini", "weight": heavy},
                                 {"provider": "b-fo", "model": "gpt-4o"}], **FAST},
        "stream": {"targets": [{"provider": "a-stream", "model": "gpt-4o-mini", "weight": heavy},
                               {"provider": "b-stream", "model": "gpt-4o"}], **FAST},
        "primary": {"targets": [{"provider": "a-fb", "model": "gpt-4o-mini"}],
                    "fallbacks": ["backup"], **FAST, "retries": 0},
        "backup": {"targets": [{"provider": "b-fb", "model": "gpt-4o"}]},
        "misconfigured": {"targets": [{"provider": "a-wrong", "model": "gpt-4o-mini",
                                       "weight": heavy}, {"provider": "b-wrong"}], **FAST},
        "all-misconfigured": {"targets": [{"provider": "a-wrong", "model": "gpt-4o"}], **FAST},
        "hung": {"targets": [{"provider": "hung", "model": "gpt-4o-mini", "weight": heavy},
                             {"provider": "b-hung", "model": "gpt-4o"}], **FAST},
        "dead": {"targets": [{"provider": "dead", "model": "gpt-4o-mini", "weight": heavy},
                             {"provider": "b-dead", "model": "gpt-4o"}], **FAST},
        "cool": {"targets": [{"provider": "a-cool", "model": "gpt-4o-mini", "weight": heavy},
                             {"provider": "b-cool", "model": "gpt-4o"}],
                 **FAST, "cooldown": {"failures": 2, "seconds": 60}},
        "sdk": {"targets": [{"provider": "a-sdk", "model": "gpt-4o-mini"},
                            {"provider": "b-sdk", "model": "gpt-4o"}], **FAST},
        "pat-*": {"targets": [{"provider": "a-pat"}]},
        "text-embedding-*": {"targets": [{"provider": "a-pat"}]},
        "cut": {"targets": [{"provider": "cut", "model": "m", "weight": heavy},
                            {"provider": "b-raw", "model": "gpt-4o"}], **FAST},
        "empty": {"targets": [{"provider": "empty", "model": "m", "weight": heavy},
                              {"provider": "b-raw", "model": "gpt-4o"}], **FAST},
    }  # fmt: skip


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    a, b = FakeOpenAIServer().start(), FakeOpenAIServer().start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def hung_port() -> Iterator[int]:
    """A provider that accepts connections (the kernel does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


class RawProvider:
    """A provider on loopback that answers by the first path segment, in raw bytes, then
    closes: `/cut/...` a JSON body cut short of its Content-Length, `/empty/...` a 200 stream
    that ends after its role chunk, before any content."""

    ANSWERS: ClassVar[dict[bytes, bytes]] = {
        b"cut": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: 500\r\n\r\n{\"id\": \"chatcmpl-cut\", \"choi",
        b"empty": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"
                  b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
                  b'"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
    }  # fmt: skip

    def __init__(self) -> None:
        self.requests = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                self.requests += 1
                path = data.split(b" ", 2)[1]
                conn.sendall(self.ANSWERS[path.split(b"/")[1]])

    def close(self) -> None:
        self._sock.close()


@pytest.fixture(scope="module")
def raw_provider() -> Iterator[RawProvider]:
    provider = RawProvider()
    yield provider
    provider.close()


@pytest.fixture(scope="module")
def routing_redis() -> Iterator[LocalRedis]:
    server = LocalRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(
    fakes: tuple[FakeOpenAIServer, FakeOpenAIServer],
    hung_port: int,
    raw_provider: RawProvider,
    routing_redis: LocalRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ProxyProcess, ProxyProcess]]:
    a, b = fakes
    file = {
        "providers": _providers(a.base_url, b.base_url, f"http://127.0.0.1:{hung_port}/v1",
                                f"http://127.0.0.1:{free_port()}/v1",
                                f"http://127.0.0.1:{raw_provider.port}"),
        "models": _models(),
        "default_provider": "a-basic",
    }  # fmt: skip
    path: Path = tmp_path_factory.mktemp("routing") / "models.yaml"
    path.write_text(yaml.safe_dump(file))
    env = {
        "MODELS_FILE": str(path), "KEY_A": KEY_A, "KEY_B": KEY_B, "KEY_WRONG": "sk-not-this-one",
        "REDIS_URL": routing_redis.url, "AUTH_MODE": "none",
        "UPSTREAM_OPENAI_BASE_URL": "http://127.0.0.1:9/unused",
    }  # fmt: skip
    first, second = ProxyProcess(env).start(), ProxyProcess(env).start()
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture
def a(fakes: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> FakeOpenAI:
    fakes[0].fake.reset()
    fakes[0].fake.behaviour.api_key = KEY_A
    return fakes[0].fake


@pytest.fixture
def b(fakes: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> FakeOpenAI:
    fakes[1].fake.reset()
    fakes[1].fake.behaviour.api_key = KEY_B
    return fakes[1].fake


@pytest.fixture
def proxy(replicas: tuple[ProxyProcess, ProxyProcess]) -> ProxyProcess:
    return replicas[0]


@pytest.fixture
async def client(proxy: ProxyProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{proxy.base_url}/v1", api_key="gw-unused",
                                  max_retries=0) as sdk:  # fmt: skip
        yield sdk


@pytest.fixture
async def events(routing_redis: LocalRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(routing_redis.url, socket_timeout=5)
    yield client
    await client.aclose()


async def chat(client: openai.AsyncOpenAI, model: str, **extra: Any) -> Any:
    """A chat completion with its raw response (headers) and the parsed answer."""
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, **extra
    )
    return raw, raw.parse()


# --- choosing a target ---------------------------------------------------------------------


async def test_the_target_model_is_sent_and_the_route_reported(
    client: openai.AsyncOpenAI, a: FakeOpenAI, b: FakeOpenAI, events: aioredis.Redis
) -> None:
    raw, answer = await chat(client, "basic", user="u-1")
    assert raw.headers["x-llm-route"] == "a-basic/gpt-4o-mini"
    assert raw.headers["x-llm-attempts"] == "1"
    assert answer.choices[0].message.content
    sent = a.received[-1]
    assert sent.json()["model"] == "gpt-4o-mini" and sent.json()["user"] == "u-1"
    assert sent.headers["authorization"] == f"Bearer {KEY_A}"
    assert not b.received
    event = await event_for(events, raw.headers["x-llm-request-id"])
    assert (event.model, event.upstream_model, event.response_model) == (
        "basic", "gpt-4o-mini", "gpt-4o-mini-2024-07-18")  # fmt: skip
    assert (event.provider, event.provider_name, event.attempts) == ("openai", "a-basic", 1)
    assert event.failed_targets == ()
    assert event.prompt_tokens > 0 and event.usage_source == "provider"


async def test_weights_spread_the_load(
    client: openai.AsyncOpenAI, a: FakeOpenAI, b: FakeOpenAI
) -> None:
    routes = [(await chat(client, "spread"))[0].headers["x-llm-route"] for _ in range(40)]
    to_a = routes.count("a-spread/gpt-4o-mini")
    assert to_a + routes.count("b-spread/gpt-4o") == 40
    assert 20 <= to_a <= 39  # weight 3:1, so about 30; both get some
    assert len(a.received) == to_a and len(b.received) == 40 - to_a


async def test_a_pattern_route_passes_the_clients_model_name(
    client: openai.AsyncOpenAI, a: FakeOpenAI
) -> None:
    raw, _ = await chat(client, "pat-llama-3")
    assert a.received[-1].json()["model"] == "pat-llama-3"
    assert raw.headers["x-llm-route"] == "a-pat/pat-llama-3"


async def test_an_unknown_model_is_404_and_reaches_no_provider(
    client: openai.AsyncOpenAI, a: FakeOpenAI, b: FakeOpenAI
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await chat(client, "no-such-model")
    assert caught.value.code == "model_not_found"
    assert not a.received and not b.received


async def test_the_model_list_names_the_public_models_and_the_default_providers(
    client: openai.AsyncOpenAI, a: FakeOpenAI
) -> None:
    ids = [model.id async for model in client.models.list()]
    assert {"basic", "spread", "failover", "backup"} <= set(ids)
    assert "pat-*" not in ids
    # The default provider's list, merged in: the names a pattern would take, and no other.
    assert "text-embedding-3-small" in ids
    assert "gpt-4o-mini" not in ids  # the provider lists it, but no route takes it
    single = await client.models.retrieve("basic")
    assert single.id == "basic"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


# --- failure classes ---------------------------------------------------------------------


async def test_a_429_is_answered_by_another_target(
    client: openai.AsyncOpenAI, a: FakeOpenAI, b: FakeOpenAI, events: aioredis.Redis
) -> None:
    a.behaviour.fail_status, a.behaviour.fail_times = 429, 1
    raw, answer = await chat(client, "failover")
    assert raw.headers["x-llm-route"] == "b-fo/gpt-4o"
    assert raw.headers["x-llm-attempts"] == "2"
    assert answer.choices[0].message.content
    event = await event_for(events, raw.headers["x-llm-request-id"])
    assert (event.attempts, event.failed_targets, event.provider_name) == (2, ("a-fo",), "b-fo")
    assert event.outcome == "ok" and event.status_code == 200


async def test_every_target_failing_goes_to_the_fallback_model(
    client: openai.AsyncOpenAI, a: FakeOpenAI, b: FakeOpenAI, events: aioredis.Redis
) -> None:
    a.behaviour.fail_status = 503
    raw, _ = await chat(client, "primary")
    assert raw.headers["x-llm-route"] == "b-fb/gpt-4o"
    assert b.received[-1].json()["model"] == "gpt-4o"
    event = await event_for(events, raw.headers["x-llm-request-id"])
    assert event.model == "primary" and event.upstream_model == "gpt-4o"
    assert event.failed_targets == ("a-fb",)


async def test_a_client_error_is_returned_as_it_is_and_never_retried(
    client: openai.AsyncOpenAI, a: FakeOpenAI, b: FakeOpenAI, events: aioredis.Redis
) -> None:
    a.behaviour.fail_status = 400
    with pytest.raises(openai.BadRequestError) as caught:
        await chat(client, "primary")  # a fallback exists, and must not be used
    assert caught.value.message.endswith("The fake was told to fail.")
    assert len(a.received) == 1 and not b.received
    event = await event_for(events, caught.value.response.headers["x-llm-request-id"])
    assert (event.attempts, event.status_code, event.outcome) == (1, 400, "upstream_error")


async def test_a_refused_provider_key_moves_on_and_is_never_shown_to_the_client(
    client: openai.AsyncOpenAI, a: FakeOpenAI, b: FakeOpenAI
) -> None:
    raw, _ = await chat(client, "misconfigured")
    assert raw.headers["x-llm-route"] == "b-wrong/misconfigured"
    with pytest.raises(openai.APIStatusError) as caught:
        await chat(client, "all-misconfigured")
    error = caught.value
    assert error.status_code == 502 and error.code == "upstream_misconfigured"
    assert len(a.received) == 2  # one each: a refused key is not tried again
    assert "Incorrect API key" not in error.message and "sk-" not in error.message
    assert error.response.headers["x-should-retry"] == "false"


async def test_a_stream_that_starts_with_an_error_is_retried_elsewhere(
    client: openai.AsyncOpenAI, a: FakeOpenAI, b: FakeOpenAI, events: aioredis.Redis
) -> None:
    a.behaviour.stream_error_first = True
    raw = await client.chat.completions.with_raw_response.create(
        model="stream", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text = ""
    usage = None
    async for chunk in raw.parse():
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert raw.headers["x-llm-route"] == "b-stream/gpt-4o"
    assert text and usage is not None
    event = await event_for(events, raw.headers["x-llm-request-id"])
    assert event.failed_targets == ("a-stream",) and event.outcome == "ok"
    assert event.completion_tokens == usage.completion_tokens


async def test_a_hung_provider_costs_one_first_token_timeout(
    client: openai.AsyncOpenAI, b: FakeOpenAI, events: aioredis.Redis
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="hung", messages=MESSAGES, stream=True
    )
    chunks = [chunk async for chunk in raw.parse()]
    assert raw.headers["x-llm-route"] == "b-hung/gpt-4o" and chunks
    event = await event_for(events, raw.headers["x-llm-request-id"])
    assert event.failed_targets == ("hung",)
    assert 500 <= event.ttfb_ms < 1500  # first_token 0.5 s, not the 1.5 s read timeout


async def test_a_provider_that_refuses_connections_is_skipped(
    client: openai.AsyncOpenAI, b: FakeOpenAI
) -> None:
    raw, _ = await chat(client, "dead")
    assert raw.headers["x-llm-route"] == "b-dead/gpt-4o"
    assert raw.headers["x-llm-attempts"] == "2"


async def test_the_gateways_own_retries_are_not_multiplied_by_the_sdks(
    proxy: ProxyProcess, a: FakeOpenAI, b: FakeOpenAI
) -> None:
    a.behaviour.fail_status = b.behaviour.fail_status = 500
    async with openai.AsyncOpenAI(base_url=f"{proxy.base_url}/v1", api_key="gw-unused",
                                  max_retries=2) as sdk:  # fmt: skip
        with pytest.raises(openai.InternalServerError) as caught:
            await chat(sdk, "sdk")
    # The provider said `x-should-retry: true`; the gateway's `false` replaces it, not joins it.
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.response.headers["x-llm-attempts"] == "3"
    assert len(a.received) + len(b.received) == 3  # retries: 2, and the SDK retried nothing


# --- cooldowns ---------------------------------------------------------------------------


async def test_a_failing_target_cools_down_on_every_replica(
    replicas: tuple[ProxyProcess, ProxyProcess],
    client: openai.AsyncOpenAI,
    a: FakeOpenAI,
    b: FakeOpenAI,
) -> None:
    a.behaviour.fail_status = 500
    for _ in range(2):  # cooldown.failures: 2
        raw, _ = await chat(client, "cool")
        assert raw.headers["x-llm-attempts"] == "2"
    tried = len(a.received)
    raw, _ = await chat(client, "cool")
    assert raw.headers["x-llm-attempts"] == "1" and len(a.received) == tried
    # The other replica never saw a failure: within a second it learns of the cooldown through
    # Redis, and sends nothing to the failing target from its first request on.
    await asyncio.sleep(1.0)
    async with openai.AsyncOpenAI(base_url=f"{replicas[1].base_url}/v1", api_key="x",
                                  max_retries=0) as second:  # fmt: skip
        for _ in range(3):
            raw, _ = await chat(second, "cool")
            assert raw.headers["x-llm-attempts"] == "1"
            assert raw.headers["x-llm-route"] == "b-cool/gpt-4o"
    assert len(a.received) == tried


async def test_when_every_target_cools_down_the_soonest_free_is_tried(
    client: openai.AsyncOpenAI, a: FakeOpenAI
) -> None:
    a.behaviour.fail_status, a.behaviour.retry_after = 429, "30"
    with pytest.raises(openai.RateLimitError):
        await chat(client, "basic")  # one target, Retry-After 30: now cooling down
    a.behaviour.fail_status = None
    raw, answer = await chat(client, "basic")  # not refused outright: tried all the same
    assert raw.headers["x-llm-route"] == "a-basic/gpt-4o-mini" and answer.choices


async def test_a_hostile_model_name_never_reaches_a_header_raw(
    proxy: ProxyProcess, a: FakeOpenAI
) -> None:
    """A pattern route passes the client's name on, and X-LLM-Route names it: a name with CR LF
    or non-ASCII characters is percent-encoded there, never a header injection or a 500."""
    async with aiohttp.ClientSession() as http:
        for model in ("pat-x\r\nSet-Cookie: a=b", "pat-modèle"):
            body = {"model": model, "messages": MESSAGES}
            async with http.post(f"{proxy.base_url}/v1/chat/completions", json=body) as response:
                assert response.status == 200
                assert "set-cookie" not in {k.lower() for k in response.headers}
                route = response.headers["x-llm-route"]
                assert route.isascii() and "\r" not in route and "\n" not in route
            assert a.received[-1].json()["model"] == model


async def test_a_body_cut_short_is_a_failed_attempt_and_retried_elsewhere(
    client: openai.AsyncOpenAI, raw_provider: RawProvider, b: FakeOpenAI
) -> None:
    before = raw_provider.requests
    raw, answer = await chat(client, "cut")
    assert raw.headers["x-llm-route"] == "b-raw/gpt-4o" and answer.choices
    assert raw.headers["x-llm-attempts"] == "2" and raw_provider.requests == before + 1


async def test_a_stream_that_ends_before_any_content_is_retried_elsewhere(
    client: openai.AsyncOpenAI, raw_provider: RawProvider, b: FakeOpenAI
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="empty", messages=MESSAGES, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert raw.headers["x-llm-route"] == "b-raw/gpt-4o" and text


async def test_a_pass_through_error_is_the_providers_own(
    client: openai.AsyncOpenAI, a: FakeOpenAI
) -> None:
    """A file that does not exist is the provider's 404, not a misconfigured gateway's 502."""
    a.behaviour.fail_status = 404
    for _ in range(4):  # and never a cooldown of the default provider
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve("file-does-not-exist")
    a.behaviour.fail_status = None
    assert (await client.files.retrieve("file-1")) is not None
    assert len(a.received) == 5


async def test_a_model_name_past_256_characters_is_refused(
    client: openai.AsyncOpenAI, a: FakeOpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await chat(client, "pat-" + "x" * 300)
    assert caught.value.body["param"] == "model"  # type: ignore[index]
    assert not a.received
