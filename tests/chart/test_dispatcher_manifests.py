"""The dispatcher's Deployment: off by default; the file sink on a PVC, hosted sinks with a key."""

from __future__ import annotations

import pytest

from tests.chart.conftest import RenderChart
from tests.chart.kubelet import secret_references
from tests.chart.rendering import Rendered, merged
from tests.chart.scenarios import FILE_DISPATCHER, HELICONE, LUNARY, MINIMAL

NAME = "gw-llm-gateway-dispatcher"


def _config(rendered: Rendered) -> dict[str, str]:
    data: dict[str, str] = rendered.get("ConfigMap", NAME)["data"]
    return data


def _volumes(rendered: Rendered) -> dict[str, dict[str, object]]:
    return {v["name"]: v for v in rendered.pod_spec("dispatcher")["volumes"]}


def test_the_dispatcher_is_off_by_default(render_chart: RenderChart) -> None:
    rendered = render_chart(MINIMAL)
    assert rendered.components() == ["collector", "proxy"]
    for kind in ("ConfigMap", "PersistentVolumeClaim", "NetworkPolicy"):
        assert rendered.find(kind, "dispatcher") == []


def test_the_file_sink_writes_onto_a_claim(render_chart: RenderChart) -> None:
    rendered = render_chart(merged(MINIMAL, FILE_DISPATCHER, {"dispatcher": {"persistence": {
        "size": "5Gi", "storageClass": "fast"}}}))  # fmt: skip
    claim = rendered.get("PersistentVolumeClaim", NAME)
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
        "resources": {"requests": {"storage": "5Gi"}},
    }  # fmt: skip
    assert _volumes(rendered)["data"] == {"name": "data",
                                          "persistentVolumeClaim": {"claimName": NAME}}  # fmt: skip
    container = rendered.container("dispatcher")
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert _config(rendered)["DISPATCHER_ENDPOINT"] == "/data/events.jsonl"
    assert "DISPATCHER_API_KEY" not in secret_references(container)
    # a ReadWriteOnce volume is released by the old pod before the new one starts
    assert rendered.deployment("dispatcher")["spec"]["strategy"] == {"type": "Recreate"}


def test_the_file_follows_the_mount_path(render_chart: RenderChart) -> None:
    rendered = render_chart(merged(MINIMAL, FILE_DISPATCHER, {"dispatcher": {"persistence": {
        "mountPath": "/var/lib/usage"}}}))  # fmt: skip
    assert _config(rendered)["DISPATCHER_ENDPOINT"] == "/var/lib/usage/events.jsonl"


def test_an_existing_claim_is_used_as_is(render_chart: RenderChart) -> None:
    rendered = render_chart(merged(MINIMAL, FILE_DISPATCHER, {"dispatcher": {"persistence": {
        "existingClaim": "usage-archive"}}}))  # fmt: skip
    assert rendered.of_kind("PersistentVolumeClaim") == []
    assert _volumes(rendered)["data"]["persistentVolumeClaim"] == {"claimName": "usage-archive"}


def test_without_persistence_the_file_is_on_an_empty_dir(render_chart: RenderChart) -> None:
    rendered = render_chart(merged(MINIMAL, FILE_DISPATCHER, {"dispatcher": {"persistence": {
        "enabled": False}}}))  # fmt: skip
    assert rendered.of_kind("PersistentVolumeClaim") == []
    assert _volumes(rendered)["data"] == {"name": "data", "emptyDir": {}}


@pytest.mark.parametrize(("sink", "layer"), [("lunary", LUNARY), ("helicone", HELICONE)])
def test_hosted_sinks_take_their_key_from_a_secret(
    render_chart: RenderChart, sink: str, layer: dict[str, object]
) -> None:
    rendered = render_chart(merged(MINIMAL, layer))
    container = rendered.container("dispatcher")
    assert secret_references(container)["DISPATCHER_API_KEY"] == (sink, "api-key")
    config = _config(rendered)
    assert config["DISPATCHER_SINK"] == sink
    assert "DISPATCHER_ENDPOINT" not in config  # the service's default URL for the sink
    assert "data" not in _volumes(rendered)
    assert rendered.of_kind("PersistentVolumeClaim") == []
    assert "strategy" not in rendered.deployment("dispatcher")["spec"]


def test_values_reach_the_dispatcher_variables(render_chart: RenderChart) -> None:
    values = merged(MINIMAL, HELICONE, {"dispatcher": {
        "endpoint": "https://helicone.internal/custom/v1/log", "containerPort": 9102,
        "group": "helicone", "batchSize": 20, "flushInterval": 0.5, "maxAttempts": 3,
        "timeout": 4, "concurrency": 2, "backoffMin": 0.5, "backoffMax": 30,
        "claimIdleMs": 120000, "redisTimeout": 2, "logLevel": "error"}})  # fmt: skip
    assert _config(render_chart(values)) == {
        "DISPATCHER_LISTEN_ADDR": "0.0.0.0:9102",
        "DISPATCHER_SINK": "helicone",
        "DISPATCHER_ENDPOINT": "https://helicone.internal/custom/v1/log",
        "DISPATCHER_GROUP": "helicone",
        "DISPATCHER_BATCH_SIZE": "20",
        "DISPATCHER_FLUSH_INTERVAL": "0.5",
        "DISPATCHER_MAX_ATTEMPTS": "3",
        "DISPATCHER_TIMEOUT": "4",
        "DISPATCHER_CONCURRENCY": "2",
        "DISPATCHER_BACKOFF_MIN": "0.5",
        "DISPATCHER_BACKOFF_MAX": "30",
        "DISPATCHER_CLAIM_IDLE_MS": "120000",
        "REDIS_TIMEOUT": "2",
        "EVENTS_STREAM": "llm-gateway:events",
        "LOG_LEVEL": "error",
    }


def test_the_dispatcher_consumes_in_its_own_group(render_chart: RenderChart) -> None:
    rendered = render_chart(merged(MINIMAL, FILE_DISPATCHER))
    assert _config(rendered)["DISPATCHER_GROUP"] == "dispatcher"
    collector = rendered.get("ConfigMap", "gw-llm-gateway-collector")["data"]
    assert collector["COLLECTOR_GROUP"] != _config(rendered)["DISPATCHER_GROUP"]
    (consumer,) = [v for v in rendered.container("dispatcher")["env"]
                   if v["name"] == "DISPATCHER_CONSUMER"]  # fmt: skip
    assert consumer["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
