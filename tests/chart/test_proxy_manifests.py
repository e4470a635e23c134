"""The proxy's Deployment, Service, HPA, PDB and Ingress."""

from __future__ import annotations

from typing import Any

from tests.chart.conftest import RenderChart
from tests.chart.kubelet import http_probes, secret_references
from tests.chart.rendering import Rendered, merged
from tests.chart.scenarios import HPA, INGRESS, MINIMAL, SCENARIOS, UPSTREAM

FULLNAME = "gw-llm-gateway"


def _config(rendered: Rendered) -> dict[str, str]:
    data: dict[str, str] = rendered.get("ConfigMap", f"{FULLNAME}-proxy")["data"]
    return data


def _pod_labels(rendered: Rendered, component: str) -> dict[str, str]:
    labels: dict[str, str] = rendered.deployment(component)["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_the_service_selects_the_proxy_pods_and_only_them(render_chart: RenderChart) -> None:
    rendered = render_chart(SCENARIOS["ci"])
    service = rendered.get("Service", FULLNAME)
    deployment = rendered.deployment("proxy")
    selector = service["spec"]["selector"]
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    assert _selects(selector, _pod_labels(rendered, "proxy"))
    for other in ("collector", "dispatcher", "redis"):
        assert not _selects(selector, _pod_labels(rendered, other))
    (port,) = service["spec"]["ports"]  # the management listener is not on it
    assert (port["name"], port["port"], port["targetPort"]) == ("http", 80, "http")


def test_management_has_its_own_cluster_internal_service(render_chart: RenderChart) -> None:
    # Even when the main Service is a LoadBalancer, management stays inside the cluster.
    rendered = render_chart(SCENARIOS["everything"])
    assert rendered.get("Service", FULLNAME)["spec"]["type"] == "LoadBalancer"
    management = rendered.get("Service", f"{FULLNAME}-management")
    assert management["spec"]["type"] == "ClusterIP"
    assert management["spec"]["selector"] == rendered.get("Service", FULLNAME)["spec"]["selector"]
    assert management["spec"]["ports"] == [
        {"name": "management", "port": 9091, "targetPort": "management", "protocol": "TCP"}
    ]
    container = rendered.container("proxy")
    assert {"name": "management", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert _config(rendered)["MANAGEMENT_LISTEN_ADDR"] == "0.0.0.0:9090"


def test_the_container_listens_where_the_probes_and_the_service_look(
    render_chart: RenderChart,
) -> None:
    rendered = render_chart(merged(MINIMAL, {"proxy": {"containerPort": 9000}}))
    container = rendered.container("proxy")
    assert container["command"] == ["llm-gateway-proxy"]
    assert container["ports"] == [
        {"name": "http", "containerPort": 9000, "protocol": "TCP"},
        {"name": "management", "containerPort": 8090, "protocol": "TCP"},
    ]
    assert _config(rendered)["LISTEN_ADDR"] == "0.0.0.0:9000"
    assert _config(rendered)["MANAGEMENT_LISTEN_ADDR"] == "0.0.0.0:8090"
    assert http_probes(container) == {
        "startupProbe": ("/live", 9000),
        "livenessProbe": ("/live", 9000),
        "readinessProbe": ("/ready", 9000),
    }
    assert container["envFrom"] == [{"configMapRef": {"name": f"{FULLNAME}-proxy"}}]


def test_values_reach_the_proxy_variables(render_chart: RenderChart) -> None:
    values = merged(MINIMAL, {"proxy": {
        "upstream": {"baseUrl": "http://vllm.ml:8000/v1", "clientTimeout": 900,
                     "connectTimeout": 2.5, "poolSize": 64},
        "maxRequestBodyBytes": 8388608, "corsAllowOrigins": ["https://a.example", "https://b"],
        "management": {"containerPort": 9100}, "maxInFlight": 64, "clientReadTimeout": 7.5,
        "clientKeepAliveTimeout": 650,
        "passthroughPaths": [], "forwardAccountHeaders": ["openai-organization", "openai-project"],
        "redisTimeout": 0.5, "metering": {"streamMaxLen": 5000000, "queueSize": 1000,
                                          "batchSize": 50, "flushInterval": 0.01,
                                          "captureBytes": 4096},
        "shutdownGraceSeconds": 120, "logLevel": "debug",
        "metrics": {"tenantLabel": True, "tenantLimit": 20},
        "cache": {"redisUrl": "redis://cache.example:6379/1", "maxEntryBytes": 65536,
                  "waitSeconds": 5},
        "tracing": {"enabled": True, "endpoint": "http://otel.obs:4318"}},
        "events": {"stream": "gw:usage"}})  # fmt: skip
    assert _config(render_chart(values)) == {
        "LISTEN_ADDR": "0.0.0.0:8080",
        "MANAGEMENT_LISTEN_ADDR": "0.0.0.0:9100",
        "MAX_IN_FLIGHT": "64",
        "CLIENT_READ_TIMEOUT": "7.5",
        "CLIENT_KEEP_ALIVE_TIMEOUT": "650",
        "UPSTREAM_OPENAI_BASE_URL": "http://vllm.ml:8000/v1",
        "HTTP_CLIENT_TIMEOUT": "900",
        "HTTP_CONNECT_TIMEOUT": "2.5",
        "UPSTREAM_POOL_SIZE": "64",
        "PASSTHROUGH_PATHS": "none",
        "FORWARD_ACCOUNT_HEADERS": "openai-organization,openai-project",
        "MAX_REQUEST_BODY_BYTES": "8388608",
        "CORS_ALLOW_ORIGINS": "https://a.example,https://b",
        "REDIS_TIMEOUT": "0.5",
        "EVENTS_STREAM": "gw:usage",
        "EVENTS_STREAM_MAXLEN": "5000000",
        "EVENT_QUEUE_SIZE": "1000",
        "EVENT_BATCH_SIZE": "50",
        "EVENT_FLUSH_INTERVAL": "0.01",
        "METERING_CAPTURE_BYTES": "4096",
        "SHUTDOWN_GRACE_SECONDS": "120",
        "LOG_LEVEL": "debug",
        "AUTH_MODE": "keys",
        "KEY_CACHE_TTL": "2",
        "REQUEST_REDIS_TIMEOUT": "0.1",
        "RATE_LIMIT_FAIL_OPEN": "true",
        "METRICS_TENANT_LABEL": "true",
        "METRICS_TENANT_LIMIT": "20",
        "CACHE_REDIS_URL": "redis://cache.example:6379/1",
        "CACHE_MAX_ENTRY_BYTES": "65536",
        "CACHE_WAIT_SECONDS": "5",
        "OTEL_SDK_DISABLED": "false",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel.obs:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
    }


def test_the_provider_key_comes_only_from_a_secret(render_chart: RenderChart) -> None:
    without = render_chart(MINIMAL).container("proxy")
    assert "UPSTREAM_OPENAI_API_KEY" not in {v["name"] for v in without["env"]}
    with_key = render_chart(merged(MINIMAL, UPSTREAM)).container("proxy")
    assert secret_references(with_key)["UPSTREAM_OPENAI_API_KEY"] == ("openai", "api-key")


def test_pods_outlive_their_shutdown_grace(render_chart: RenderChart) -> None:
    spec = render_chart(MINIMAL).pod_spec("proxy")
    container = spec["containers"][0]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    # preStop 5 + SHUTDOWN_GRACE_SECONDS 30 + event flush max(3 x 2, 5) = 6 + margin 5
    assert spec["terminationGracePeriodSeconds"] == 46
    longer = render_chart(merged(MINIMAL, {"proxy": {"shutdownGraceSeconds": 600}}))
    assert longer.pod_spec("proxy")["terminationGracePeriodSeconds"] == 616
    fixed = render_chart(merged(MINIMAL, {"proxy": {"terminationGracePeriodSeconds": 90}}))
    assert fixed.pod_spec("proxy")["terminationGracePeriodSeconds"] == 90


def test_without_a_pre_stop_sleep_there_is_no_hook(render_chart: RenderChart) -> None:
    rendered = render_chart(merged(MINIMAL, {"proxy": {"preStopSleepSeconds": 0}}))
    assert "lifecycle" not in rendered.container("proxy")


def test_rolling_updates_never_drop_below_the_replica_count(render_chart: RenderChart) -> None:
    deployment = render_chart(MINIMAL).deployment("proxy")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_autoscaling_owns_the_replica_count(render_chart: RenderChart) -> None:
    rendered = render_chart(merged(MINIMAL, HPA))
    deployment = rendered.deployment("proxy")
    assert "replicas" not in deployment["spec"]
    hpa = rendered.one("HorizontalPodAutoscaler", "proxy")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"],
    }  # fmt: skip
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    targets = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    assert targets == {
        "cpu": {"type": "Utilization", "averageUtilization": 70},
        "memory": {"type": "Utilization", "averageUtilization": 80},
    }
    assert render_chart(MINIMAL).find("HorizontalPodAutoscaler", "proxy") == []


def test_the_disruption_budget_covers_the_proxy_pods(render_chart: RenderChart) -> None:
    rendered = render_chart(MINIMAL)
    pdb = rendered.one("PodDisruptionBudget", "proxy")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert (
        pdb["spec"]["selector"]["matchLabels"]
        == rendered.deployment("proxy")["spec"]["selector"]["matchLabels"]
    )
    percent = render_chart(merged(MINIMAL, {"proxy": {"podDisruptionBudget": {
        "minAvailable": "50%", "maxUnavailable": None}}}))  # fmt: skip
    assert percent.one("PodDisruptionBudget", "proxy")["spec"] == {
        "minAvailable": "50%", "selector": pdb["spec"]["selector"],
    }  # fmt: skip
    off = render_chart(merged(MINIMAL, {"proxy": {"podDisruptionBudget": {"enabled": False}}}))
    assert off.find("PodDisruptionBudget", "proxy") == []


def test_replicas_spread_over_nodes(render_chart: RenderChart) -> None:
    rendered = render_chart(MINIMAL)
    (constraint,) = rendered.pod_spec("proxy")["topologySpreadConstraints"]
    assert constraint["topologyKey"] == "kubernetes.io/hostname"
    assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
    assert _selects(constraint["labelSelector"]["matchLabels"], _pod_labels(rendered, "proxy"))
    assert constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "proxy"


def test_the_ingress_routes_to_the_service_without_buffering_streams(
    render_chart: RenderChart,
) -> None:
    rendered = render_chart(merged(MINIMAL, INGRESS))
    ingress = rendered.get("Ingress", FULLNAME)
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "llm.example.com"
    (path,) = rule["http"]["paths"]  # `/` only: never the management listener
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    backend: dict[str, Any] = path["backend"]["service"]
    assert backend == {"name": FULLNAME, "port": {"name": "http"}}
    assert render_chart(MINIMAL).of_kind("Ingress") == []


def test_the_ingress_routes_management_only_when_asked(render_chart: RenderChart) -> None:
    values = merged(MINIMAL, INGRESS, {"ingress": {"management": {"enabled": True}}})
    (rule,) = render_chart(values).get("Ingress", FULLNAME)["spec"]["rules"]
    routes = {p["path"]: (p["pathType"], p["backend"]["service"]) for p in rule["http"]["paths"]}
    assert routes == {
        "/manage": ("Prefix", {"name": f"{FULLNAME}-management", "port": {"name": "management"}}),
        "/": ("Prefix", {"name": FULLNAME, "port": {"name": "http"}}),
    }


def test_an_ingress_without_hosts_routes_every_host(render_chart: RenderChart) -> None:
    rendered = render_chart(merged(MINIMAL, {"ingress": {"enabled": True}}))
    (rule,) = rendered.get("Ingress", FULLNAME)["spec"]["rules"]
    assert "host" not in rule


def test_images_follow_registry_tag_and_digest(render_chart: RenderChart) -> None:
    assert render_chart(MINIMAL).container("proxy")["image"] == "ghcr.io/llm-gateway/proxy:0.1.0"
    digest = "sha256:" + "ab" * 32
    values = merged(MINIMAL, {"image": {"registry": "registry.corp", "tag": "1.2.3"},
                            "proxy": {"image": {"digest": digest}},
                            "collector": {"image": {"tag": "1.2.4"}}})  # fmt: skip
    rendered = render_chart(values)
    assert rendered.container("proxy")["image"] == f"registry.corp/llm-gateway/proxy:1.2.3@{digest}"
    assert rendered.container("collector")["image"] == "registry.corp/llm-gateway/collector:1.2.4"


def test_a_config_change_rolls_the_pods(render_chart: RenderChart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        annotations = render_chart(values).deployment("proxy")["spec"]["template"]["metadata"][
            "annotations"
        ]
        value: str = annotations["checksum/config"]
        return value

    base = checksum(MINIMAL)
    assert checksum(merged(MINIMAL, {"proxy": {"logLevel": "debug"}})) != base
    assert checksum(merged(MINIMAL, {"collector": {"logLevel": "debug"}})) == base
    assert checksum(MINIMAL) == base
