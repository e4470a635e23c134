"""Price overrides (proxy.prices): the list becomes the file PRICES_FILE names, mounted read-only
from a ConfigMap of its own; the proxy's own loader accepts the rendered file and gets the
entries back in their order; the schema mirrors the loader's struct."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import helm_python as helm
import msgspec
import pytest

from llm_gateway_proxy.prices import PriceOverride, _PricesFile, load_prices_file
from tests.chart.conftest import RenderChart
from tests.chart.rendering import CHART_DIR, Rendered, merged
from tests.chart.scenarios import MINIMAL, PRICES, SCENARIOS

PROXY_CONFIG = "gw-llm-gateway-proxy"
PRICES_CONFIG = "gw-llm-gateway-proxy-prices"
PRICES_DIR = "/etc/llm-gateway/prices"
SCHEMA: dict[str, Any] = json.loads((CHART_DIR / "values.schema.json").read_text())


@pytest.fixture(scope="module")
def rendered(render_chart: RenderChart) -> Rendered:
    return render_chart(SCENARIOS["prices"])


def _prices_yaml(rendered: Rendered) -> str:
    data: dict[str, str] = rendered.get("ConfigMap", PRICES_CONFIG)["data"]
    assert list(data) == ["prices.yaml"]
    return data["prices.yaml"]


def _prices_volume(rendered: Rendered) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The proxy's prices volume and its mount, or None for each that is absent."""
    volumes = {v["name"]: v for v in rendered.pod_spec("proxy")["volumes"]}
    mounts = {m["name"]: m for m in rendered.container("proxy")["volumeMounts"]}
    return volumes.get("prices"), mounts.get("prices")


def _load(rendered: Rendered, tmp_path: Path) -> tuple[PriceOverride, ...]:
    path = tmp_path / "prices.yaml"
    path.write_text(_prices_yaml(rendered))
    return load_prices_file(str(path))


def test_the_prices_are_a_read_only_file_where_prices_file_points(rendered: Rendered) -> None:
    volume, mount = _prices_volume(rendered)
    assert volume == {
        "name": "prices",
        "configMap": {"name": PRICES_CONFIG, "items": [{"key": "prices.yaml",
                                                         "path": "prices.yaml"}],
                      "defaultMode": 0o444},
    }  # fmt: skip
    assert mount == {"name": "prices", "mountPath": PRICES_DIR, "readOnly": True}
    config = rendered.get("ConfigMap", PROXY_CONFIG)["data"]
    assert config["PRICES_FILE"] == f"{PRICES_DIR}/prices.yaml"
    # Not a key of the proxy's own ConfigMap: envFrom would make the file a variable.
    assert "prices.yaml" not in config
    labels = rendered.get("ConfigMap", PRICES_CONFIG)["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "proxy"


def test_the_proxy_loads_the_rendered_prices_in_order(rendered: Rendered, tmp_path: Path) -> None:
    entries = _load(rendered, tmp_path)
    assert entries == tuple(msgspec.convert(PRICES["proxy"], _PricesFile).prices)
    assert [(e.provider, e.model) for e in entries] == [
        ("azure-eu", "gpt-4o-*"), ("anthropic", "claude-sonnet-*"), ("openai", "*"),
    ]  # fmt: skip
    anthropic = entries[1]
    assert (anthropic.cached_input_per_mtok, anthropic.cache_write_per_mtok) == (
        Decimal("0.3"), Decimal("3.75"),
    )  # fmt: skip
    assert entries[0].cache_write_per_mtok is None  # priced at input_per_mtok


def test_what_yaml_would_misread_reaches_the_proxy_as_written(
    render_chart: RenderChart, tmp_path: Path
) -> None:
    """Names that look like booleans, numbers or null in YAML 1.1 (the proxy's parser), and
    large, small and fractional prices, survive Helm's toYaml with their exact value."""
    prices = [
        {"provider": "on", "model": "1e3", "input_per_mtok": 1000000, "output_per_mtok": 0.000001},
        {"provider": "yes", "model": "~", "input_per_mtok": 0.1, "cached_input_per_mtok": 0,
         "cache_write_per_mtok": 12345.6789, "output_per_mtok": 0.2},
        {"provider": "null", "model": "0123"},
    ]  # fmt: skip
    entries = _load(render_chart(merged(MINIMAL, {"proxy": {"prices": prices}})), tmp_path)
    assert entries == tuple(msgspec.convert({"prices": prices}, _PricesFile).prices)
    assert entries[0].input_per_mtok == Decimal(1000000)
    assert entries[0].output_per_mtok == Decimal("0.000001")
    assert entries[1].input_per_mtok == Decimal("0.1")


def test_the_schema_mirrors_the_proxy_struct() -> None:
    """Every field of PriceOverride, and only those, its required fields, every price a number
    >= 0: a field added to the proxy and not to the schema cannot be set (the schema refuses
    it), one removed would stop the proxy."""
    proxy = SCHEMA["properties"]["proxy"]["properties"]
    assert proxy["prices"] == {"type": "array", "items": {"$ref": "#/definitions/priceOverride"}}
    node = SCHEMA["definitions"]["priceOverride"]
    fields = msgspec.structs.fields(PriceOverride)
    assert node["additionalProperties"] is False
    assert set(node["properties"]) == {f.encode_name for f in fields}
    assert set(node["required"]) == {f.encode_name for f in fields if f.required}
    for field in fields:
        if field.encode_name.endswith("_per_mtok"):
            assert node["properties"][field.encode_name] == {"type": "number", "minimum": 0}
    assert {f.encode_name for f in msgspec.structs.fields(_PricesFile)} == {"prices"}


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        (
            {"provider": "openai", "input_per_mtok": 1, "output_per_mtok": 2, "per_mtok": 3},
            "additional properties 'per_mtok'",
        ),
        ({"provider": "openai", "output_per_mtok": -0.5}, "minimum"),
        ({"provider": "openai", "cache_write_per_mtok": "1.25"}, "want number"),
        ({"model": "gpt-4o"}, "missing property 'provider'"),
    ],
    ids=["unknown-field", "negative", "string", "no-provider"],
)
def test_a_bad_entry_is_refused_by_the_schema(
    render_chart: RenderChart, entry: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        render_chart(merged(MINIMAL, {"proxy": {"prices": [entry]}}))


@pytest.mark.parametrize("prices", [[], None], ids=["empty", "null"])
def test_without_prices_the_proxy_is_configured_as_before(
    render_chart: RenderChart, prices: list[Any] | None
) -> None:
    """`[]` is the default; null is what `prices:` with every line below it commented out is."""
    rendered = render_chart(merged(MINIMAL, {"proxy": {"prices": prices}}))
    config = rendered.get("ConfigMap", PROXY_CONFIG)["data"]
    assert "PRICES_FILE" not in config
    assert [m["metadata"]["name"] for m in rendered.of_kind("ConfigMap")] == [
        "gw-llm-gateway-collector", PROXY_CONFIG,
    ]  # fmt: skip
    assert _prices_volume(rendered) == (None, None)


def test_changed_prices_roll_the_proxy_pods(render_chart: RenderChart, rendered: Rendered) -> None:
    def checksum(rendered: Rendered) -> str:
        value: str = rendered.deployment("proxy")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
        return value

    discounted = merged(SCENARIOS["prices"])
    discounted["proxy"]["prices"][0]["input_per_mtok"] = 2
    assert checksum(render_chart(discounted)) != checksum(rendered)
    assert checksum(render_chart(SCENARIOS["models"])) != checksum(rendered)
