"""Shared fixtures: real Redis and Postgres, the fake OpenAI upstream, our services as processes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import hypothesis
import pytest
import redis.asyncio as aioredis

from llm_gateway_fakes.openai import FakeOpenAI, FakeOpenAIServer
from tests.support.postgres import postgres_dsn
from tests.support.servers import redis_url as start_redis
from tests.support.services import CollectorProcess, ProxyProcess

UPSTREAM_KEY = "sk-upstream-test-0123456789abcdef"

# Property tests check behaviour, not speed: on a loaded 2-core CI machine an example can take
# longer than hypothesis's default 200 ms deadline, which would fail the test for no bug.
hypothesis.settings.register_profile("llm-gateway", deadline=None)
hypothesis.settings.load_profile("llm-gateway")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with start_redis() as url:
        yield url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture
def upstream(upstream_server: FakeOpenAIServer) -> FakeOpenAI:
    """The fake provider, reset for each test; it expects the gateway's server-side key."""
    upstream_server.fake.reset()
    upstream_server.fake.behaviour.api_key = UPSTREAM_KEY
    return upstream_server.fake


ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture(scope="session")
def proxy_factory(redis_url: str, upstream_server: FakeOpenAIServer) -> Iterator[ProxyFactory]:
    """Start extra proxies with their own settings (env overrides); all stopped at the end."""
    started: list[ProxyProcess] = []

    def start(**env: str) -> ProxyProcess:
        base = {
            "UPSTREAM_OPENAI_BASE_URL": upstream_server.base_url,
            "UPSTREAM_OPENAI_API_KEY": UPSTREAM_KEY,
            "REDIS_URL": redis_url,
            # Most tests are about forwarding and metering; tests/proxy/test_access.py runs
            # proxies with keys (AUTH_MODE=keys) and checks authentication and limits.
            "AUTH_MODE": "none",
        }
        proxy = ProxyProcess({**base, **env}).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="session")
def proxy(proxy_factory: ProxyFactory) -> ProxyProcess:
    """The proxy with default settings, shared by the tests that need nothing special."""
    return proxy_factory()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client, as an application that does not use an SDK would be."""

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with postgres_dsn() as dsn:
        yield dsn


@pytest.fixture
def stream_name(request: pytest.FixtureRequest) -> str:
    """A stream of this test's own, so tests never see each other's events."""
    return f"test:{request.node.name}:{uuid.uuid4().hex[:8]}"


CollectorFactory = Callable[..., CollectorProcess]


@pytest.fixture
def collector_factory(redis_url: str) -> Iterator[CollectorFactory]:
    """Start collectors (env overrides); any still running are killed after the test."""
    started: list[CollectorProcess] = []

    def start(**env: str) -> CollectorProcess:
        base = {"REDIS_URL": redis_url, "COLLECTOR_BLOCK_MS": "100", "REDIS_TIMEOUT": "2"}
        collector = CollectorProcess({**base, **env}).start()
        started.append(collector)
        return collector

    yield start
    for collector in started:
        collector.stop()
