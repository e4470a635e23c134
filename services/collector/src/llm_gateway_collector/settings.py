"""The collector's configuration: one frozen struct, read once from the environment."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Literal

import msgspec

from llm_gateway_common.config import ConfigError, Env
from llm_gateway_common.streams import DEFAULT_REDIS_URL, DEFAULT_STREAM

Sink = Literal["ndjson", "postgres"]


class CollectorSettings(msgspec.Struct, frozen=True, kw_only=True):
    sink: Sink = "ndjson"
    event_log_path: str = "-"
    database_url: str | None = None
    database_timeout: float = 10.0
    redis_url: str = DEFAULT_REDIS_URL
    redis_timeout: float = 5.0
    events_stream: str = DEFAULT_STREAM
    group: str = "collector"
    consumer: str = "collector"
    batch_size: int = 1000
    block_ms: int = 1000
    claim_idle_ms: int = 60_000
    progress_interval: float = 10.0
    listen_host: str = "0.0.0.0"
    listen_port: int = 8081
    log_level: str = "info"

    def __repr__(self) -> str:  # DATABASE_URL may hold a password
        return f"CollectorSettings(sink={self.sink!r}, stream={self.events_stream!r})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CollectorSettings:
        env = Env(environ)
        sink = env.text("COLLECTOR_SINK", "ndjson").lower()
        if sink not in ("ndjson", "postgres"):
            raise ConfigError(f"COLLECTOR_SINK must be ndjson or postgres, got {sink!r}")
        database_url = env.optional_text("DATABASE_URL")
        if sink == "postgres" and database_url is None:
            raise ConfigError("DATABASE_URL is required when COLLECTOR_SINK=postgres")
        host, port = env.listen_addr("COLLECTOR_LISTEN_ADDR", "0.0.0.0:8081")
        return cls(
            sink=sink,  # type: ignore[arg-type]
            event_log_path=env.text("EVENT_LOG_PATH", "-"),
            database_url=database_url,
            database_timeout=env.number("DATABASE_TIMEOUT", 10.0, minimum=0.001),
            redis_url=env.text("REDIS_URL", DEFAULT_REDIS_URL),
            redis_timeout=env.number("REDIS_TIMEOUT", 5.0, minimum=0.001),
            events_stream=env.text("EVENTS_STREAM", DEFAULT_STREAM),
            group=env.text("COLLECTOR_GROUP", "collector"),
            consumer=env.text("COLLECTOR_CONSUMER", env.text("HOSTNAME", socket.gethostname())),
            batch_size=env.integer("COLLECTOR_BATCH_SIZE", 1000, minimum=1),
            block_ms=env.integer("COLLECTOR_BLOCK_MS", 1000, minimum=1),
            claim_idle_ms=env.integer("COLLECTOR_CLAIM_IDLE_MS", 60_000, minimum=1),
            progress_interval=env.number("COLLECTOR_PROGRESS_INTERVAL", 10.0, minimum=0.1),
            listen_host=host,
            listen_port=port,
            log_level=env.text("LOG_LEVEL", "info"),
        )
