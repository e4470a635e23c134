"""NOTES.txt: how to reach the gateway and a first request, for each way it is exposed."""

from __future__ import annotations

from tests.chart.conftest import RenderChart
from tests.chart.rendering import merged
from tests.chart.scenarios import INGRESS, REDIS, UPSTREAM


def test_port_forward_and_a_first_request(render_chart: RenderChart) -> None:
    notes = render_chart(merged(REDIS, UPSTREAM)).notes
    assert "kubectl --namespace ai port-forward service/gw-llm-gateway 8080:80" in notes
    assert "export OPENAI_BASE_URL=http://127.0.0.1:8080/v1" in notes
    assert 'curl -sS -i "$OPENAI_BASE_URL/chat/completions"' in notes
    assert "http://gw-llm-gateway.ai.svc:80/v1" in notes
    assert "kubectl --namespace ai logs deployment/gw-llm-gateway-collector" in notes
    assert "WARNING" not in notes
    assert "no provider key is configured" not in notes


def test_an_ingress_gives_its_host(render_chart: RenderChart) -> None:
    notes = render_chart(merged(REDIS, INGRESS)).notes
    assert "export OPENAI_BASE_URL=https://llm.example.com/v1" in notes


def test_a_load_balancer_gives_its_address(render_chart: RenderChart) -> None:
    notes = render_chart(merged(REDIS, {"proxy": {"service": {"type": "LoadBalancer"}}})).notes
    assert "get service gw-llm-gateway -o jsonpath='{.status.loadBalancer.ingress[0].ip}'" in notes


def test_a_missing_provider_key_is_pointed_out(render_chart: RenderChart) -> None:
    assert "no provider key is configured" in render_chart(REDIS).notes
