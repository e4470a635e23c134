"""Reading a service's `/metrics` in tests: the text exposition parsed by prometheus-client's own
parser into samples by (name, labels). (What a real Prometheus makes of it is in tests/e2e.)"""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: aiohttp.ClientSession, base_url: str) -> Samples:
    async with http.get(f"{base_url}/metrics") as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}
