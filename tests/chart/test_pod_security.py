"""Secure pod defaults everywhere, and secrets only ever by reference."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import RenderChart
from tests.chart.kubelet import secret_references
from tests.chart.rendering import merged
from tests.chart.scenarios import MANAGEMENT_TOKEN, MINIMAL, SCENARIOS


def _pods(render_chart: RenderChart, scenario: str) -> list[tuple[str, dict[str, Any]]]:
    rendered = render_chart(SCENARIOS[scenario])
    return [(c, rendered.pod_spec(c)) for c in rendered.components()]


@pytest.mark.parametrize("scenario", ["ci", "everything"])
def test_every_pod_runs_unprivileged(render_chart: RenderChart, scenario: str) -> None:
    for component, pod in _pods(render_chart, scenario):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, component
        assert context["runAsUser"] != 0, component
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, component
        assert pod["automountServiceAccountToken"] is False, component
        assert pod["enableServiceLinks"] is False, component
        assert pod["serviceAccountName"] == "gw-llm-gateway", component
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, component
            assert security["readOnlyRootFilesystem"] is True, component
            assert security["capabilities"]["drop"] == ["ALL"], component
            assert container["resources"]["requests"], component
            assert container["resources"]["limits"]["memory"], component


@pytest.mark.parametrize("scenario", ["ci", "everything"])
def test_every_container_has_a_writable_tmp(render_chart: RenderChart, scenario: str) -> None:
    for component, pod in _pods(render_chart, scenario):
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"], component
        for container in pod["containers"]:
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], component


def test_the_service_account(render_chart: RenderChart) -> None:
    rendered = render_chart(merged(MINIMAL, {"serviceAccount": {"annotations": {"a/b": "c"}}}))
    (account,) = rendered.of_kind("ServiceAccount")
    assert account["metadata"]["name"] == "gw-llm-gateway"
    assert account["metadata"]["annotations"] == {"a/b": "c"}
    assert account["automountServiceAccountToken"] is False
    existing = render_chart(merged(MINIMAL, {"serviceAccount": {"create": False,
                                                              "name": "platform"}}))  # fmt: skip
    assert existing.of_kind("ServiceAccount") == []
    assert existing.pod_spec("proxy")["serviceAccountName"] == "platform"


@pytest.mark.parametrize("scenario", sorted(set(SCENARIOS) - {"ci"}))
def test_the_chart_creates_no_secret_unless_asked_for_development(
    render_chart: RenderChart, scenario: str
) -> None:
    assert render_chart(SCENARIOS[scenario]).of_kind("Secret") == []


def test_development_secrets_are_referenced_and_announced(render_chart: RenderChart) -> None:
    rendered = render_chart(SCENARIOS["ci"])
    (secret,) = rendered.of_kind("Secret")
    name = secret["metadata"]["name"]
    values = rendered.secret_data(name)
    assert values == {"upstream-api-key": "sk-ci-not-a-real-key",
                      "dispatcher-api-key": "00000000-0000-4000-8000-000000000000",
                      "management-token": "ci-not-a-real-management-token"}  # fmt: skip
    proxy = rendered.container("proxy")
    assert secret_references(proxy) == {
        "UPSTREAM_OPENAI_API_KEY": (name, "upstream-api-key"),
        "MANAGEMENT_TOKEN": (name, "management-token"),
    }
    for manifest in rendered:
        if manifest["kind"] != "Secret":
            for value in values.values():
                assert value not in str(manifest), manifest["kind"]
    assert "WARNING: dev.createSecrets=true" in rendered.notes
    assert "DEVELOPMENT ONLY" in rendered.notes
    annotations = rendered.deployment("proxy")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/dev-secrets" in annotations


def test_an_existing_secret_wins_over_a_development_value(render_chart: RenderChart) -> None:
    values = merged(SCENARIOS["ci"], MANAGEMENT_TOKEN,
                    {"proxy": {"upstream": {"existingSecret": "openai"}}})  # fmt: skip
    references = secret_references(render_chart(values).container("proxy"))
    assert references["UPSTREAM_OPENAI_API_KEY"] == ("openai", "api-key")
    assert references["MANAGEMENT_TOKEN"] == ("gateway-manage", "management-token")


def test_network_policies(render_chart: RenderChart) -> None:
    rendered = render_chart(SCENARIOS["everything"])
    policies = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"]
                for p in rendered.of_kind("NetworkPolicy")}  # fmt: skip
    assert set(policies) == {"proxy", "collector", "dispatcher"}
    api, management = policies["proxy"]["ingress"]
    assert api["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert api["from"] == [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}]
    assert management["ports"] == [{"port": "management", "protocol": "TCP"}]
    assert management["from"] == [{"namespaceSelector": {"matchLabels": {"team": "platform"}}}]
    # Without managementIngressFrom, the management port is reachable from no one.
    only_api = render_chart(merged(MINIMAL, {"networkPolicy": {"enabled": True}}))
    (rule,) = only_api.one("NetworkPolicy", "proxy")["spec"]["ingress"]
    assert rule == {"ports": [{"port": "http", "protocol": "TCP"}]}
    assert policies["collector"]["ingress"] == []
    ci = render_chart(SCENARIOS["ci"])
    (redis,) = [p for p in ci.of_kind("NetworkPolicy")
                if p["metadata"]["labels"]["app.kubernetes.io/component"] == "redis"]  # fmt: skip
    allowed = redis["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed == {"app.kubernetes.io/name": "llm-gateway", "app.kubernetes.io/instance": "gw"}
