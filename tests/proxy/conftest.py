"""Fixtures for the proxy tests: a Redis of their own, an Anthropic fake per module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from llm_gateway_fakes.anthropic import FakeAnthropicServer
from tests.support.servers import LocalRedis


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    """A Redis of this test's own: tests stop, freeze and reconfigure it, which the session
    Redis must never be."""
    server = LocalRedis().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(server: LocalRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url, socket_timeout=10)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[FakeAnthropicServer]:
    """An Anthropic fake for the module's tests (each resets what it changes)."""
    server = FakeAnthropicServer().start()
    yield server
    server.stop()
