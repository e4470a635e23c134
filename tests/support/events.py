"""Reading usage events back from the Redis stream, as a consumer would."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import redis.asyncio as aioredis

from llm_gateway_common.events import UsageEvent
from llm_gateway_common.streams import DEFAULT_STREAM, entry_fields, event_from_fields


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


# The routing fields of a request that Azure answered after `openai-us` failed it twice: pass
# as `make_event(i, **ROUTED)`.
ROUTED: dict[str, object] = {
    "provider": "azure.ai.openai", "provider_name": "azure-eu", "upstream_model": "gpt-4o-eu",
    "attempts": 3, "failed_targets": ("openai-us", "openai-us"),
}  # fmt: skip


def make_event(index: int, **overrides: object) -> UsageEvent:
    """A realistic event, as the proxy would write it."""
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "event_id": str(uuid.uuid4()), "request_id": uuid.uuid4().hex,
        "tenant": f"tenant-{index % 3}", "endpoint": "/v1/chat/completions", "provider": "openai",
        "model": "gpt-4o-mini" if index % 2 else "gpt-4o", "status_code": 200, "outcome": "ok",
        "prompt_tokens": 10 + index % 7, "completion_tokens": 5, "total_tokens": 15 + index % 7,
        "usage_source": "provider", "started_at": now, "finished_at": now, "latency_ms": 12.5,
    }  # fmt: skip
    fields.update(overrides)
    return UsageEvent(**fields)  # type: ignore[arg-type]


async def produce(redis: aioredis.Redis, stream: str, events: list[UsageEvent]) -> None:
    """XADD events the way the proxy does: the shared entry layout, pipelined."""
    for start in range(0, len(events), 500):
        pipe = redis.pipeline(transaction=False)
        for event in events[start : start + 500]:
            pipe.xadd(stream, entry_fields(event))  # type: ignore[arg-type]
        await pipe.execute()
