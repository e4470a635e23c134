"""The proxy's configuration: one frozen struct, read once from the environment at startup."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import msgspec

from llm_gateway_common.config import ConfigError, Env
from llm_gateway_common.streams import DEFAULT_REDIS_URL, DEFAULT_STREAM
from llm_gateway_proxy.modelconfig import ModelTable, load_models_file
from llm_gateway_proxy.prices import PriceOverride, load_prices_file
from llm_gateway_proxy.tracing import TracingSettings

DEFAULT_UPSTREAM = "https://api.openai.com/v1"
# The OpenAI APIs forwarded untouched by default (PASSTHROUGH_PATHS; `*` is one path segment):
# models, files, uploads, batches and stored completions/responses, and the paid APIs whose
# answers report their usage (images, audio, moderations). Whatever runs a model on its own
# schedule (assistants, threads, fine-tuning, vector stores) stays off until an operator allows it.
DEFAULT_PASSTHROUGH = (
    "models", "models/*",
    "files", "files/*", "files/*/content",
    "uploads", "uploads/*/parts", "uploads/*/complete", "uploads/*/cancel",
    "batches", "batches/*", "batches/*/cancel",
    "chat/completions", "chat/completions/*", "chat/completions/*/messages",
    "responses/*", "responses/*/cancel", "responses/*/input_items",
    "images/generations", "images/edits", "images/variations",
    "audio/speech", "audio/transcriptions", "audio/translations",
    "moderations",
)  # fmt: skip
_ACCOUNT_HEADERS = ("openai-organization", "openai-project")
_SEGMENT = re.compile(r"^(?:\*|[A-Za-z0-9_\-.:~]+)$")


class ProxySettings(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob the proxy reads. Defaults are what an unconfigured deployment gets."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    upstream_base_url: str = DEFAULT_UPSTREAM
    upstream_api_key: str | None = msgspec.field(default=None)
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    upstream_pool_size: int = 256
    max_request_body_bytes: int = 32 * 1024 * 1024
    cors_allow_origins: tuple[str, ...] = ()
    redis_url: str = DEFAULT_REDIS_URL
    redis_timeout: float = 2.0
    events_stream: str = DEFAULT_STREAM
    events_maxlen: int = 1_000_000
    event_queue_size: int = 100_000
    event_batch_size: int = 500
    event_flush_interval: float = 0.05
    metering_capture_bytes: int = 0
    shutdown_grace: float = 30.0
    log_level: str = "info"
    auth_mode: Literal["keys", "none"] = "keys"
    keys_file: str | None = None
    management_token: str | None = None
    key_cache_ttl: float = 2.0
    request_redis_timeout: float = 0.1
    rate_limit_fail_open: bool = True
    management_listen_host: str = "0.0.0.0"
    management_listen_port: int = 8090
    max_in_flight: int = 512
    metrics_tenant_label: bool = False  # a `tenant` label on llm_gateway_requests_total
    metrics_tenant_limit: int = 100  # distinct tenants labelled; the rest fold into `other`
    client_read_timeout: float = 60.0
    client_keep_alive_timeout: float = 75.0  # idle keep-alive connections closed after this
    passthrough_paths: tuple[str, ...] = DEFAULT_PASSTHROUGH
    forward_account_headers: tuple[bytes, ...] = ()
    models_file: str | None = None
    # The checked MODELS_FILE (providers, public model names, routing); None: one `openai`
    # provider from UPSTREAM_OPENAI_*, every model passed through (modelconfig.single_provider).
    models: ModelTable | None = None
    prices_file: str | None = None
    prices: tuple[PriceOverride, ...] = ()  # PRICES_FILE's entries, first match wins (prices.py)
    tracing: TracingSettings = msgspec.field(default_factory=TracingSettings)  # OTEL_*: off
    # The response cache (cache.py; off unless a model, key, tenant or request turns it on):
    # its Redis (None: REDIS_URL's), the largest answer stored, how long an identical request
    # waits for the one already going upstream.
    cache_redis_url: str | None = None
    cache_max_entry_bytes: int = 1024 * 1024
    cache_wait: float = 60.0

    def __repr__(self) -> str:  # never print the upstream key or the management token
        return (
            f"ProxySettings(upstream={self.upstream_base_url!r}, listen={self.listen_port}, "
            f"auth_mode={self.auth_mode!r})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProxySettings:
        """Read the environment; raises ConfigError naming the variable that is wrong."""
        env = Env(environ)
        host, port = env.listen_addr("LISTEN_ADDR", "0.0.0.0:8080")
        # The listeners are told apart by port, so they cannot share one.
        management_host, management_port = env.listen_addr("MANAGEMENT_LISTEN_ADDR", "0.0.0.0:8090")
        if management_port == port:
            raise ConfigError(
                f"MANAGEMENT_LISTEN_ADDR must use another port than LISTEN_ADDR ({port})"
            )
        base_url = env.text("UPSTREAM_OPENAI_BASE_URL", DEFAULT_UPSTREAM).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"UPSTREAM_OPENAI_BASE_URL must be an http(s) URL, got {base_url!r}")
        client_timeout = env.number("HTTP_CLIENT_TIMEOUT", 600.0, minimum=0.001)
        auth_mode = env.text("AUTH_MODE", "keys").lower()
        if auth_mode not in ("keys", "none"):
            raise ConfigError(f"AUTH_MODE must be keys or none, got {auth_mode!r}")
        keys_file = env.optional_text("KEYS_FILE")
        management_token = env.optional_text("MANAGEMENT_TOKEN")
        if auth_mode == "keys" and keys_file is None and management_token is None:
            raise ConfigError(
                "AUTH_MODE=keys needs KEYS_FILE (hashed keys) or MANAGEMENT_TOKEN (to create "
                "keys); set AUTH_MODE=none to run without authentication (local demos only)"
            )
        models_file = env.optional_text("MODELS_FILE")
        prices_file = env.optional_text("PRICES_FILE")
        return cls(
            prices_file=prices_file,
            prices=() if prices_file is None else load_prices_file(prices_file),
            models_file=models_file,
            models=None if models_file is None else load_models_file(models_file, env.environ),
            listen_host=host,
            listen_port=port,
            upstream_base_url=base_url,
            upstream_api_key=env.optional_text("UPSTREAM_OPENAI_API_KEY"),
            connect_timeout=env.number(
                "HTTP_CONNECT_TIMEOUT", min(10.0, client_timeout), minimum=0.001
            ),
            read_timeout=client_timeout,
            upstream_pool_size=env.integer("UPSTREAM_POOL_SIZE", 256, minimum=1),
            max_request_body_bytes=env.integer(
                "MAX_REQUEST_BODY_BYTES", 32 * 1024 * 1024, minimum=1
            ),
            cors_allow_origins=env.csv("CORS_ALLOW_ORIGINS"),
            redis_url=env.text("REDIS_URL", DEFAULT_REDIS_URL),
            redis_timeout=env.number("REDIS_TIMEOUT", 2.0, minimum=0.001),
            events_stream=env.text("EVENTS_STREAM", DEFAULT_STREAM),
            events_maxlen=env.integer("EVENTS_STREAM_MAXLEN", 1_000_000, minimum=0),
            event_queue_size=env.integer("EVENT_QUEUE_SIZE", 100_000, minimum=1),
            event_batch_size=env.integer("EVENT_BATCH_SIZE", 500, minimum=1),
            event_flush_interval=env.number("EVENT_FLUSH_INTERVAL", 0.05, minimum=0),
            metering_capture_bytes=env.integer("METERING_CAPTURE_BYTES", 0, minimum=0),
            shutdown_grace=env.number("SHUTDOWN_GRACE_SECONDS", 30.0, minimum=0),
            log_level=env.text("LOG_LEVEL", "info"),
            auth_mode=auth_mode,  # type: ignore[arg-type]
            keys_file=keys_file,
            management_token=management_token,
            key_cache_ttl=env.number("KEY_CACHE_TTL", 2.0, minimum=0),
            request_redis_timeout=env.number("REQUEST_REDIS_TIMEOUT", 0.1, minimum=0.001),
            rate_limit_fail_open=env.flag("RATE_LIMIT_FAIL_OPEN", True),
            passthrough_paths=_passthrough_paths(env),
            forward_account_headers=_account_headers(env),
            management_listen_host=management_host,
            management_listen_port=management_port,
            max_in_flight=env.integer("MAX_IN_FLIGHT", 512, minimum=1),
            metrics_tenant_label=env.flag("METRICS_TENANT_LABEL", False),
            metrics_tenant_limit=env.integer("METRICS_TENANT_LIMIT", 100, minimum=1),
            client_read_timeout=env.number("CLIENT_READ_TIMEOUT", 60.0, minimum=0.001),
            client_keep_alive_timeout=env.number("CLIENT_KEEP_ALIVE_TIMEOUT", 75.0, minimum=0.001),
            tracing=TracingSettings.from_env(env.environ),
            cache_redis_url=env.optional_text("CACHE_REDIS_URL"),
            cache_max_entry_bytes=env.integer("CACHE_MAX_ENTRY_BYTES", 1024 * 1024, minimum=1),
            cache_wait=env.number("CACHE_WAIT_SECONDS", 60.0, minimum=0),
        )


def _passthrough_paths(env: Env) -> tuple[str, ...]:
    """PASSTHROUGH_PATHS: unset = the default list, `none` = no pass-through at all."""
    value = env.optional_text("PASSTHROUGH_PATHS")
    if value is None:
        return DEFAULT_PASSTHROUGH
    if value.lower() == "none":
        return ()
    patterns = tuple(p.strip().strip("/") for p in env.csv("PASSTHROUGH_PATHS") if p.strip("/ "))
    for pattern in patterns:
        segments = pattern.split("/")
        if segments[0] == "*" or not all(
            _SEGMENT.match(s) and s not in (".", "..") for s in segments
        ):
            raise ConfigError(
                f"PASSTHROUGH_PATHS: {pattern!r} is not a path under /v1 made of segments "
                "(letters, digits, _-.:~) and * (any one segment, not the first)"
            )
    return patterns


def _account_headers(env: Env) -> tuple[bytes, ...]:
    names = tuple(name.strip().lower() for name in env.csv("FORWARD_ACCOUNT_HEADERS"))
    for name in names:
        if name not in _ACCOUNT_HEADERS:
            raise ConfigError(
                f"FORWARD_ACCOUNT_HEADERS: {name!r} is not one of OpenAI-Organization, "
                "OpenAI-Project"
            )
    return tuple(name.encode() for name in names)
