"""Fixtures of the chart tests: the chart loaded once by Helm's SDK, a render function."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import helm_python as helm
import pytest

from tests.chart.rendering import Rendered, load_chart, render


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "image_install: installs a service the way docker/Dockerfile does (slower; deselect "
        "with -m 'not image_install')",
    )


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    loaded = load_chart()
    yield loaded
    loaded.close()


RenderChart = Callable[[Mapping[str, Any]], Rendered]


@pytest.fixture(scope="session")
def render_chart(chart: helm.Chart) -> RenderChart:
    def render_values(values: Mapping[str, Any]) -> Rendered:
        return render(chart, values)

    return render_values
