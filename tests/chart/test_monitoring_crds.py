"""The chart's ServiceMonitors and PrometheusRule: what they scrape (each service's operations
port, /metrics, never the proxy's API port), their configurable labels, and their validity by the
Prometheus Operator's CRDs.

kubernetes-validate does not know these kinds, and no package registry reachable here ships the
CRDs' YAML (their openAPIV3Schema) for `jsonschema`. The npm package
@kubernetes-models/prometheus-operator ships validators generated from that schema (Ajv, a JSON
Schema validator, compiled): types, required fields, enums and patterns such as the duration of
`interval` or `for`. `make deps` installs it under .tools/crd-validators (pinned by checksum);
node runs it here."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.chart.conftest import RenderChart
from tests.chart.rendering import CHART_DIR, Manifest, Values, merged
from tests.chart.scenarios import FILE_DISPATCHER, MINIMAL

VALIDATORS = CHART_DIR.parents[1] / ".tools" / "crd-validators"
MODELS = "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1"

MONITORING: Values = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}, "interval": "15s",
                           "scrapeTimeout": "5s"},
        "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
        "dashboard": {"enabled": True},
    }
}  # fmt: skip
EVERY_SERVICE = merged(MINIMAL, FILE_DISPATCHER, MONITORING)

# Reads [[kind, object], ...] on stdin; prints one error message (or "") per object.
VALIDATE = f"""
import {{ ServiceMonitor }} from "{MODELS}/ServiceMonitor";
import {{ PrometheusRule }} from "{MODELS}/PrometheusRule";
const kinds = {{ ServiceMonitor, PrometheusRule }};
let input = "";
for await (const chunk of process.stdin) input += chunk;
const errors = JSON.parse(input).map(([kind, object]) => {{
  try {{ new kinds[kind](object).validate(); return ""; }} catch (error) {{ return error.message; }}
}});
console.log(JSON.stringify(errors));
"""


def _crd_errors(manifests: list[Manifest]) -> list[str]:
    """The CRD schema's complaint about each manifest, "" when it is valid."""
    node = shutil.which("node")
    assert node, "node is missing: `make deps` installs it"
    installed = VALIDATORS / "node_modules" / "@kubernetes-models" / "prometheus-operator"
    assert installed.is_dir(), "run `make deps` (it installs .tools/crd-validators)"
    done = subprocess.run(
        [node, "--input-type=module", "--eval", VALIDATE],
        input=json.dumps([[m["kind"], m] for m in manifests]),
        cwd=VALIDATORS, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    errors: list[str] = json.loads(done.stdout)
    return errors


def _monitoring(render_chart: RenderChart, values: Values) -> list[Manifest]:
    rendered = render_chart(values)
    return rendered.of_kind("ServiceMonitor") + rendered.of_kind("PrometheusRule")


def test_nothing_needs_the_operator_by_default(render_chart: RenderChart) -> None:
    assert _monitoring(render_chart, merged(MINIMAL, FILE_DISPATCHER)) == []


def test_the_custom_resources_meet_the_crds_schemas(render_chart: RenderChart) -> None:
    manifests = _monitoring(render_chart, EVERY_SERVICE)
    assert sorted(m["kind"] for m in manifests) == ["PrometheusRule"] + ["ServiceMonitor"] * 3
    errors = {f"{m['kind']}/{m['metadata']['name']}": e for m, e in
              zip(manifests, _crd_errors(manifests), strict=True)}  # fmt: skip
    assert errors == {name: "" for name in errors}


@pytest.mark.parametrize(
    ("kind", "change", "complaint"),
    [
        ("ServiceMonitor", {"interval": "30"}, "interval must match pattern"),
        ("ServiceMonitor", {"scheme": "tcp"}, "scheme must be equal to one of the allowed values"),
        ("PrometheusRule", {"for": "10 minutes"}, "for must match pattern"),
    ],
)
def test_the_validators_do_refuse_what_the_crds_refuse(
    render_chart: RenderChart, kind: str, change: dict[str, Any], complaint: str
) -> None:
    """So that an empty complaint above means something."""
    (manifest, *_) = [m for m in _monitoring(render_chart, EVERY_SERVICE) if m["kind"] == kind]
    if kind == "ServiceMonitor":
        manifest["spec"]["endpoints"][0].update(change)
    else:
        manifest["spec"]["groups"][0]["rules"][0].update(change)
    (error,) = _crd_errors([manifest])
    assert complaint in error


def test_each_service_is_scraped_on_its_operations_port(render_chart: RenderChart) -> None:
    rendered = render_chart(EVERY_SERVICE)
    for component, service_name, port in [
        ("proxy", "gw-llm-gateway-management", "management"),
        ("collector", "gw-llm-gateway-collector", "http"),
        ("dispatcher", "gw-llm-gateway-dispatcher", "http"),
    ]:
        monitor = rendered.one("ServiceMonitor", component)
        assert monitor["metadata"]["labels"]["release"] == "kps"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint == {"port": port, "path": "/metrics", "scheme": "http",
                            "interval": "15s", "scrapeTimeout": "5s"}  # fmt: skip
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ai"]}
        selector = monitor["spec"]["selector"]["matchLabels"]
        # The Services it selects: the named port exists on exactly one of them.
        services = [s for s in rendered.of_kind("Service")
                    if selector.items() <= s["metadata"]["labels"].items()]  # fmt: skip
        with_port = [s["metadata"]["name"] for s in services
                     if port in {p["name"] for p in s["spec"]["ports"]}]  # fmt: skip
        assert with_port == [service_name]
        (service,) = [s for s in services if s["metadata"]["name"] == service_name]
        assert service["spec"]["type"] == "ClusterIP"
        assert selector.items() <= service["spec"]["selector"].items()


def test_the_api_port_and_the_ingress_never_reach_the_metrics(render_chart: RenderChart) -> None:
    values = merged(EVERY_SERVICE, {"ingress": {"enabled": True, "hosts": ["llm.example.com"]}})
    rendered = render_chart(values)
    (api_port,) = rendered.get("Service", "gw-llm-gateway")["spec"]["ports"]
    assert api_port["targetPort"] == "http"
    backends = [path["backend"]["service"] for rule in rendered.one("Ingress", "proxy")["spec"][
        "rules"] for path in rule["http"]["paths"]]  # fmt: skip
    assert backends == [{"name": "gw-llm-gateway", "port": {"name": "http"}}]


def test_scrape_settings_may_be_left_to_prometheus(render_chart: RenderChart) -> None:
    unset = {"interval": "", "scrapeTimeout": ""}
    values = merged(EVERY_SERVICE, {"metrics": {"serviceMonitor": unset}})
    for monitor in render_chart(values).of_kind("ServiceMonitor"):
        assert monitor["spec"]["endpoints"] == [{"port": monitor["spec"]["endpoints"][0]["port"],
                                                 "path": "/metrics", "scheme": "http"}]  # fmt: skip


def test_prometheus_may_be_let_through_the_network_policies(render_chart: RenderChart) -> None:
    prometheus = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}]
    policy = {"enabled": True, "metricsIngressFrom": prometheus}
    values = merged(EVERY_SERVICE, {"networkPolicy": policy})
    rendered = render_chart(values)
    proxy_rules = rendered.one("NetworkPolicy", "proxy")["spec"]["ingress"]
    assert {"ports": [{"port": "management", "protocol": "TCP"}], "from": prometheus} in proxy_rules
    for component in ("collector", "dispatcher"):
        (rule,) = rendered.one("NetworkPolicy", component)["spec"]["ingress"]
        assert rule == {"ports": [{"port": "http", "protocol": "TCP"}], "from": prometheus}


def test_a_file_outside_the_chart_is_not_needed(render_chart: RenderChart) -> None:
    """The rules and the dashboard are read from the chart itself (.Files), so a packaged chart
    carries them."""
    assert (CHART_DIR / "files" / "alerts.yaml").is_file()
    assert (CHART_DIR / "files" / "dashboard.json").is_file()
    ignored = (CHART_DIR / ".helmignore").read_text().split()
    assert not any(Path("files/alerts.yaml").match(pattern) for pattern in ignored)


def test_notes_say_where_the_metrics_are(render_chart: RenderChart) -> None:
    notes = render_chart(EVERY_SERVICE).notes
    assert "port-forward service/gw-llm-gateway-management 18090:8090" in notes
    assert "curl -sS http://127.0.0.1:18090/metrics" in notes
    assert "dispatcher: service/gw-llm-gateway-dispatcher:8082/metrics" in notes
    assert "PrometheusRule gw-llm-gateway" in notes
    assert "Installed:" not in render_chart(MINIMAL).notes


@pytest.mark.parametrize("version", ["1.25.0", "1.36.0"])
def test_the_other_objects_are_valid_kubernetes_objects(
    render_chart: RenderChart, version: str
) -> None:
    """The Services and the dashboard's ConfigMap, as test_kubernetes_schemas.py checks the rest
    (its scenarios do not turn monitoring on)."""
    values = merged(EVERY_SERVICE, {"networkPolicy": {"enabled": True, "metricsIngressFrom": [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]}})  # fmt: skip
    for manifest in render_chart(values):
        if manifest["apiVersion"] != "monitoring.coreos.com/v1":
            kubernetes_validate.validate(manifest, version, strict=True)
