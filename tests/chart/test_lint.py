"""`helm lint --strict`, by Helm's own linter: the chart's structure, YAML and schema."""

from __future__ import annotations

import pytest

from tests.chart.rendering import Values, lint
from tests.chart.scenarios import SCENARIOS

WARNING = 2


@pytest.mark.parametrize("name", ["minimal", "ci", "everything"])
def test_lint_is_clean(name: str) -> None:
    report = lint(SCENARIOS[name])
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert report["errors"] == [] and problems == [], report


def test_lint_of_the_bare_chart_is_clean() -> None:
    """Helm's linter runs the templates leniently (a `fail` is only logged), so the chart
    directory lints clean as published, before anyone sets redis.host."""
    report = lint(None)
    assert report["errors"] == [], report


def test_lint_reports_values_the_schema_rejects() -> None:
    bad: Values = {"redis": {"host": "r"}, "proxy": {"replicas": 3}}
    report = lint(bad)
    assert any("additional properties 'replicas' not allowed" in e for e in report["errors"])
