"""The collector's Deployment: NDJSON to stdout by default, Postgres when configured."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.chart.conftest import RenderChart
from tests.chart.kubelet import http_probes, secret_references
from tests.chart.rendering import merged
from tests.chart.scenarios import MINIMAL, POSTGRES_COLLECTOR


def _config(render_chart: RenderChart, values: Mapping[str, Any]) -> dict[str, str]:
    data: dict[str, str] = render_chart(values).get("ConfigMap", "gw-llm-gateway-collector")["data"]
    return data


def test_by_default_events_go_to_stdout_as_ndjson(render_chart: RenderChart) -> None:
    rendered = render_chart(MINIMAL)
    container = rendered.container("collector")
    assert container["command"] == ["llm-gateway-collector"]
    config = _config(render_chart, MINIMAL)
    assert (config["COLLECTOR_SINK"], config["EVENT_LOG_PATH"]) == ("ndjson", "-")
    assert "DATABASE_URL" not in {v["name"] for v in container["env"]}
    assert rendered.deployment("collector")["spec"]["replicas"] == 1


def test_the_postgres_sink_reads_its_url_from_the_secret(render_chart: RenderChart) -> None:
    custom_key = {"collector": {"postgres": {"existingSecretKey": "dsn", "timeout": 3}}}
    values = merged(MINIMAL, POSTGRES_COLLECTOR, custom_key)
    container = render_chart(values).container("collector")
    assert secret_references(container)["DATABASE_URL"] == ("ledger-db", "dsn")
    config = _config(render_chart, values)
    assert (config["COLLECTOR_SINK"], config["DATABASE_TIMEOUT"]) == ("postgres", "3")


def test_values_reach_the_collector_variables(render_chart: RenderChart) -> None:
    values = merged(MINIMAL, {"collector": {
        "containerPort": 9101, "group": "ledger", "batchSize": 250, "blockMs": 500,
        "claimIdleMs": 30000, "progressInterval": 60, "redisTimeout": 3, "logLevel": "warning",
        "ndjson": {"path": "/var/events/usage.ndjson"}}})  # fmt: skip
    assert _config(render_chart, values) == {
        "COLLECTOR_LISTEN_ADDR": "0.0.0.0:9101",
        "COLLECTOR_SINK": "ndjson",
        "EVENT_LOG_PATH": "/var/events/usage.ndjson",
        "DATABASE_TIMEOUT": "10",
        "REDIS_TIMEOUT": "3",
        "EVENTS_STREAM": "llm-gateway:events",
        "COLLECTOR_GROUP": "ledger",
        "COLLECTOR_BATCH_SIZE": "250",
        "COLLECTOR_BLOCK_MS": "500",
        "COLLECTOR_CLAIM_IDLE_MS": "30000",
        "COLLECTOR_PROGRESS_INTERVAL": "60",
        "LOG_LEVEL": "warning",
    }
    container = render_chart(values).container("collector")
    assert http_probes(container) == {
        "startupProbe": ("/live", 9101),
        "livenessProbe": ("/live", 9101),
        "readinessProbe": ("/ready", 9101),
    }


def test_each_replica_is_its_own_consumer_in_the_shared_group(render_chart: RenderChart) -> None:
    container = render_chart(merged(MINIMAL, {"collector": {"replicaCount": 3}})).container(
        "collector"
    )
    (consumer,) = [v for v in container["env"] if v["name"] == "COLLECTOR_CONSUMER"]
    assert consumer["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    named = render_chart(merged(MINIMAL, {"collector": {"consumer": "ledger-0"}}))
    (consumer,) = [v for v in named.container("collector")["env"]
                   if v["name"] == "COLLECTOR_CONSUMER"]  # fmt: skip
    assert consumer == {"name": "COLLECTOR_CONSUMER", "value": "ledger-0"}


def test_the_readiness_check_outlasts_its_redis_and_sink_checks(
    render_chart: RenderChart,
) -> None:
    """/ready waits up to REDIS_TIMEOUT for Redis, then as long for the sink."""
    probe = render_chart(MINIMAL).container("collector")["readinessProbe"]
    assert probe["timeoutSeconds"] == 12
    slow = render_chart(merged(MINIMAL, {"collector": {"redisTimeout": 7.5}}))
    assert slow.container("collector")["readinessProbe"]["timeoutSeconds"] == 17


def test_the_collector_can_be_turned_off(render_chart: RenderChart) -> None:
    rendered = render_chart(merged(MINIMAL, {"collector": {"enabled": False}}))
    assert rendered.find("Deployment", "collector") == []
    assert rendered.find("ConfigMap", "collector") == []
    assert rendered.components() == ["proxy"]


def test_the_collectors_service_carries_only_its_operations_port(render_chart: RenderChart) -> None:
    """A ClusterIP Service for Prometheus to find the pods' /metrics (and /live, /ready): nothing
    else is served there."""
    (service,) = render_chart(MINIMAL).find("Service", "collector")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8081, "targetPort": "http", "protocol": "TCP"}
    ]
