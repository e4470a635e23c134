"""Reading usage events back from the Redis stream, as a consumer would."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from llm_gateway_common.events import UsageEvent
from llm_gateway_common.streams import DEFAULT_STREAM, event_from_fields


async def all_events(redis: aioredis.Redis, stream: str = DEFAULT_STREAM) -> list[UsageEvent]:
    entries = await redis.xrange(stream, "-", "+")
    return [event_from_fields(fields) for _, fields in entries]


async def event_for(
    redis: aioredis.Redis, request_id: str, stream: str = DEFAULT_STREAM, deadline: float = 10.0
) -> UsageEvent:
    """The event of one request (by the X-LLM-Request-ID the client saw); waits for it to land."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while True:
        for event in await all_events(redis, stream):
            if event.request_id == request_id:
                return event
        if loop.time() > give_up:
            raise AssertionError(f"no event for request {request_id} in {stream}")
        await asyncio.sleep(0.05)
