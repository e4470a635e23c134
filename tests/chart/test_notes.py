"""NOTES.txt: how to reach the gateway, get a gateway key and send a first request, for each
way it is exposed and authenticated."""

from __future__ import annotations

from tests.chart.conftest import RenderChart
from tests.chart.rendering import merged
from tests.chart.scenarios import INGRESS, KEYS_FILE, MINIMAL, NO_AUTH, REDIS, SCENARIOS, UPSTREAM


def test_port_forward_and_a_first_request(render_chart: RenderChart) -> None:
    notes = render_chart(merged(MINIMAL, UPSTREAM)).notes
    assert "kubectl --namespace ai port-forward service/gw-llm-gateway 8080:80" in notes
    assert "export OPENAI_BASE_URL=http://127.0.0.1:8080/v1" in notes
    assert 'curl -sS -i "$OPENAI_BASE_URL/chat/completions"' in notes
    assert "http://gw-llm-gateway.ai.svc:80/v1" in notes
    assert "kubectl --namespace ai logs deployment/gw-llm-gateway-collector" in notes
    assert "WARNING" not in notes
    assert "no provider key is configured" not in notes


def test_a_key_is_created_then_sent(render_chart: RenderChart) -> None:
    notes = render_chart(MINIMAL).notes
    create = notes.index(
        "kubectl --namespace ai exec deploy/gw-llm-gateway-proxy -- \\\n"
        "       llm-gateway-proxy keys create --name team-a --tenant team-a"
    )
    assert "get secret gateway-manage -o jsonpath='{.data.management-token}' | base64 -d" in notes
    # The management listener is on neither the main Service nor the Ingress: port-forward.
    forward = "kubectl --namespace ai port-forward service/gw-llm-gateway-management 8090:8090"
    assert forward in notes
    assert 'curl -sS "$MANAGEMENT_URL/manage/keys"' in notes
    assert "export MANAGEMENT_URL=http://127.0.0.1:8090" in notes
    assert '-H "Authorization: Bearer $MANAGEMENT_TOKEN"' in notes
    first_request = notes.index('curl -sS -i "$OPENAI_BASE_URL/chat/completions"')
    assert create < first_request
    assert "-H 'Authorization: Bearer <your gateway key>'" in notes[first_request:]
    assert "X-LLM-Tenant" not in notes  # the key's tenant is authoritative


def test_keys_kept_in_a_file_need_a_restart_when_changed(render_chart: RenderChart) -> None:
    notes = render_chart(merged(REDIS, KEYS_FILE)).notes
    assert "hashed keys in Secret gateway-keys (key keys.json)" in notes
    assert "kubectl --namespace ai rollout restart deployment/gw-llm-gateway-proxy" in notes
    assert "/manage/keys" not in notes  # no management token: no management API
    assert "llm-gateway-proxy keys create" in notes  # the CLI talks to Redis


def test_the_ci_management_token_is_in_the_development_secret(render_chart: RenderChart) -> None:
    notes = render_chart(SCENARIOS["ci"]).notes
    assert "get secret gw-llm-gateway-dev -o jsonpath='{.data.management-token}'" in notes


def test_no_authentication_is_a_warning(render_chart: RenderChart) -> None:
    notes = render_chart(merged(REDIS, NO_AUTH)).notes
    assert "WARNING: proxy.auth.mode=none. NO AUTHENTICATION" in notes
    assert "Authorization: Bearer" not in notes
    assert "keys create" not in notes
    assert "-H 'X-LLM-Tenant: my-team'" in notes
    assert "WARNING: proxy.auth.mode=none" not in render_chart(MINIMAL).notes


def test_an_ingress_gives_its_host(render_chart: RenderChart) -> None:
    notes = render_chart(merged(MINIMAL, INGRESS)).notes
    assert "export OPENAI_BASE_URL=https://llm.example.com/v1" in notes
    assert "port-forward service/gw-llm-gateway-management" in notes  # management is not on it
    with_management = merged(MINIMAL, INGRESS, {"ingress": {"management": {"enabled": True}}})
    notes = render_chart(with_management).notes
    assert "export MANAGEMENT_URL=${OPENAI_BASE_URL%/v1}" in notes
    # Keys are managed through the Ingress; only /metrics is still read on the management Service.
    assert "port-forward service/gw-llm-gateway-management 8090:" not in notes


def test_a_load_balancer_gives_its_address(render_chart: RenderChart) -> None:
    notes = render_chart(merged(MINIMAL, {"proxy": {"service": {"type": "LoadBalancer"}}})).notes
    assert "get service gw-llm-gateway -o jsonpath='{.status.loadBalancer.ingress[0].ip}'" in notes


def test_a_missing_provider_key_is_pointed_out(render_chart: RenderChart) -> None:
    assert "no provider key is configured" in render_chart(MINIMAL).notes
