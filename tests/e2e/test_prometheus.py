"""A real Prometheus scrapes the proxy, a collector and a dispatcher while traffic flows; what it
stores is read through its HTTP API (rates, histogram quantiles), and every query of the
Grafana dashboard the chart ships runs against it and returns series."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from llm_gateway_fakes.localnet import free_port
from llm_gateway_fakes.openai import FakeOpenAI, FakeOpenAIServer
from tests.collector.test_ndjson import until
from tests.conftest import UPSTREAM_KEY, CollectorFactory, ProxyFactory
from tests.support.prometheus import LocalPrometheus
from tests.support.services import DispatcherProcess, ProxyProcess

DASHBOARD = Path(__file__).resolve().parents[2] / "charts/llm-gateway/files/dashboard.json"
ROUNDS = 4  # traffic spread over several scrapes, so that rate() has something to differ
PER_ROUND = 6  # 4 answered (one stream), 1 routed around a dead target... see `_round`
MESSAGES = [{"role": "user", "content": "one two three"}]


class Pipeline:
    def __init__(self, prometheus: LocalPrometheus, proxy: ProxyProcess, sent: int) -> None:
        self.prometheus = prometheus
        self.proxy = proxy
        self.sent = sent


def _models_file(path: Path, upstream: str) -> Path:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    file: dict[str, Any] = {
        "providers": {
            "dead": {"type": "openai", "base_url": dead},
            "good": {"type": "openai", "base_url": upstream, "api_key_env": "GOOD_KEY"},
        },
        "models": {
            "chat-main": {"targets": [{"provider": "dead", "model": "gpt-4o-mini", "weight": 1000},
                                      {"provider": "good", "model": "gpt-4o-mini"}],
                          "retries": 1, "cooldown": {"failures": 1000, "seconds": 1}},
            "broken": {"targets": [{"provider": "dead", "model": "gpt-4o"}],
                       "cooldown": {"failures": 1000, "seconds": 1}},
            "open-*": {"targets": [{"provider": "good"}]},
        },
    }  # fmt: skip
    path.write_text(yaml.safe_dump(file))
    return path


async def _round(http: aiohttp.ClientSession, proxy: ProxyProcess) -> int:
    """One round of traffic: answered, streamed, routed around a dead target, failed."""
    url = f"{proxy.base_url}/v1/chat/completions"
    requests = [
        {"model": "open-mini"}, {"model": "open-mini"}, {"model": "open-mini", "stream": True},
        {"model": "chat-main"}, {"model": "broken"}, {"model": "embeddings-only"},
    ]  # fmt: skip
    for body in requests:
        async with http.post(url, json={**body, "messages": MESSAGES}) as response:
            await response.read()
    return len(requests)


@pytest.fixture
def pipeline_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def dispatcher(redis_url: str, stream_name: str, pipeline_dir: Path) -> Iterator[DispatcherProcess]:
    process = DispatcherProcess({
        "REDIS_URL": redis_url, "EVENTS_STREAM": stream_name, "DISPATCHER_SINK": "file",
        "DISPATCHER_ENDPOINT": str(pipeline_dir / "events.jsonl"),
        "DISPATCHER_FLUSH_INTERVAL": "0.05", "DISPATCHER_CONSUMER": "d-1",
    }).start()  # fmt: skip
    yield process
    process.stop()


@pytest.fixture
async def pipeline(
    proxy_factory: ProxyFactory, collector_factory: CollectorFactory,
    dispatcher: DispatcherProcess, upstream: FakeOpenAI, upstream_server: FakeOpenAIServer,
    stream_name: str, pipeline_dir: Path, http: aiohttp.ClientSession,
) -> Any:  # fmt: skip
    models = _models_file(pipeline_dir / "models.yaml", upstream_server.base_url)
    proxy = proxy_factory(MODELS_FILE=str(models), GOOD_KEY=UPSTREAM_KEY,
                          EVENTS_STREAM=stream_name, EVENT_FLUSH_INTERVAL="0.01")  # fmt: skip
    collector = collector_factory(EVENTS_STREAM=stream_name,
                                  EVENT_LOG_PATH=str(pipeline_dir / "usage.ndjson"))  # fmt: skip
    prometheus = LocalPrometheus(pipeline_dir, {
        "proxy": f"127.0.0.1:{proxy.manage_port}",
        "collector": f"127.0.0.1:{collector.port}",
        "dispatcher": f"127.0.0.1:{dispatcher.port}",
    }).start()  # fmt: skip
    try:
        sent = 0
        for _ in range(ROUNDS):
            sent += await _round(http, proxy)
            await asyncio.sleep(1.1)

        async def all_delivered() -> bool:
            written = prometheus.query("sum by (job) (llm_gateway_consumer_events_written_total)")
            return {s["metric"]["job"]: float(s["value"][1]) for s in written} == {
                "collector": sent,
                "dispatcher": sent,
            }

        await until(all_delivered, "every event written by the collector and the dispatcher",
                    deadline=20)  # fmt: skip
        await asyncio.sleep(2.5)  # two more scrapes: the last rates and the lag at rest
        yield Pipeline(prometheus, proxy, sent)
    finally:
        prometheus.stop()


async def test_prometheus_reads_the_services_and_the_dashboard_has_data(pipeline: Pipeline) -> None:
    check_traffic_pipeline_and_latency(pipeline)
    check_every_dashboard_query_returns_series(pipeline)


def check_traffic_pipeline_and_latency(pipeline: Pipeline) -> None:
    prometheus, sent = pipeline.prometheus, pipeline.sent
    assert prometheus.targets_up() == {"proxy": True, "collector": True, "dispatcher": True}
    assert prometheus.value("sum(llm_gateway_requests_total)") == sent
    assert prometheus.value('sum(llm_gateway_requests_total{status_class="2xx"})') == 4 * ROUNDS
    assert prometheus.value("sum(rate(llm_gateway_requests_total[30s]))") > 0
    answered = 'gen_ai_client_operation_duration_seconds_count{error_type=""}'
    assert prometheus.value(f"sum({answered})") == 4 * ROUNDS
    assert (
        prometheus.value(
            'sum(gen_ai_client_operation_duration_seconds_count{gen_ai_request_model="broken",'
            'error_type!=""})'
        )
        == ROUNDS
    )
    p50 = prometheus.value(
        "histogram_quantile(0.5, sum by (le) "
        "(rate(gen_ai_client_operation_duration_seconds_bucket[30s])))"
    )
    assert 0 < p50 < 5
    ttft = prometheus.value(
        "histogram_quantile(0.95, sum by (le) "
        "(rate(gen_ai_client_operation_time_to_first_chunk_seconds_bucket[30s])))"
    )
    assert 0 < ttft < 5
    overhead = prometheus.value(
        "histogram_quantile(0.5, sum by (le) (rate(llm_gateway_overhead_seconds_bucket[30s])))"
    )
    assert 0 < overhead < 0.1
    assert prometheus.value("sum(llm_gateway_fallbacks_total)") == ROUNDS
    tokens = 'sum(gen_ai_client_token_usage_count{gen_ai_token_type="output"})'
    assert prometheus.value(tokens) == 4 * ROUNDS
    assert prometheus.value("sum(rate(gen_ai_client_token_usage_sum[30s]))") > 0
    # The event pipeline end to end: published = consumed = written, nothing behind.
    assert prometheus.value("sum(llm_gateway_events_published_total)") == sent
    assert prometheus.value("sum(llm_gateway_events_dropped_total)") == 0
    assert prometheus.value("sum(llm_gateway_events_queued)") == 0
    consumed = prometheus.query("sum by (job) (llm_gateway_consumer_entries_consumed_total)")
    assert {s["metric"]["job"]: float(s["value"][1]) for s in consumed} == {
        "collector": sent, "dispatcher": sent}  # fmt: skip
    lag = prometheus.query("llm_gateway_consumer_lag_entries")
    assert lag and all(float(s["value"][1]) == 0 for s in lag)
    assert prometheus.value("sum(llm_gateway_consumer_batch_duration_seconds_count)") > 0


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                queries.append((panel.get("title", "?"), target["expr"]))
    return queries


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def concrete(expr: str) -> str:
    """A panel's query as Grafana would send it: its interval variables filled in, every other
    template variable (a model or provider filter) matching everything."""
    expr = expr.replace("$__rate_interval", "30s").replace("${__rate_interval}", "30s")
    expr = re.sub(r"\$__(interval|range)\b|\$\{__(interval|range)\}", "30s", expr)
    return re.sub(r"\$\{?\w+(:\w+)?\}?", ".*", expr)


def check_every_dashboard_query_returns_series(pipeline: Pipeline) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10
    empty = []
    for title, expr in queries:
        result = pipeline.prometheus.query(concrete(expr))
        values = [float(sample["value"][1]) for sample in result]
        if not values or all(math.isnan(v) for v in values):
            empty.append((title, expr))
    assert not empty, f"dashboard queries without series after traffic: {empty}"
