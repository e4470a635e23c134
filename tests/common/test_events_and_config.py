from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import orjson
import pytest

from llm_gateway_common.config import ConfigError, Env
from llm_gateway_common.events import SCHEMA_VERSION, UsageEvent, decode_event, encode_event
from llm_gateway_common.streams import entry_fields, event_from_fields
from llm_gateway_proxy.settings import ProxySettings


def an_event(**overrides: object) -> UsageEvent:
    fields: dict[str, object] = {
        "event_id": "e-1", "request_id": "r-1", "tenant": "acme",
        "endpoint": "/v1/chat/completions", "provider": "openai", "status_code": 200,
        "outcome": "ok",
        "started_at": datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=UTC),
        "finished_at": datetime(2026, 11, 22, 10, 0, 1, tzinfo=UTC), "latency_ms": 877.0,
    }  # fmt: skip
    fields.update(overrides)
    return UsageEvent(**fields)  # type: ignore[arg-type]


def test_event_round_trips_through_a_stream_entry() -> None:
    event = an_event(prompt_tokens=5, usage_source="provider")
    fields = entry_fields(event)
    assert list(fields) == ["data"]
    assert event_from_fields({b"data": fields["data"]}) == event


def test_event_json_uses_rfc3339_utc_and_declared_names() -> None:
    data = orjson.loads(encode_event(an_event()))
    assert data["started_at"] == "2026-11-22T10:00:00.123000Z"
    assert data["schema_version"] == SCHEMA_VERSION
    assert {"event_id", "request_id", "tenant", "usage_source", "ttfb_ms"} <= set(data)


def test_newer_producers_fields_are_ignored_by_older_consumers() -> None:
    data = orjson.loads(encode_event(an_event()))
    data["field_from_the_future"] = {"x": 1}
    assert decode_event(orjson.dumps(data)).request_id == "r-1"


def test_malformed_event_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_event(b'{"event_id": "x"}')
    with pytest.raises(ValueError, match="no 'data' field"):
        event_from_fields({b"other": b"{}"})


def test_settings_defaults_and_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="AUTH_MODE=keys needs KEYS_FILE"):
        ProxySettings.from_env({})  # no way for any key to exist: refuse to start
    settings = ProxySettings.from_env({"AUTH_MODE": "none"})
    assert settings.auth_mode == "none"
    assert ProxySettings.from_env({"MANAGEMENT_TOKEN": "t"}).auth_mode == "keys"
    assert settings.upstream_base_url == "https://api.openai.com/v1"
    assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 8080)
    assert settings.max_request_body_bytes == 32 * 1024 * 1024
    with pytest.raises(ConfigError, match="EVENT_QUEUE_SIZE"):
        ProxySettings.from_env({"AUTH_MODE": "none", "EVENT_QUEUE_SIZE": "lots"})
    with pytest.raises(ConfigError, match="LISTEN_ADDR"):
        ProxySettings.from_env({"AUTH_MODE": "none", "LISTEN_ADDR": "nowhere"})
    with pytest.raises(ConfigError, match="UPSTREAM_OPENAI_BASE_URL"):
        ProxySettings.from_env({"AUTH_MODE": "none", "UPSTREAM_OPENAI_BASE_URL": "ftp://x"})


def test_settings_never_show_the_upstream_key() -> None:
    settings = ProxySettings.from_env(
        {"UPSTREAM_OPENAI_API_KEY": "sk-very-secret", "MANAGEMENT_TOKEN": "mgmt-very-secret"}
    )
    assert "sk-very-secret" not in repr(settings)
    assert "mgmt-very-secret" not in repr(settings)
    assert "sk-very-secret" not in str(settings)


def test_env_parsing() -> None:
    env = Env({"A": " 3 ", "B": "", "C": "yes", "D": "a, b,,c", "E": "[::1]:9000"})
    assert env.integer("A", 0) == 3
    assert env.integer("B", 7) == 7
    assert env.flag("C", False) is True
    assert env.csv("D") == ("a", "b", "c")
    assert env.listen_addr("E", "x:1") == ("::1", 9000)
    with pytest.raises(ConfigError, match="A must be at least 5"):
        env.integer("A", 0, minimum=5)
