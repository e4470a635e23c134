"""values.schema.json: Helm refuses unknown and mistyped values before rendering anything, and
every value in values.yaml is documented (`# --`) and known to the schema."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest

from tests.chart.conftest import RenderChart
from tests.chart.rendering import CHART_DIR, Values, chart_values_file, merged
from tests.chart.scenarios import MINIMAL, MODELS, SCENARIOS

SCHEMA: dict[str, Any] = json.loads((CHART_DIR / "values.schema.json").read_text())

# Kubernetes API objects the chart passes through verbatim: open here, validated strictly as
# part of the rendered manifests (test_kubernetes_schemas.py) and by the API server.
PASSED_THROUGH = {
    "/properties/global",
    "/definitions/affinity/properties/nodeAffinity",
    "/definitions/affinity/properties/podAffinity",
    "/definitions/affinity/properties/podAntiAffinity",
    "/definitions/envVar/properties/valueFrom",
    "/definitions/volume",
    "/properties/proxy/properties/autoscaling/properties/behavior",
    "/properties/networkPolicy/properties/proxyIngressFrom/items",
    "/properties/networkPolicy/properties/managementIngressFrom/items",
    "/properties/networkPolicy/properties/metricsIngressFrom/items",
}


def _table(**changes: dict[str, Any]) -> Values:
    """values.yaml's model table example (scenarios.MODELS) with some of it changed."""
    return merged(MODELS, {"proxy": {"models": changes}})


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenarios_meet_the_schema(chart: helm.Chart, name: str) -> None:
    chart.validate_schema(SCENARIOS[name])


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"proxy": {"replicas": 2}}, "additional properties 'replicas' not allowed"),
        ({"proxy": {"upstream": {"apiKey": "sk-x"}}}, "additional properties 'apiKey'"),
        ({"redis": {"password": "hunter2"}}, "additional properties 'password'"),
        ({"redis": {"dev": {"image": {"name": "r"}}}}, "additional properties 'name'"),
        ({"collector": {"postgres": {"url": "postgresql://x"}}}, "additional properties 'url'"),
        ({"podSecurityContext": {"runAsRoot": True}}, "additional properties 'runAsRoot'"),
        # secrets only by reference: there is no value to paste a token into
        (
            {"proxy": {"auth": {"managementToken": {"value": "t0ken"}}}},
            "additional properties 'value'",
        ),
        ({"proxy": {"auth": {"keys": [{"key_hash": "ab"}]}}}, "additional properties 'keys'"),
        # the model table: what the proxy's structs refuse, the schema refuses first
        ({"proxy": {"models": {"model_list": []}}}, "additional properties 'model_list'"),
        (_table(providers={"openai": {"api_key": "sk-x"}}), "additional properties 'api_key'"),
        (_table(providers={"openai": {"timeouts": {"total": 9}}}), "additional properties 'total'"),
        (
            _table(models={"gpt-4o": {"targets": [{"provider": "openai", "model_id": "g"}]}}),
            "additional properties 'model_id'",
        ),
        (_table(models={"gpt-4o": {"fallback": ["b"]}}), "additional properties 'fallback'"),
        (_table(routing={"backoff": {"min": 1}}), "additional properties 'min'"),
        (_table(routing={"cooldown": {"minutes": 1}}), "additional properties 'minutes'"),
        (
            {"proxy": {"providerKeys": {"OPENAI_API_KEY": {"value": "sk-x"}}}},
            "additional properties 'value'",
        ),
    ],
)
def test_unknown_keys_are_rejected(chart: helm.Chart, values: Values, complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        chart.validate_schema(merged(MINIMAL, values))


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"proxy": {"replicaCount": "two"}}, "/proxy/replicaCount"),
        ({"proxy": {"upstream": {"clientTimeout": "10m"}}}, "/proxy/upstream/clientTimeout"),
        ({"proxy": {"upstream": {"baseUrl": "api.openai.com"}}}, "/proxy/upstream/baseUrl"),
        ({"proxy": {"corsAllowOrigins": "https://a,https://b"}}, "/proxy/corsAllowOrigins"),
        ({"proxy": {"logLevel": "verbose"}}, "/proxy/logLevel"),
        ({"proxy": {"redisTimeout": 0}}, "/proxy/redisTimeout"),
        ({"proxy": {"auth": {"mode": "token"}}}, "/proxy/auth/mode"),
        ({"proxy": {"auth": {"mode": True}}}, "/proxy/auth/mode"),
        ({"proxy": {"auth": {"rateLimitFailOpen": "yes"}}}, "/proxy/auth/rateLimitFailOpen"),
        ({"proxy": {"auth": {"requestRedisTimeout": 0}}}, "/proxy/auth/requestRedisTimeout"),
        ({"proxy": {"auth": {"keyCacheTtl": -1}}}, "/proxy/auth/keyCacheTtl"),
        ({"proxy": {"auth": {"keysFile": {"key": ""}}}}, "/proxy/auth/keysFile/key"),
        (
            {"proxy": {"auth": {"managementToken": {"existingSecret": "Ops_Token"}}}},
            "/proxy/auth/managementToken/existingSecret",
        ),
        ({"redis": {"port": 70000}}, "/redis/port"),
        ({"redis": {"tls": "yes"}}, "/redis/tls"),
        ({"collector": {"sink": "kafka"}}, "/collector/sink"),
        ({"collector": {"batchSize": 0}}, "/collector/batchSize"),
        ({"dispatcher": {"enabled": "true"}}, "/dispatcher/enabled"),
        ({"dispatcher": {"sink": "langfuse"}}, "/dispatcher/sink"),
        ({"dispatcher": {"persistence": {"mountPath": "data"}}}, "/dispatcher/persistence"),
        ({"proxy": {"image": {"digest": "latest"}}}, "/proxy/image/digest"),
        ({"proxy": {"resources": {"requests": {"cpu": "lots"}}}}, "/proxy/resources"),
        ({"ingress": {"hosts": "llm.example.com"}}, "/ingress/hosts"),
        ({"proxy": {"models": {"routing": {"retries": 1}}}}, "/proxy/models"),
        (_table(providers={"openai": {"type": "bedrock"}}), "/proxy/models/providers/openai/type"),
        (
            _table(providers={"openai": {"stream_usage": "always"}}),
            "/proxy/models/providers/openai/stream_usage",
        ),
        (
            _table(providers={"openai": {"base_url": "api.openai.com"}}),
            "/proxy/models/providers/openai/base_url",
        ),
        (
            _table(providers={"openai": {"api_key_env": "openai-key"}}),
            "/proxy/models/providers/openai/api_key_env",
        ),
        (
            _table(providers={"openai": {"headers": {"X-Retries": 3}}}),
            "/proxy/models/providers/openai/headers/X-Retries",
        ),
        (
            _table(providers={"openai": {"timeouts": {"read": 0}}}),
            "/proxy/models/providers/openai/timeouts/read",
        ),
        (_table(models={"gpt-4o": {"targets": []}}), "/proxy/models/models/gpt-4o/targets"),
        (
            _table(models={"gpt-4o": {"targets": [{"provider": "openai", "weight": 0}]}}),
            "/proxy/models/models/gpt-4o/targets/0/weight",
        ),
        (_table(models={"gpt-4o": {"retries": -1}}), "/proxy/models/models/gpt-4o/retries"),
        (_table(routing={"cooldown": {"failures": 0}}), "/proxy/models/routing/cooldown/failures"),
        (_table(routing={"deadline": "60s"}), "/proxy/models/routing/deadline"),
        (
            {"proxy": {"providerKeys": {"OPENAI_API_KEY": {"existingSecret": "openai"}}}},
            "/proxy/providerKeys/OPENAI_API_KEY",
        ),
        (
            {"proxy": {"providerKeys": {"OPENAI_API_KEY": {"existingSecret": "", "key": "k"}}}},
            "/proxy/providerKeys/OPENAI_API_KEY/existingSecret",
        ),
    ],
)
def test_mistyped_values_are_rejected(chart: helm.Chart, values: Values, where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(f"at '{where}")):
        chart.validate_schema(merged(MINIMAL, values))


def test_a_render_refuses_what_the_schema_rejects(render_chart: RenderChart) -> None:
    with pytest.raises(helm.HelmValuesError, match="additional properties 'replicas'"):
        render_chart(merged(MINIMAL, {"proxy": {"replicas": 2}}))


def _objects(node: Any, pointer: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object schema in the document, with its JSON pointer."""
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield pointer, node
        for key, child in node.items():
            yield from _objects(child, f"{pointer}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _objects(child, f"{pointer}/{index}")


def test_every_object_is_closed_or_a_typed_map() -> None:
    open_objects = [
        pointer for pointer, node in _objects(SCHEMA)
        if node.get("additionalProperties") is not False
        and not isinstance(node.get("additionalProperties"), dict)
        and pointer not in PASSED_THROUGH
    ]  # fmt: skip
    assert open_objects == []


def _leaves(values: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(values, dict) and values:
        for key, child in values.items():
            yield from _leaves(child, (*path, key))
    else:
        yield path


def _schema_node(path: tuple[str, ...]) -> dict[str, Any] | None:
    node: dict[str, Any] | None = SCHEMA
    for key in path:
        while node is not None and "$ref" in node:
            node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]]
        if node is not None:
            typed_map = node.get("additionalProperties")
            node = node.get("properties", {}).get(key)
            if node is None and isinstance(typed_map, dict):
                node = typed_map
    return node


def test_every_default_value_is_in_the_schema() -> None:
    missing = [
        ".".join(path) for path in _leaves(chart_values_file("values.yaml"))
        if _schema_node(path) is None
    ]  # fmt: skip
    assert missing == []


def test_every_schema_property_has_a_default_in_values_yaml() -> None:
    """No phantom keys: what the schema allows, values.yaml shows (and documents)."""
    defaults = chart_values_file("values.yaml")

    def walk(node: dict[str, Any], values: Any, path: str) -> Iterator[str]:
        while "$ref" in node:
            node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]]
        for key, child in node.get("properties", {}).items():
            here = f"{path}.{key}" if path else key
            if not isinstance(values, dict) or key not in values:
                yield here
            elif isinstance(values[key], dict) and values[key]:
                yield from walk(child, values[key], here)

    # Security contexts and resources list every Kubernetes field; values.yaml sets a few.
    optional = ("podSecurityContext.", "containerSecurityContext.", ".resources.",
                ".affinity.", ".image.registry", ".image.pullPolicy")  # fmt: skip
    missing = [p for p in walk(SCHEMA, defaults, "") if not any(o in f".{p}" for o in optional)]
    assert missing == []


def test_every_value_is_documented() -> None:
    """helm-docs style: each key is documented by a `# --` comment above it or above one of
    its parents (a documented map such as podSecurityContext covers its children)."""
    undocumented: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    comment = False
    for line in (CHART_DIR / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = True
            continue
        if not stripped or stripped.startswith("#"):
            continue
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if match is None:  # a list item or a continuation
            comment = False
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        covered = comment or any(documented for _, _, documented in stack)
        path = ".".join([key for _, key, _ in stack] + [match.group(2)])
        is_parent = line.rstrip().endswith(":")
        if not covered and not is_parent:
            undocumented.append(path)
        stack.append((indent, match.group(2), comment))
        comment = False
    assert undocumented == []
