"""REDIS_URL in every component: an external address, a password from a Secret interpolated by
Kubernetes, a whole URL from a Secret, or the development Redis."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tests.chart.conftest import RenderChart
from tests.chart.kubelet import container_env, secret_references
from tests.chart.rendering import Rendered, Values, merged
from tests.chart.scenarios import FILE_DISPATCHER, MANAGEMENT_TOKEN, MINIMAL, SCENARIOS


def _redis_env(rendered: Rendered, component: str) -> list[dict[str, object]]:
    return [v for v in rendered.container(component)["env"] if v["name"].startswith("REDIS_")]


def _everyone(values: Mapping[str, Any]) -> Values:
    return merged(values, MANAGEMENT_TOKEN, FILE_DISPATCHER)


def test_an_external_redis_by_address(render_chart: RenderChart) -> None:
    rendered = render_chart(_everyone(MINIMAL))
    for component in ("proxy", "collector", "dispatcher"):
        assert _redis_env(rendered, component) == [
            {"name": "REDIS_URL", "value": "redis://redis-master.redis.svc:6379/0"}
        ]


def test_address_parts(render_chart: RenderChart) -> None:
    values = {"redis": {"host": "cache.example", "port": 6380, "database": 3, "tls": True,
                        "username": "gateway"}}  # fmt: skip
    (variable,) = _redis_env(render_chart(merged(values, MANAGEMENT_TOKEN)), "proxy")
    assert variable == {"name": "REDIS_URL", "value": "rediss://gateway@cache.example:6380/3"}


@pytest.mark.parametrize(
    ("username", "expected"),
    [("", "redis://:s3cret@redis-master.redis.svc:6379/0"),
     ("gateway", "redis://gateway:s3cret@redis-master.redis.svc:6379/0")],
)  # fmt: skip
def test_a_password_from_a_secret_is_interpolated_by_kubernetes(
    render_chart: RenderChart, username: str, expected: str
) -> None:
    values = _everyone({"redis": {"host": "redis-master.redis.svc", "existingSecret": "redis",
                                  "username": username}})  # fmt: skip
    rendered = render_chart(values)
    for component in ("proxy", "collector", "dispatcher"):
        container = rendered.container(component)
        names = [v["name"] for v in container["env"]]
        # $(REDIS_PASSWORD) only expands when REDIS_PASSWORD is defined earlier in the list
        assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")
        assert secret_references(container)["REDIS_PASSWORD"] == ("redis", "redis-password")
        secrets = {("redis", "redis-password"): "s3cret",
                   ("gateway-manage", "management-token"): "t0ken"}  # fmt: skip
        env = container_env(rendered, container, pod_name="p", secrets=secrets)
        assert env["REDIS_URL"] == expected
        assert "s3cret" not in str(container)


def test_a_whole_url_from_a_secret(render_chart: RenderChart) -> None:
    rendered = render_chart(_everyone(SCENARIOS["redis-url-secret"]))
    for component in ("proxy", "collector", "dispatcher"):
        assert _redis_env(rendered, component) == [
            {"name": "REDIS_URL",
             "valueFrom": {"secretKeyRef": {"name": "redis-url", "key": "url"}}}
        ]  # fmt: skip


def test_the_development_redis(render_chart: RenderChart) -> None:
    rendered = render_chart(SCENARIOS["ci"])
    service = rendered.one("Service", "redis")
    deployment = rendered.deployment("redis")
    assert deployment["spec"]["replicas"] == 1
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "redis", "port": 6379, "targetPort": "redis", "protocol": "TCP"}
    ]
    url = f"redis://{service['metadata']['name']}:6379/0"
    for component in ("proxy", "collector", "dispatcher"):
        assert _redis_env(rendered, component) == [{"name": "REDIS_URL", "value": url}]
    args = rendered.container("redis")["args"]
    assert args[0] == "redis-server"
    assert args[args.index("--save") + 1] == ""  # nothing persisted: development only
    assert "development only" in rendered.notes.lower()


def test_no_redis_objects_for_an_external_redis(render_chart: RenderChart) -> None:
    rendered = render_chart(MINIMAL)
    assert rendered.find("Deployment", "redis") == []
    assert rendered.find("Service", "redis") == []


def test_every_component_uses_the_same_stream(render_chart: RenderChart) -> None:
    rendered = render_chart(_everyone(merged(MINIMAL, {"events": {"stream": "usage:v1"}})))
    streams = {rendered.get("ConfigMap", f"gw-llm-gateway-{c}")["data"]["EVENTS_STREAM"]
               for c in ("proxy", "collector", "dispatcher")}  # fmt: skip
    assert streams == {"usage:v1"}
