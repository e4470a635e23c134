"""How usage events sit in a Redis stream: one entry per event, one field `data` holding its JSON.

Producers and consumers use these helpers so the entry layout is defined once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from llm_gateway_common.events import UsageEvent, decode_event, encode_event

DEFAULT_STREAM = "llm-gateway:events"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
ENTRY_FIELD = "data"


def entry_fields(event: UsageEvent) -> dict[str, bytes]:
    """The field map to XADD for one event."""
    return {ENTRY_FIELD: encode_event(event)}


def event_from_fields(fields: Mapping[Any, Any]) -> UsageEvent:
    """Decode an entry read back from the stream; raises ValueError when it holds no event."""
    raw = fields.get(ENTRY_FIELD.encode()) or fields.get(ENTRY_FIELD)
    if raw is None:
        raise ValueError(f"stream entry has no {ENTRY_FIELD!r} field")
    return decode_event(raw)


def dead_letter_stream(stream: str) -> str:
    """Where entries that cannot be processed go, with the reason."""
    return f"{stream}:dlq"


def connect_redis(url: str, *, timeout: float) -> aioredis.Redis:
    """A Redis client whose every call is bounded by `timeout` seconds (connect and socket)."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry_on_timeout=False,
        # No CLIENT SETINFO (two round trips) on every new connection: a burst that opens
        # connections would otherwise pay them within its request-path timeout.
        driver_info=None,
    )
