"""The dispatcher's configuration: one frozen struct, read once from the environment."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from llm_gateway_common.config import ConfigError, Env
from llm_gateway_common.streams import DEFAULT_REDIS_URL, DEFAULT_STREAM

SinkName = Literal["file", "lunary", "helicone"]

DEFAULT_ENDPOINTS: dict[str, str] = {
    "file": "/data/events.jsonl",
    "lunary": "https://api.lunary.ai/v1/runs/ingest",
    "helicone": "https://api.worker.helicone.ai/custom/v1/log",
}


class DispatcherSettings(msgspec.Struct, frozen=True, kw_only=True):
    sink: SinkName = "file"
    endpoint: str = DEFAULT_ENDPOINTS["file"]
    api_key: str | None = None
    batch_size: int = 100
    flush_interval: float = 1.0
    max_attempts: int = 10
    timeout: float = 10.0
    concurrency: int = 8
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    redis_url: str = DEFAULT_REDIS_URL
    redis_timeout: float = 5.0
    events_stream: str = DEFAULT_STREAM
    group: str = "dispatcher"
    consumer: str = "dispatcher"
    claim_idle_ms: int = 60_000
    listen_host: str = "0.0.0.0"
    listen_port: int = 8082
    log_level: str = "info"

    def __repr__(self) -> str:  # never print the API key (nor a password in a URL)
        endpoint = _without_userinfo(self.endpoint)
        return (
            f"DispatcherSettings(sink={self.sink!r}, endpoint={endpoint!r}, "
            f"stream={self.events_stream!r}, group={self.group!r})"
        )

    @property
    def hosted(self) -> bool:
        """The sink is an HTTP API (needs a key, honours DISPATCHER_TIMEOUT)."""
        return self.sink != "file"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DispatcherSettings:
        """Read the environment; raises ConfigError naming the variable that is wrong."""
        env = Env(environ)
        sink = env.text("DISPATCHER_SINK", "file").lower()
        if sink not in DEFAULT_ENDPOINTS:
            raise ConfigError(f"DISPATCHER_SINK must be file, lunary or helicone, got {sink!r}")
        endpoint = env.text("DISPATCHER_ENDPOINT", DEFAULT_ENDPOINTS[sink])
        api_key = env.optional_text("DISPATCHER_API_KEY")
        if sink != "file":
            _check_hosted(sink, endpoint, api_key)
        backoff_min = env.number("DISPATCHER_BACKOFF_MIN", 1.0, minimum=0.001)
        host, port = env.listen_addr("DISPATCHER_LISTEN_ADDR", "0.0.0.0:8082")
        return cls(
            sink=sink,  # type: ignore[arg-type]
            endpoint=endpoint,
            api_key=api_key,
            batch_size=env.integer("DISPATCHER_BATCH_SIZE", 100, minimum=1),
            flush_interval=env.number("DISPATCHER_FLUSH_INTERVAL", 1.0, minimum=0),
            max_attempts=env.integer("DISPATCHER_MAX_ATTEMPTS", 10, minimum=1),
            timeout=env.number("DISPATCHER_TIMEOUT", 10.0, minimum=0.001),
            concurrency=env.integer("DISPATCHER_CONCURRENCY", 8, minimum=1),
            backoff_min=backoff_min,
            backoff_max=env.number("DISPATCHER_BACKOFF_MAX", 60.0, minimum=backoff_min),
            redis_url=env.text("REDIS_URL", DEFAULT_REDIS_URL),
            redis_timeout=env.number("REDIS_TIMEOUT", 5.0, minimum=0.001),
            events_stream=env.text("EVENTS_STREAM", DEFAULT_STREAM),
            group=env.text("DISPATCHER_GROUP", "dispatcher"),
            consumer=env.text("DISPATCHER_CONSUMER", env.text("HOSTNAME", socket.gethostname())),
            claim_idle_ms=env.integer("DISPATCHER_CLAIM_IDLE_MS", 60_000, minimum=1),
            listen_host=host,
            listen_port=port,
            log_level=env.text("LOG_LEVEL", "info"),
        )


def _check_hosted(sink: str, endpoint: str, api_key: str | None) -> None:
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"DISPATCHER_ENDPOINT must be an http(s) URL for {sink}")
    if api_key is None:
        raise ConfigError(f"DISPATCHER_API_KEY is required when DISPATCHER_SINK={sink}")
    if sink == "lunary" and not _is_uuid(api_key):
        # Lunary answers 402 to a key that is not a UUID; say so now, without echoing the key.
        raise ConfigError("DISPATCHER_API_KEY must be the Lunary project's public key (a UUID)")


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def _without_userinfo(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.username is None and parts.password is None:
        return endpoint
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return parts._replace(netloc=netloc).geturl()
