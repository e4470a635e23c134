"""The Grafana dashboard (charts/llm-gateway/files/dashboard.json) and the alert rules query only
metrics the services export: every name they use is one of metricnames.py's, in its Prometheus
form (histograms as `_bucket`/`_count`/`_sum`, counters with `_total`). The dashboard is valid
JSON, picks its Prometheus through a `datasource` variable, has a query in every panel (each one
PromQL that promtool parses), and is what the chart's ConfigMap carries."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_gateway_common import metricnames as names
from tests.chart.conftest import RenderChart
from tests.chart.rendering import CHART_DIR, merged
from tests.chart.scenarios import MINIMAL

DASHBOARD_FILE = CHART_DIR / "files" / "dashboard.json"
RULES_FILE = CHART_DIR / "files" / "alerts.yaml"
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())

HISTOGRAMS = [names.OPERATION_DURATION, names.TOKEN_USAGE, names.TIME_TO_FIRST_CHUNK,
              names.OVERHEAD, names.BATCH_DURATION]  # fmt: skip
COUNTERS = [names.REQUESTS, names.UPSTREAM_ATTEMPTS, names.FALLBACKS, names.LIMIT_REFUSALS,
            names.EVENTS_PUBLISHED, names.EVENTS_DROPPED, names.REDIS_ERRORS,
            names.IN_FLIGHT_REFUSED, names.CONSUMED, names.WRITTEN, names.RETRIED,
            names.DEAD_LETTERED]  # fmt: skip
GAUGES = [names.TARGET_COOLING_DOWN, names.MODEL_TARGETS, names.MODEL_TARGETS_COOLING,
          names.EVENTS_QUEUED, names.EVENTS_QUEUE_LIMIT, names.REDIS_BREAKER_OPEN,
          names.IN_FLIGHT, names.IN_FLIGHT_LIMIT, names.CONSUMER_LAG, names.CONSUMER_PENDING,
          names.DEAD_LETTER_LENGTH]  # fmt: skip
EXPORTED = (
    {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_count", "_sum")}
    | {f"{c}_total" for c in COUNTERS}
    | set(GAUGES)
)
# The label names of metricnames.py, with Prometheus's own and the operator's target labels.
LABELS = {value for key, value in vars(names).items()
          if key.isupper() and isinstance(value, str) and value and key not in {"OTHER"}
          and not value.startswith(("gen_ai_client_", "llm_gateway_"))} | {
              "le", "job", "instance", "namespace"}  # fmt: skip

# Grafana's variables, as promtool may parse them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*"}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


PANELS = [panel for panel in _panels(DASHBOARD["panels"]) if panel["type"] != "row"]
DASHBOARD_EXPRS = [target["expr"] for panel in PANELS for target in panel["targets"]]
ALERT_EXPRS = [rule["expr"] for group in yaml.safe_load(RULES_FILE.read_text())["groups"]
               for rule in group["rules"]]  # fmt: skip


def _metrics(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers outside label matchers and groupings,
    not followed by `(` (functions, aggregations)."""
    bare = re.sub(r"\{[^}]*\}", "", expr)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    bare = re.sub(r'"[^"]*"', "", bare)
    identifiers = re.findall(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", bare)
    keywords = {"and", "or", "unless", "bool", "offset"}
    return {i for i in identifiers if i not in keywords and not re.fullmatch(r"\d+\w*", i)}


def _labels(expr: str) -> set[str]:
    """The label names an expression matches on or groups by."""
    found = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", " ".join(
        re.findall(r"\{([^}]*)\}", expr))))  # fmt: skip
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        found |= {label.strip() for label in grouping.split(",") if label.strip()}
    return found


def test_every_panel_has_a_query() -> None:
    assert len(PANELS) >= 15
    for panel in PANELS:
        assert panel["title"], panel
        assert panel["targets"], f"{panel['title']} has no query"
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    all_panels = list(_panels(DASHBOARD["panels"]))
    assert len({panel["id"] for panel in all_panels}) == len(all_panels)
    cells = set()
    for panel in all_panels:
        box = panel["gridPos"]
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        assert box["x"] + box["w"] <= 24


def test_the_data_source_is_a_variable() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in PANELS:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_rates_use_the_rate_interval() -> None:
    for expr in DASHBOARD_EXPRS:
        windows = re.findall(r"\[([^\]]+)\]", expr)
        assert all(window == "$__rate_interval" for window in windows), expr


@pytest.mark.parametrize("origin", ["dashboard", "alerts"])
def test_every_metric_is_one_the_services_export(origin: str) -> None:
    exprs = DASHBOARD_EXPRS if origin == "dashboard" else ALERT_EXPRS
    used = set().union(*(_metrics(expr) for expr in exprs))
    assert used, "no metric found: the parser above is broken"
    assert used - EXPORTED == set()
    labels = set().union(*(_labels(expr) for expr in exprs))
    assert labels - LABELS == set()


def test_the_dashboard_shows_every_metric() -> None:
    used = set().union(*(_metrics(expr) for expr in DASHBOARD_EXPRS))
    shown = {name for name in EXPORTED if name in used}
    families = {re.sub(r"_(bucket|count|sum|total)$", "", name) for name in shown}
    assert families >= set(HISTOGRAMS) | set(COUNTERS) | set(GAUGES)


def test_promtool_parses_every_query(tmp_path: Path) -> None:
    rules = []
    for index, expr in enumerate(DASHBOARD_EXPRS):
        parsable = expr
        for variable, value in GRAFANA_VARIABLES.items():
            parsable = parsable.replace(variable, value)
        rules.append({"record": f"dashboard:query_{index}", "expr": parsable})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(["/usr/bin/promtool", "check", "rules", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_config_map_carries_the_dashboard(render_chart: RenderChart) -> None:
    assert render_chart(MINIMAL).find("ConfigMap", "dashboard") == []
    dashboard_values = {"enabled": True, "annotations": {"grafana_folder": "LLM"}}
    values = merged(MINIMAL, {"metrics": {"dashboard": dashboard_values}})
    (config_map,) = [m for m in render_chart(values).of_kind("ConfigMap")
                     if m["metadata"]["name"] == "gw-llm-gateway-dashboard"]  # fmt: skip
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    assert json.loads(config_map["data"]["llm-gateway.json"]) == DASHBOARD
