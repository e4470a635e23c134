"""Fixtures for the proxy tests that need a Redis of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

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
