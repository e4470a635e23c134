"""Every manifest of every scenario validates, strictly (no unknown field anywhere), against
the Kubernetes OpenAPI schemas of the oldest version the chart supports (Chart.yaml kubeVersion)
and of the version Helm renders for by default. Offline: kubernetes-validate ships the schemas."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import RenderChart
from tests.chart.rendering import CHART_DIR
from tests.chart.scenarios import SCENARIOS

OLDEST = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["kubeVersion"]
VERSIONS = ["1.25.0", "1.36.0"]


def test_the_oldest_validated_version_is_the_charts_minimum() -> None:
    assert f">={VERSIONS[0]}-0" == OLDEST


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_manifests_are_valid_kubernetes_objects(
    render_chart: RenderChart, scenario: str, version: str
) -> None:
    rendered = render_chart(SCENARIOS[scenario])
    assert rendered.manifests
    for manifest in rendered:
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{scenario}: {where} is invalid for Kubernetes {version}: {path}: "
                        f"{exc.message}")  # fmt: skip


def test_every_scenario_renders_what_it_configures(render_chart: RenderChart) -> None:
    """The scenarios above really exercise the optional objects (so their validation counts)."""
    kinds = {m["kind"] for m in render_chart(SCENARIOS["everything"])}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "Ingress", "NetworkPolicy"} <= kinds  # fmt: skip
    ci_kinds = {m["kind"] for m in render_chart(SCENARIOS["ci"])}
    assert {"Secret", "PersistentVolumeClaim", "NetworkPolicy"} <= ci_kinds
