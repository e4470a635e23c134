"""Dispatcher fixtures: the fake Lunary and Helicone, and dispatchers run as real processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis.asyncio as aioredis

from llm_gateway_fakes.helicone import LOG_PATH, FakeHelicone
from llm_gateway_fakes.lunary import INGEST_PATH, FakeLunary
from llm_gateway_fakes.threaded import ThreadedServer
from tests.support.services import DispatcherProcess

LUNARY_KEY = "5d0f3c9e-7c1a-4c55-9a53-2b1e6f4d8a10"  # a project public key is a UUID
HELICONE_KEY = "sk-helicone-test-4f8b2c61d0e9a7b3"


DispatcherFactory = Callable[..., DispatcherProcess]


@pytest.fixture(scope="session")
def lunary_server() -> Iterator[ThreadedServer[FakeLunary]]:
    server = ThreadedServer(FakeLunary()).start()
    yield server
    server.stop()


@pytest.fixture
def lunary(lunary_server: ThreadedServer[FakeLunary]) -> FakeLunary:
    """The fake Lunary, reset for each test; it accepts only LUNARY_KEY."""
    lunary_server.fake.reset()
    lunary_server.fake.api_key = LUNARY_KEY
    return lunary_server.fake


@pytest.fixture
def lunary_env(lunary_server: ThreadedServer[FakeLunary], lunary: FakeLunary) -> dict[str, str]:
    """Dispatcher settings that send to the fake Lunary."""
    return {"DISPATCHER_SINK": "lunary", "DISPATCHER_API_KEY": LUNARY_KEY,
            "DISPATCHER_ENDPOINT": lunary_server.base_url + INGEST_PATH}  # fmt: skip


@pytest.fixture(scope="session")
def helicone_server() -> Iterator[ThreadedServer[FakeHelicone]]:
    server = ThreadedServer(FakeHelicone()).start()
    yield server
    server.stop()


@pytest.fixture
def helicone(helicone_server: ThreadedServer[FakeHelicone]) -> FakeHelicone:
    """The fake Helicone, reset for each test; it accepts only HELICONE_KEY."""
    helicone_server.fake.reset()
    helicone_server.fake.api_key = HELICONE_KEY
    return helicone_server.fake


@pytest.fixture
def helicone_env(
    helicone_server: ThreadedServer[FakeHelicone], helicone: FakeHelicone
) -> dict[str, str]:
    """Dispatcher settings that send to the fake Helicone."""
    return {"DISPATCHER_SINK": "helicone", "DISPATCHER_API_KEY": HELICONE_KEY,
            "DISPATCHER_ENDPOINT": helicone_server.base_url + LOG_PATH}  # fmt: skip


@pytest.fixture
def dispatcher_factory(redis_url: str, stream_name: str) -> Iterator[DispatcherFactory]:
    """Start dispatchers on this test's stream (env overrides); any still running are killed
    after the test. Retries are quick here: backoff from 50 ms, capped at 0.5 s."""
    started: list[DispatcherProcess] = []

    def start(**env: str) -> DispatcherProcess:
        base = {
            "REDIS_URL": redis_url,
            "REDIS_TIMEOUT": "2",
            "EVENTS_STREAM": stream_name,
            "DISPATCHER_CONSUMER": "dispatcher-under-test",
            "DISPATCHER_FLUSH_INTERVAL": "0.05",
            "DISPATCHER_BACKOFF_MIN": "0.05",
            "DISPATCHER_BACKOFF_MAX": "0.5",
            "DISPATCHER_TIMEOUT": "5",
        }
        dispatcher = DispatcherProcess({**base, **env}).start()
        started.append(dispatcher)
        return dispatcher

    yield start
    for dispatcher in started:
        dispatcher.stop()


async def dead_letters(redis: aioredis.Redis, stream: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await redis.xrange(f"{stream}:dlq", "-", "+")]
