"""Whatever status Starlette raises inside the management app, the answer is an OpenAI error with
that status (and the headers the exception carries), never a 404 in disguise."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Route

from llm_gateway_proxy.keystore import KeyStore
from llm_gateway_proxy.manage import create_management_app
from tests.support.servers import free_port

TOKEN = "management-token-for-error-tests"


async def ask(
    method: str, path: str, keys: KeyStore | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One request straight into the management app (ASGI, in process)."""
    app = create_management_app()

    async def raises(request: Request) -> None:
        status = int(request.path_params["status"])
        raise HTTPException(status, detail=f"status {status}", headers={"X-Why": "test"})

    app.router.routes.append(Route("/raise/{status:int}", raises))
    gateway = SimpleNamespace(settings=SimpleNamespace(management_token=TOKEN), keys=keys)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"authorization", f"Bearer {TOKEN}".encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8090), "state": {"gateway": gateway},
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], headers, orjson.loads(body)


@pytest.mark.parametrize("status", [400, 401, 403, 408, 409, 411, 413, 415, 418, 429, 500, 503])
async def test_every_http_exception_keeps_its_status_in_openai_shape(status: int) -> None:
    got, headers, body = await ask("GET", f"/raise/{status}")
    assert got == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == f"status {status}"
    assert body["error"]["type"] == ("api_error" if status >= 500 else "invalid_request_error")
    assert headers["x-why"] == "test"
    assert headers["content-type"] == "application/json"


async def test_unknown_paths_and_methods_are_404_and_405_with_allow() -> None:
    got, _, body = await ask("GET", "/nowhere")
    assert (got, body["error"]["code"]) == (404, "unknown_url")
    got, headers, body = await ask("DELETE", "/keys")
    assert (got, body["error"]["code"]) == (405, "method_not_allowed")
    assert set(headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}


async def test_redis_away_is_a_503_with_retry_after() -> None:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        got, headers, body = await ask("GET", "/keys", KeyStore(client, cache_ttl=0, timeout=0.2))
    finally:
        await client.aclose()
    assert (got, body["error"]["code"], headers["retry-after"]) == (503, "store_unavailable", "1")
