"""The chart and the services agree on configuration, checked against the services' own
settings code: every variable a service reads can be set from values, the chart sets nothing a
service does not read, every rendered environment is accepted, and values.yaml's defaults are
the services' defaults (so installing the chart changes no behaviour by accident)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llm_gateway_collector.settings import CollectorSettings
from llm_gateway_common.config import ConfigError
from llm_gateway_dispatcher.settings import DispatcherSettings
from llm_gateway_proxy.settings import ProxySettings
from tests.chart.conftest import RenderChart
from tests.chart.kubelet import container_env, mount_volumes, secret_references
from tests.chart.rendering import Rendered, merged
from tests.chart.scenarios import FILE_DISPATCHER, MINIMAL, SCENARIOS

SETTINGS: dict[str, Callable[[Mapping[str, str]], msgspec.Struct]] = {
    "proxy": ProxySettings.from_env,
    "collector": CollectorSettings.from_env,
    "dispatcher": DispatcherSettings.from_env,
}
# Set by the kubelet in every pod (the services default their consumer name to it).
KUBELET_SETS = {"HOSTNAME"}
# Set by the chart for Kubernetes itself: $(REDIS_PASSWORD) is expanded into REDIS_URL.
CHART_HELPERS = {"REDIS_PASSWORD"}
# Where the chart differs from an unconfigured service on purpose.
DIFFERS = {"redis_url", "consumer"}

# What the tests' Secrets hold, by the variable that reads them: values the services accept.
SECRET_VALUES = {
    "UPSTREAM_OPENAI_API_KEY": "sk-test",
    "DATABASE_URL": "postgresql://ledger:pw@db.example:5432/ledger",
    "DISPATCHER_API_KEY": str(uuid.UUID(int=1)),
    "REDIS_PASSWORD": "pw",
    "REDIS_URL": "redis://:pw@redis.example:6379/0",
    "MANAGEMENT_TOKEN": "mt-test",
    # proxy.providerKeys of scenarios.MODELS
    "OPENAI_API_KEY": "sk-openai-test",
    "AZURE_EU_API_KEY": "azure-test",
    "ANTHROPIC_API_KEY": "sk-ant-test",
}
# What the tests' Secrets mounted as files hold (the keys file of scenarios.KEYS_FILE).
SECRET_FILES = {("gateway-keys", "keys.json"): "[]"}


class ReadRecorder(dict[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


def _environment(rendered: Rendered, component: str, root: Path | None = None) -> dict[str, str]:
    """The container's environment; with `root`, its volumes mounted there, so the files it
    names (e.g. MODELS_FILE, read at start-up) exist and the paths are this machine's."""
    container = rendered.container(component)
    secrets = {ref: SECRET_VALUES[name] for name, ref in secret_references(container).items()}
    env = container_env(rendered, container, pod_name=f"{component}-0", secrets=secrets)
    if root is not None:
        mount_volumes(rendered, component, env, {**SECRET_FILES, **secrets}, root)
    return env


def _everything(render_chart: RenderChart, root: Path) -> list[tuple[str, str, dict[str, str]]]:
    """(scenario, component, environment) for every component of every scenario."""
    found = []
    for name, values in sorted(SCENARIOS.items()):
        rendered = render_chart(values)
        for component in rendered.components():
            if component in SETTINGS:
                env = _environment(rendered, component, root / name / component)
                found.append((name, component, env))
    return found


def test_every_rendered_environment_is_accepted(render_chart: RenderChart, tmp_path: Path) -> None:
    for scenario, component, env in _everything(render_chart, tmp_path):
        try:
            SETTINGS[component](env)
        except ConfigError as exc:
            pytest.fail(f"{scenario}: the {component} refuses its rendered environment: {exc}")


@pytest.mark.parametrize("component", sorted(SETTINGS))
def test_the_chart_sets_exactly_what_the_service_reads(
    render_chart: RenderChart, component: str, tmp_path: Path
) -> None:
    read: set[str] = set()
    set_by_chart: set[str] = set()
    for _, each, env in _everything(render_chart, tmp_path):
        if each != component:
            continue
        recorder = ReadRecorder(env)
        SETTINGS[component](recorder)
        read |= recorder.read
        set_by_chart |= set(env)
    assert read - KUBELET_SETS - set_by_chart == set(), "read by the service, not settable"
    assert set_by_chart - CHART_HELPERS - KUBELET_SETS - read == set(), "set, never read"


@pytest.mark.parametrize("component", sorted(SETTINGS))
def test_the_defaults_are_the_services_defaults(render_chart: RenderChart, component: str) -> None:
    """Compared with the service given only the secrets the chart passes it (the proxy does not
    start without a management token or a keys file, and neither has a default)."""
    rendered = render_chart(merged(MINIMAL, FILE_DISPATCHER))
    env = _environment(rendered, component)
    from_chart = msgspec.structs.asdict(SETTINGS[component](env))
    secrets = secret_references(rendered.container(component))
    unconfigured = msgspec.structs.asdict(
        SETTINGS[component]({name: env[name] for name in secrets})
    )
    for field in DIFFERS:
        from_chart.pop(field, None)
        unconfigured.pop(field, None)
    assert from_chart == unconfigured
