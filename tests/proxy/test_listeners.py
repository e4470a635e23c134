"""Management (`/manage`, `/health`) is served on its own listener, MANAGEMENT_LISTEN_ADDR; the
data plane answers those paths with the OpenAI 404; the probes answer on both."""

from __future__ import annotations

import aiohttp
import pytest

from llm_gateway_common.config import ConfigError
from llm_gateway_proxy.main import hypercorn_config
from llm_gateway_proxy.settings import ProxySettings
from tests.conftest import ProxyFactory

TOKEN = "listener-test-management-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_management_answers_only_on_its_own_listener(
    proxy_factory: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    proxy = proxy_factory(AUTH_MODE="keys", MANAGEMENT_TOKEN=TOKEN)
    async with http.get(f"{proxy.manage_url}/manage/keys", headers=AUTH) as response:
        assert response.status == 200
        assert isinstance((await response.json())["data"], list)
    async with http.get(f"{proxy.manage_url}/health") as response:
        assert response.status == 200
        health = await response.json()
        assert health["in_flight"] == {"current": 0, "limit": 512, "refused": 0}
    for path in ("/manage/keys", "/manage/openapi.json", "/health"):
        async with http.get(f"{proxy.base_url}{path}", headers=AUTH) as response:
            assert response.status == 404, path
            error = (await response.json())["error"]
            assert (error["type"], error["code"]) == ("invalid_request_error", "unknown_url")
    for base in (proxy.base_url, proxy.manage_url):
        for path in ("/live", "/ready"):
            async with http.get(base + path) as response:
                assert response.status == 200, base + path
    async with http.post(f"{proxy.manage_url}/v1/chat/completions", json={}) as response:
        assert response.status == 404  # the API is not served on the management listener


def test_the_listeners_cannot_share_a_port() -> None:
    env = {"AUTH_MODE": "none", "LISTEN_ADDR": "0.0.0.0:9000", "MANAGEMENT_LISTEN_ADDR": ":9000"}
    with pytest.raises(ConfigError, match="MANAGEMENT_LISTEN_ADDR"):
        ProxySettings.from_env(env)
    with pytest.raises(ConfigError, match="MANAGEMENT_LISTEN_ADDR"):
        ProxySettings.from_env({"AUTH_MODE": "none", "MANAGEMENT_LISTEN_ADDR": "nowhere"})


def test_both_listeners_are_bound_ipv6_included() -> None:
    settings = ProxySettings.from_env({"AUTH_MODE": "none"})
    assert hypercorn_config(settings).bind == ["0.0.0.0:8080", "0.0.0.0:8090"]
    env = {"AUTH_MODE": "none", "LISTEN_ADDR": "[::]:8080", "MANAGEMENT_LISTEN_ADDR": "[::1]:9090"}
    settings = ProxySettings.from_env(env)
    assert hypercorn_config(settings).bind == ["[::]:8080", "[::1]:9090"]
