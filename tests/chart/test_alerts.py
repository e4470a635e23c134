"""The alert rules (charts/llm-gateway/files/alerts.yaml): a valid Prometheus rules file by
promtool's own check, unit-tested by `promtool test rules` (alerts_test.yaml: every alert seen
firing and seen quiet), each with its runbook in docs/operations.md, and rendered verbatim as the
chart's PrometheusRule. promtool is Debian's (the Makefile's `deps` installs it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import RenderChart
from tests.chart.rendering import CHART_DIR, merged
from tests.chart.scenarios import MINIMAL

PROMTOOL = Path("/usr/bin/promtool")
RULES_FILE = CHART_DIR / "files" / "alerts.yaml"
RULES_TESTS = Path(__file__).with_name("alerts_test.yaml")
OPERATIONS_DOC = CHART_DIR.parents[1] / "docs" / "operations.md"

RULES: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text())
ALERTS = [rule for group in RULES["groups"] for rule in group["rules"] if "alert" in rule]


def _promtool(*args: str) -> str:
    assert PROMTOOL.exists(), "promtool is missing: `make deps` installs Debian's prometheus"
    done = subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_checks_the_rules() -> None:
    assert f"SUCCESS: {len(ALERTS)} rules found" in _promtool("check", "rules", str(RULES_FILE))


def test_promtool_unit_tests_pass() -> None:
    assert "SUCCESS" in _promtool("test", "rules", str(RULES_TESTS))


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases: dict[str, list[list[Any]]] = {}
    for test in yaml.safe_load(RULES_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    names = sorted(alert["alert"] for alert in ALERTS)
    assert sorted(cases) == names
    for name, expectations in cases.items():
        assert any(expectations), f"{name} is never seen firing"
        assert not all(expectations), f"{name} is never seen quiet"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("alert", ALERTS, ids=[alert["alert"] for alert in ALERTS])
def test_every_alert_says_what_and_where_its_runbook_is(alert: dict[str, Any]) -> None:
    assert alert["labels"]["severity"] in {"warning", "critical"}
    annotations = alert["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    page, anchor = annotations["runbook_url"].split("#")
    assert page == "docs/operations.md"
    assert anchor == alert["alert"].lower()
    assert anchor in _anchors(OPERATIONS_DOC.read_text())


def test_the_prometheus_rule_renders_the_rules_file(render_chart: RenderChart) -> None:
    assert render_chart(MINIMAL).of_kind("PrometheusRule") == []
    rule_values = {"enabled": True, "labels": {"release": "kps"}}
    values = merged(MINIMAL, {"metrics": {"prometheusRule": rule_values}})
    (rule,) = render_chart(values).of_kind("PrometheusRule")
    assert rule["metadata"]["name"] == "gw-llm-gateway"
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == RULES
