"""Several providers (proxy.models, proxy.providerKeys): the model table becomes the file
MODELS_FILE names, mounted read-only from a ConfigMap of its own; each provider key comes from its
Secret into the variable the table's `api_key_env` names; the proxy's own loader accepts the
rendered file; the schema mirrors the loader's structs."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llm_gateway_proxy.modelconfig import (
    Backoff,
    Cooldown,
    ModelRoute,
    ModelsFile,
    Provider,
    RouteCache,
    Routing,
    Target,
    Timeouts,
    load_models_file,
)
from tests.chart.conftest import RenderChart
from tests.chart.kubelet import secret_references
from tests.chart.rendering import CHART_DIR, Rendered, merged
from tests.chart.scenarios import MINIMAL, MODELS, SCENARIOS

PROXY_CONFIG = "gw-llm-gateway-proxy"
MODELS_CONFIG = "gw-llm-gateway-proxy-models"
MODELS_DIR = "/etc/llm-gateway/models"
KEYS = {"OPENAI_API_KEY": "sk-o", "AZURE_EU_API_KEY": "az", "ANTHROPIC_API_KEY": "sk-ant"}
SCHEMA: dict[str, Any] = json.loads((CHART_DIR / "values.schema.json").read_text())
MIRRORED = {"modelsFile": ModelsFile, "modelProvider": Provider, "modelTimeouts": Timeouts,
            "modelRoute": ModelRoute, "modelTarget": Target, "modelBackoff": Backoff,
            "modelCooldown": Cooldown, "modelRouting": Routing,
            "modelCache": RouteCache}  # fmt: skip


@pytest.fixture(scope="module")
def rendered(render_chart: RenderChart) -> Rendered:
    return render_chart(SCENARIOS["models"])


def _models_yaml(rendered: Rendered) -> str:
    data: dict[str, str] = rendered.get("ConfigMap", MODELS_CONFIG)["data"]
    assert list(data) == ["models.yaml"]
    return data["models.yaml"]


def _models_volume(rendered: Rendered) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The proxy's models volume and its mount, or None for each that is absent."""
    volumes = {v["name"]: v for v in rendered.pod_spec("proxy")["volumes"]}
    mounts = {m["name"]: m for m in rendered.container("proxy")["volumeMounts"]}
    return volumes.get("models"), mounts.get("models")


def test_the_table_is_a_read_only_file_where_models_file_points(rendered: Rendered) -> None:
    volume, mount = _models_volume(rendered)
    assert volume == {
        "name": "models",
        "configMap": {"name": MODELS_CONFIG, "items": [{"key": "models.yaml",
                                                         "path": "models.yaml"}],
                      "defaultMode": 0o444},
    }  # fmt: skip
    assert mount == {"name": "models", "mountPath": MODELS_DIR, "readOnly": True}
    config = rendered.get("ConfigMap", PROXY_CONFIG)["data"]
    assert config["MODELS_FILE"] == f"{MODELS_DIR}/models.yaml"
    # Not a key of the proxy's own ConfigMap: envFrom would make the file a variable.
    assert "models.yaml" not in config
    labels = rendered.get("ConfigMap", MODELS_CONFIG)["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "proxy"


def test_each_provider_key_comes_from_its_secret(rendered: Rendered) -> None:
    references = secret_references(rendered.container("proxy"))
    assert {name: references[name] for name in KEYS} == {
        "OPENAI_API_KEY": ("openai", "api-key"),
        "AZURE_EU_API_KEY": ("azure-eu", "api-key"),
        "ANTHROPIC_API_KEY": ("anthropic", "api-key"),
    }
    assert "UPSTREAM_OPENAI_API_KEY" not in references


def test_the_proxy_loads_the_rendered_table(rendered: Rendered, tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(_models_yaml(rendered))
    table = load_models_file(str(path), KEYS)
    assert table.api_keys == {"openai": "sk-o", "azure-eu": "az", "anthropic": "sk-ant"}
    assert msgspec.yaml.decode(path.read_bytes()) == MODELS["proxy"]["models"]
    gpt = table.route("gpt-4o")
    assert gpt is not None
    assert [(t.provider, t.weight) for t in gpt.targets] == [("openai", 3), ("azure-eu", 1)]
    assert gpt.fallbacks == ["claude-sonnet"]
    assert table.route("claude-3-5-haiku") == table.file.models["claude-*"]
    assert table.file.providers["azure-eu"].api_version == "2024-10-21"


def test_what_yaml_would_misread_reaches_the_proxy_as_written(
    render_chart: RenderChart, tmp_path: Path
) -> None:
    """Names and values that look like booleans, numbers, dates or null in YAML 1.1 (the
    proxy's parser), and large and fractional numbers, survive Helm's toYaml."""
    table = {
        "providers": {"on": {"type": "openai", "base_url": "http://127.0.0.1:9/v1",
                             "headers": {"X-Flag": "true", "X-Id": "0123", "X-Day": "2024-10-21",
                                         "X-None": "null"},
                             "timeouts": {"connect": 0.5, "read": 1000000, "first_token": 0.001}}},
        "models": {"yes": {"targets": [{"provider": "on", "model": "1e3", "weight": 0.25}],
                           "fallbacks": ["no"], "deadline": 86400},
                   "no": {"targets": [{"provider": "on", "model": "~"}]},
                   "*": {"targets": [{"provider": "on"}]}},
        "routing": {"retries": 0, "backoff": {"base": 0.05, "max": 120},
                    "cooldown": {"failures": 1, "seconds": 0}},
        "default_provider": "on",
    }  # fmt: skip
    path = tmp_path / "models.yaml"
    path.write_text(_models_yaml(render_chart(merged(MINIMAL, {"proxy": {"models": table}}))))
    loaded = load_models_file(str(path), {})
    assert msgspec.to_builtins(loaded.file) == msgspec.to_builtins(
        msgspec.convert(table, ModelsFile)
    )


@pytest.mark.parametrize("table", [{}, None], ids=["empty", "null"])
def test_without_a_table_the_proxy_is_configured_as_before(
    render_chart: RenderChart, table: dict[str, Any] | None
) -> None:
    """`{}` is the default; null is what `models:` with every line below it commented out is."""
    rendered = render_chart(merged(MINIMAL, {"proxy": {"models": table}}))
    config = rendered.get("ConfigMap", PROXY_CONFIG)["data"]
    assert "MODELS_FILE" not in config
    assert config["UPSTREAM_OPENAI_BASE_URL"] == "https://api.openai.com/v1"
    assert [m["metadata"]["name"] for m in rendered.of_kind("ConfigMap")] == [
        "gw-llm-gateway-collector", PROXY_CONFIG,
    ]  # fmt: skip
    assert _models_volume(rendered) == (None, None)


def test_a_changed_table_rolls_the_proxy_pods(
    render_chart: RenderChart, rendered: Rendered
) -> None:
    def checksum(rendered: Rendered) -> str:
        value: str = rendered.deployment("proxy")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
        return value

    reweighted = merged(SCENARIOS["models"])
    reweighted["proxy"]["models"]["models"]["gpt-4o"]["targets"][0]["weight"] = 2
    assert checksum(render_chart(reweighted)) != checksum(rendered)
    assert checksum(render_chart(MINIMAL)) != checksum(rendered)


def test_the_schema_mirrors_the_proxy_structs() -> None:
    """Every field of the loader's structs, and only those, with their choices and required
    fields: a field added to the proxy and not to the schema cannot be set (the schema refuses
    it), one removed would stop the proxy."""
    for definition, struct in MIRRORED.items():
        node = SCHEMA["definitions"][definition]
        fields = msgspec.structs.fields(struct)
        assert set(node["properties"]) == {f.encode_name for f in fields}, definition
        required = {f.encode_name for f in fields if f.required}
        # The table as a whole may be empty ({}: no MODELS_FILE); any key then needs them all.
        needed = {name for names in node.get("dependencies", {}).values() for name in names}
        assert set(node.get("required", [])) | needed == required, definition
        for field in fields:
            if typing.get_origin(field.type) is typing.Literal:
                choices = node["properties"][field.encode_name]["enum"]
                assert choices == list(typing.get_args(field.type)), (definition, field.name)


def test_notes_send_the_first_request_to_a_model_of_the_table(rendered: Rendered) -> None:
    notes = rendered.notes
    assert '"model": "claude-sonnet"' in notes  # the first exact name: claude-* is a pattern
    assert "The models of proxy.models (MODELS_FILE): claude-*, claude-sonnet, gpt-4o." in notes
    assert "no provider key is configured" not in notes  # proxy.upstream is not used
