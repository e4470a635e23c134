"""The proxy's `/metrics`: what requests add, labels folded to bounded sets, the scrape-time
gauges, and that it is served on the management listener only. (A real Prometheus scraping all
three services is in tests/e2e.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import yaml

from llm_gateway_fakes.localnet import free_port
from llm_gateway_fakes.openai import FakeOpenAI, FakeOpenAIServer
from llm_gateway_proxy.keys import Limits, new_key
from tests.conftest import UPSTREAM_KEY, ProxyFactory
from tests.proxy.test_access import record
from tests.support.metrics import Samples, total, value
from tests.support.metrics import scrape as scrape_url
from tests.support.services import ProxyProcess

MESSAGES = [{"role": "user", "content": "one two three"}]


async def scrape(http: aiohttp.ClientSession, proxy: ProxyProcess) -> Samples:
    return await scrape_url(http, proxy.manage_url)


def models_file(tmp_path: Path, upstream: str, cooldown_failures: int = 100) -> str:
    file: dict[str, Any] = {
        "providers": {
            "dead": {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
            "good": {"type": "openai", "base_url": upstream, "api_key_env": "GOOD_KEY"},
        },
        "models": {
            "chat-main": {
                "targets": [{"provider": "dead", "model": "gpt-4o-mini", "weight": 1000},
                            {"provider": "good", "model": "gpt-4o-mini"}],
                "retries": 1, "cooldown": {"failures": cooldown_failures, "seconds": 60},
            },
            "open-*": {"targets": [{"provider": "good"}]},
        },
    }  # fmt: skip
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(file))
    return str(path)


async def chat(http: aiohttp.ClientSession, proxy: ProxyProcess, model: str, **extra: Any) -> int:
    headers = extra.pop("headers", {})
    body = {"model": model, "messages": MESSAGES, **extra}
    url = f"{proxy.base_url}/v1/chat/completions"
    async with http.post(url, json=body, headers=headers) as response:
        await response.read()
        return response.status


async def test_routed_requests_count_attempts_fallbacks_latency_and_tokens(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, upstream_server: FakeOpenAIServer,
    http: aiohttp.ClientSession, tmp_path: Path,
) -> None:  # fmt: skip
    proxy = proxy_factory(
        MODELS_FILE=models_file(tmp_path, upstream_server.base_url), GOOD_KEY=UPSTREAM_KEY
    )
    for _ in range(3):
        assert await chat(http, proxy, "chat-main") == 200
    assert await chat(http, proxy, "open-mini", stream=True) == 200
    assert await chat(http, proxy, "made-up-model") == 404

    samples = await scrape(http, proxy)
    requests = "llm_gateway_requests_total"
    assert value(samples, requests, endpoint="/v1/chat/completions", status_class="2xx",
                 outcome="ok") == 4  # fmt: skip
    assert value(samples, requests, endpoint="/v1/chat/completions", status_class="4xx",
                 outcome="gateway_error") == 1  # fmt: skip
    attempts = "llm_gateway_upstream_attempts_total"
    assert value(samples, attempts, target="dead/gpt-4o-mini", result="error") == 3
    assert value(samples, attempts, target="good/gpt-4o-mini", result="ok") == 3
    assert value(samples, attempts, target="good/open-*", result="ok") == 1
    assert value(samples, "llm_gateway_fallbacks_total", gen_ai_request_model="chat-main") == 3

    duration = "gen_ai_client_operation_duration_seconds_count"
    main = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai"}
    assert value(samples, duration, **main, gen_ai_request_model="chat-main", error_type="") == 3
    # A pattern's names are its entry; a name nothing configures reached no provider.
    assert value(samples, duration, **main, gen_ai_request_model="open-*", error_type="") == 1
    assert total(samples, duration, gen_ai_request_model="made-up-model") == 0
    tokens = "gen_ai_client_token_usage_sum"
    prompts = sum(u["prompt_tokens"] for u in upstream.usages[:3])
    assert value(samples, tokens, **main, gen_ai_request_model="chat-main",
                 gen_ai_token_type="input") == prompts  # fmt: skip
    assert value(samples, tokens, **main, gen_ai_request_model="chat-main",
                 gen_ai_token_type="output") > 0  # fmt: skip
    first_chunk = "gen_ai_client_operation_time_to_first_chunk_seconds_count"
    assert value(samples, first_chunk, **main, gen_ai_request_model="open-*") == 1
    assert value(samples, first_chunk, **main, gen_ai_request_model="chat-main") == 0
    overhead = "llm_gateway_overhead_seconds"
    assert value(samples, f"{overhead}_count", endpoint="/v1/chat/completions", stream="false") == 3
    # The gateway's own time is a small part of a request that waited for a dead provider.
    own = value(samples, f"{overhead}_sum", endpoint="/v1/chat/completions", stream="false")
    whole = value(samples, "gen_ai_client_operation_duration_seconds_sum", **main,
                  gen_ai_request_model="chat-main", error_type="")  # fmt: skip
    assert 0 < own < whole

    assert value(samples, "llm_gateway_model_targets", gen_ai_request_model="chat-main") == 2
    assert value(samples, "llm_gateway_target_cooling_down", target="dead/gpt-4o-mini") == 0
    assert value(samples, "llm_gateway_in_flight_limit") == 512
    assert value(samples, "llm_gateway_events_queue_limit") == 100_000
    assert value(samples, "llm_gateway_redis_breaker_open") == 0


async def test_a_target_cooling_down_is_shown_per_target_and_model(
    proxy_factory: ProxyFactory, upstream_server: FakeOpenAIServer,
    http: aiohttp.ClientSession, tmp_path: Path,
) -> None:  # fmt: skip
    path = models_file(tmp_path, upstream_server.base_url, cooldown_failures=1)
    proxy = proxy_factory(MODELS_FILE=path, GOOD_KEY=UPSTREAM_KEY)
    assert await chat(http, proxy, "chat-main") == 200
    samples = await scrape(http, proxy)
    assert value(samples, "llm_gateway_target_cooling_down", target="dead/gpt-4o-mini") == 1
    assert value(samples, "llm_gateway_target_cooling_down", target="good/gpt-4o-mini") == 0
    cooling = "llm_gateway_model_targets_cooling_down"
    assert value(samples, cooling, gen_ai_request_model="chat-main") == 1


async def test_without_a_models_file_every_model_is_other_and_tenants_are_capped(
    proxy_factory: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    proxy = proxy_factory(METRICS_TENANT_LABEL="true", METRICS_TENANT_LIMIT="2")
    for tenant in ("t1", "t2", "t3", "t4", "t1"):
        assert await chat(http, proxy, f"model-{tenant}", headers={"X-LLM-Tenant": tenant}) == 200
    samples = await scrape(http, proxy)
    requests = "llm_gateway_requests_total"
    ok = {"endpoint": "/v1/chat/completions", "status_class": "2xx", "outcome": "ok"}
    assert value(samples, requests, **ok, tenant="t1") == 2
    assert value(samples, requests, **ok, tenant="t2") == 1
    assert value(samples, requests, **ok, tenant="other") == 2
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert total(samples, duration) == 5
    assert total(samples, duration, gen_ai_request_model="other") == 5
    # No MODELS_FILE: no routing, no cooldown gauges.
    assert total(samples, "llm_gateway_model_targets") == 0


async def test_unknown_paths_fold_and_refusals_are_counted(
    proxy_factory: ProxyFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    key = new_key()
    path = tmp_path / "keys.json"
    path.write_bytes(msgspec.json.encode([record(key, limits=Limits(requests_per_minute=1))]))
    proxy = proxy_factory(AUTH_MODE="keys", KEYS_FILE=str(path))
    auth = {"Authorization": f"Bearer {key}"}
    assert await chat(http, proxy, "gpt-4o-mini", headers=auth) == 200
    assert await chat(http, proxy, "gpt-4o-mini", headers=auth) == 429
    for suffix in ("files/file-abc123", "no/such/path-1", "no/such/path-2"):
        async with http.get(f"{proxy.base_url}/v1/{suffix}", headers=auth) as response:
            assert response.status in (404, 429)
    samples = await scrape(http, proxy)
    assert value(samples, "llm_gateway_limit_refusals_total",
                 error_type="rate_limit_exceeded") >= 2  # fmt: skip
    endpoints = {dict(ls).get("endpoint") for (n, ls) in samples if n.startswith("llm_gateway_req")}
    assert endpoints == {"/v1/chat/completions", "other"}


async def test_metrics_are_never_served_on_the_data_plane(
    proxy: ProxyProcess, http: aiohttp.ClientSession
) -> None:
    for path in ("/metrics", "/v1/metrics", "/v1/../metrics", "/%6detrics"):
        async with http.get(f"{proxy.base_url}{path}") as response:
            body = await response.read()
            assert response.status in (400, 404), path
            assert b"llm_gateway_requests" not in body
