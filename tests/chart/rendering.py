"""The chart as Helm itself renders and lints it: helm-python-sdk embeds Helm's Go SDK, so the
templates, `fail`, and values.schema.json behave exactly as in `helm install`; no cluster and no
network are involved."""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "llm-gateway"
RELEASE = "gw"
NAMESPACE = "ai"
COMPONENT_LABEL = "app.kubernetes.io/component"

Manifest = dict[str, Any]
Values = dict[str, Any]


def chart_values_file(name: str) -> Values:
    """A values file shipped with the chart (values.yaml, values-ci.yaml)."""
    loaded: Values = yaml.safe_load((CHART_DIR / name).read_text())
    return loaded


def merged(*layers: Mapping[str, Any]) -> Values:
    """Values layered as `helm -f a -f b` would: maps merge recursively, the rest is replaced."""
    result: Values = {}
    for layer in layers:
        _merge_into(result, layer)
    return result


def _merge_into(target: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


@dataclass(frozen=True)
class Rendered:
    """One release's manifests, parsed, and its NOTES.txt."""

    manifests: list[Manifest]
    notes: str

    def __iter__(self) -> Iterator[Manifest]:
        return iter(self.manifests)

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest:
        for manifest in self.of_kind(kind):
            if manifest["metadata"]["name"] == name:
                return manifest
        raise AssertionError(f"no {kind} {name!r} rendered")

    def find(self, kind: str, component: str) -> list[Manifest]:
        """The manifests of one kind that belong to a component (its label)."""
        return [
            m for m in self.of_kind(kind)
            if m["metadata"].get("labels", {}).get(COMPONENT_LABEL) == component
        ]  # fmt: skip

    def one(self, kind: str, component: str) -> Manifest:
        found = self.find(kind, component)
        assert len(found) == 1, f"expected one {kind} for {component}, got {len(found)}"
        return found[0]

    def deployment(self, component: str) -> Manifest:
        return self.one("Deployment", component)

    def container(self, component: str) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.deployment(component)["spec"]["template"]["spec"][
            "containers"
        ]
        assert len(containers) == 1
        return containers[0]

    def pod_spec(self, component: str) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment(component)["spec"]["template"]["spec"]
        return spec

    def components(self) -> list[str]:
        """The components that run a Deployment, e.g. ["collector", "proxy"]."""
        return sorted(m["metadata"]["labels"][COMPONENT_LABEL] for m in self.of_kind("Deployment"))

    def secret_data(self, name: str) -> dict[str, str]:
        """A rendered Secret's data, decoded."""
        data: dict[str, str] = self.get("Secret", name)["data"]
        return {key: base64.b64decode(value).decode() for key, value in data.items()}


def load_chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def render(chart: helm.Chart, values: Mapping[str, Any]) -> Rendered:
    """Render as `helm install gw --namespace ai` would (raises helm_python.HelmError)."""
    files = chart.render(dict(values), name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests: list[Manifest] = []
    notes = ""
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(manifests, notes)


def lint(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """`helm lint --strict` of the chart directory with these values."""
    return helm.lint(CHART_DIR, None if values is None else dict(values), strict=True,
                     namespace=NAMESPACE)  # fmt: skip
