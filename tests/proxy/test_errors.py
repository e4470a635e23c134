"""Every error the gateway produces is OpenAI-shaped with the right status; malformed requests
never reach the upstream; upstream errors pass through untouched."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from llm_gateway_fakes.openai import FakeOpenAI
from llm_gateway_proxy.handlers import ProxyHandler
from llm_gateway_proxy.paths import PathTable
from tests.conftest import ProxyFactory
from tests.support.events import event_for
from tests.support.servers import free_port
from tests.support.services import ProxyProcess

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def assert_openai_error(payload: dict[str, object], *, type_: str, code: str | None) -> None:
    assert set(payload) == {"error"}
    error = payload["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert (error["type"], error["code"]) == (type_, code)


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"{oops", "invalid_json", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "missing_required_parameter",
         "model"),
        (b'{"model": "", "messages": []}', "missing_required_parameter", "model"),
        (b'{"model": "m", "messages": [{"role": 3}]}', "invalid_request", "messages[0].role"),
    ],
)  # fmt: skip
async def test_malformed_requests_get_400_and_never_reach_upstream(
    proxy: ProxyProcess,
    upstream: FakeOpenAI,
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
    body: bytes,
    code: str,
    param: str | None,
) -> None:
    async with http.post(f"{proxy.base_url}/v1/chat/completions", data=body) as response:
        assert response.status == 400
        payload = await response.json()
        request_id = response.headers["X-LLM-Request-ID"]
    assert_openai_error(payload, type_="invalid_request_error", code=code)
    assert payload["error"]["param"] == param
    assert upstream.received == []
    event = await event_for(redis, request_id)
    assert (event.status_code, event.outcome, event.usage_source) == (400, "gateway_error", "none")


async def test_body_over_the_limit_gets_413(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    small = proxy_factory(MAX_REQUEST_BODY_BYTES="1000")
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    async with http.post(f"{small.base_url}/v1/chat/completions", json=big) as response:
        assert response.status == 413
        assert_openai_error(await response.json(), type_="invalid_request_error",
                            code="request_too_large")  # fmt: skip

    async def chunked() -> object:  # no Content-Length: the limit holds while reading
        for _ in range(20):
            yield b"x" * 100

    async with http.post(f"{small.base_url}/v1/chat/completions", data=chunked()) as response:
        assert response.status == 413
    assert upstream.received == []


async def test_upstream_unreachable_is_502(
    proxy_factory: ProxyFactory, http: aiohttp.ClientSession, redis: aioredis.Redis
) -> None:
    dead = proxy_factory(UPSTREAM_OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    async with http.post(f"{dead.base_url}/v1/chat/completions", json=CHAT) as response:
        assert response.status == 502
        assert_openai_error(await response.json(), type_="api_error", code="upstream_unreachable")
        request_id = response.headers["X-LLM-Request-ID"]
    event = await event_for(redis, request_id)
    assert (event.outcome, event.error_type) == ("upstream_error", "upstream_unreachable")


async def test_upstream_timeout_is_504(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    impatient = proxy_factory(HTTP_CLIENT_TIMEOUT="0.3")
    upstream.behaviour.response_delay = 3
    async with http.post(f"{impatient.base_url}/v1/chat/completions", json=CHAT) as response:
        assert response.status == 504
        assert_openai_error(await response.json(), type_="api_error", code="upstream_timeout")


@pytest.mark.parametrize(("status", "kind"), [(429, "rate_limit_error"), (500, "server_error"),
                                              (404, "invalid_request_error")])  # fmt: skip
async def test_upstream_errors_pass_through_with_status_and_body(
    proxy: ProxyProcess,
    upstream: FakeOpenAI,
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
    status: int,
    kind: str,
) -> None:
    upstream.behaviour.fail_status = status
    async with http.post(f"{proxy.base_url}/v1/chat/completions", json=CHAT) as response:
        assert response.status == status
        payload = await response.json()
        request_id = response.headers["X-LLM-Request-ID"]
        if status == 429:
            assert response.headers["Retry-After"] == "1"
    assert payload["error"]["message"] == "The fake was told to fail."
    event = await event_for(redis, request_id)
    assert (event.status_code, event.outcome, event.error_type) == (status, "upstream_error", kind)
    assert event.usage_source == "none"


async def test_unknown_paths_and_methods_get_openai_errors(
    proxy: ProxyProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{proxy.base_url}/not-an-api") as response:
        assert response.status == 404
        assert_openai_error(await response.json(), type_="invalid_request_error",
                            code="unknown_url")  # fmt: skip
    async with http.post(f"{proxy.manage_url}/health") as response:
        assert response.status == 405
        assert_openai_error(await response.json(), type_="invalid_request_error",
                            code="method_not_allowed")  # fmt: skip


@pytest.mark.parametrize(("path", "anthropic"), [("/v1/chat/completions", False),
                                                 ("/v1/messages", True)])  # fmt: skip
async def test_methods_the_api_does_not_answer_are_405_in_its_shape(
    proxy: ProxyProcess, http: aiohttp.ClientSession, path: str, *, anthropic: bool
) -> None:
    """`/v1` bypasses Starlette's router for the methods it answers (app.py: ApiFirst); any
    other method still gets the 405, as an OpenAI error, or Anthropic's on its endpoint."""
    async with http.request("PROPFIND", f"{proxy.base_url}{path}") as response:
        assert response.status == 405
        body = await response.json()
    if anthropic:
        assert (body["type"], body["error"]["type"]) == ("error", "invalid_request_error")
    else:
        assert_openai_error(body, type_="invalid_request_error", code="method_not_allowed")


async def test_a_failure_outside_the_request_handling_is_an_openai_500() -> None:
    """Whatever the handler's own error mapping lets through is still answered in OpenAI's
    shape, with a request id (here: a scope without the gateway's state)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [],
             "query_string": b"", "state": {}}  # fmt: skip
    await ProxyHandler(PathTable(()))(scope, receive, send)
    start, body = sent
    assert start["status"] == 500
    assert dict(start["headers"])[b"x-llm-request-id"]
    assert_openai_error(orjson.loads(body["body"]), type_="api_error", code="internal_error")


async def test_no_cors_headers_unless_configured(
    proxy: ProxyProcess, proxy_factory: ProxyFactory, upstream: FakeOpenAI,
    http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    origin = {"Origin": "https://app.example"}
    async with http.post(f"{proxy.base_url}/v1/chat/completions", json=CHAT, headers=origin) as r:
        assert "Access-Control-Allow-Origin" not in r.headers
    cors = proxy_factory(CORS_ALLOW_ORIGINS="https://app.example, https://other.example")
    async with http.post(f"{cors.base_url}/v1/chat/completions", json=CHAT, headers=origin) as r:
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "X-LLM-Request-ID" in r.headers["Access-Control-Expose-Headers"]
    preflight = {**origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    async with http.options(f"{cors.base_url}/v1/chat/completions", headers=preflight) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    evil = {"Origin": "https://evil.example"}
    async with http.post(f"{cors.base_url}/v1/chat/completions", json=CHAT, headers=evil) as r:
        assert "Access-Control-Allow-Origin" not in r.headers
