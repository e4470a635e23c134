"""Gateway keys (proxy.auth): the mode, the management token and the keys file only ever by
reference to a Secret, the keys file mounted read-only where KEYS_FILE points, and the key
cache and request-path Redis settings."""

from __future__ import annotations

from typing import Any

from tests.chart.conftest import RenderChart
from tests.chart.kubelet import secret_references
from tests.chart.rendering import Rendered, merged
from tests.chart.scenarios import KEYS_FILE, MINIMAL, NO_AUTH, REDIS, SCENARIOS

CONFIG_MAP = "gw-llm-gateway-proxy"
KEYS_DIR = "/etc/llm-gateway/keys"


def _config(rendered: Rendered) -> dict[str, str]:
    data: dict[str, str] = rendered.get("ConfigMap", CONFIG_MAP)["data"]
    return data


def _keys_volume(rendered: Rendered) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The proxy's gateway-keys volume and its mount, or None for each that is absent."""
    volumes = {v["name"]: v for v in rendered.pod_spec("proxy")["volumes"]}
    mounts = {m["name"]: m for m in rendered.container("proxy")["volumeMounts"]}
    return volumes.get("gateway-keys"), mounts.get("gateway-keys")


def test_a_management_token_comes_from_its_secret(render_chart: RenderChart) -> None:
    rendered = render_chart(MINIMAL)
    assert secret_references(rendered.container("proxy"))["MANAGEMENT_TOKEN"] == (
        "gateway-manage", "management-token",
    )  # fmt: skip
    config = _config(rendered)
    assert config["AUTH_MODE"] == "keys"
    assert "KEYS_FILE" not in config
    assert _keys_volume(rendered) == (None, None)
    custom = render_chart(merged(REDIS, {"proxy": {"auth": {"managementToken": {
        "existingSecret": "ops", "key": "token"}}}}))  # fmt: skip
    assert secret_references(custom.container("proxy"))["MANAGEMENT_TOKEN"] == ("ops", "token")


def test_the_keys_file_is_mounted_read_only_where_keys_file_points(
    render_chart: RenderChart,
) -> None:
    rendered = render_chart(merged(REDIS, KEYS_FILE))
    volume, mount = _keys_volume(rendered)
    assert volume == {
        "name": "gateway-keys",
        "secret": {"secretName": "gateway-keys", "items": [{"key": "keys.json",
                                                            "path": "keys.json"}],
                   "defaultMode": 0o444},
    }  # fmt: skip
    assert mount == {"name": "gateway-keys", "mountPath": KEYS_DIR, "readOnly": True}
    assert _config(rendered)["KEYS_FILE"] == f"{KEYS_DIR}/keys.json"
    assert "MANAGEMENT_TOKEN" not in secret_references(rendered.container("proxy"))
    # Whatever the Secret's key is called, the file the proxy reads has the same path.
    custom = render_chart(merged(REDIS, {"proxy": {"auth": {"keysFile": {
        "existingSecret": "gitops-keys", "key": "gateway-keys.json"}}}}))  # fmt: skip
    volume, _ = _keys_volume(custom)
    assert volume is not None
    assert volume["secret"]["secretName"] == "gitops-keys"
    assert volume["secret"]["items"] == [{"key": "gateway-keys.json", "path": "keys.json"}]
    assert _config(custom)["KEYS_FILE"] == f"{KEYS_DIR}/keys.json"


def test_both_a_token_and_a_keys_file(render_chart: RenderChart) -> None:
    rendered = render_chart(SCENARIOS["everything"])
    assert "MANAGEMENT_TOKEN" in secret_references(rendered.container("proxy"))
    assert _config(rendered)["KEYS_FILE"] == f"{KEYS_DIR}/keys.json"
    assert all(_keys_volume(rendered))


def test_values_reach_the_auth_variables(render_chart: RenderChart) -> None:
    defaults = _config(render_chart(MINIMAL))
    assert {name: defaults[name] for name in ("KEY_CACHE_TTL", "REQUEST_REDIS_TIMEOUT",
                                              "RATE_LIMIT_FAIL_OPEN")} == {
        "KEY_CACHE_TTL": "2", "REQUEST_REDIS_TIMEOUT": "0.1", "RATE_LIMIT_FAIL_OPEN": "true",
    }  # fmt: skip
    values = merged(MINIMAL, {"proxy": {"auth": {"keyCacheTtl": 0.5, "requestRedisTimeout": 0.05,
                                                 "rateLimitFailOpen": False}}})  # fmt: skip
    config = _config(render_chart(values))
    assert config["KEY_CACHE_TTL"] == "0.5"
    assert config["REQUEST_REDIS_TIMEOUT"] == "0.05"
    assert config["RATE_LIMIT_FAIL_OPEN"] == "false"


def test_no_authentication_needs_no_secret(render_chart: RenderChart) -> None:
    rendered = render_chart(merged(REDIS, NO_AUTH))
    assert _config(rendered)["AUTH_MODE"] == "none"
    assert secret_references(rendered.container("proxy")) == {}
    assert _keys_volume(rendered) == (None, None)
