"""The management API of a running proxy: key round trips, authentication, clear 4xx errors,
usage, keys that authenticate real requests, and that a key is shown once and never stored or
logged in clear."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from llm_gateway_fakes.openai import FakeOpenAI
from llm_gateway_proxy.keys import KeyRecord, hash_key
from llm_gateway_proxy.keystore import KeyStore
from llm_gateway_proxy.manage_models import KeyView
from llm_gateway_proxy.ratelimit import RateLimiter
from tests.conftest import ProxyFactory
from tests.support.servers import free_port
from tests.support.services import ProxyProcess

TOKEN = "mgmt-test-token-5b0c1e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def manage(proxy_factory: ProxyFactory) -> ProxyProcess:
    """A proxy with keys on and the management API enabled; revocation takes effect at once."""
    return proxy_factory(AUTH_MODE="keys", MANAGEMENT_TOKEN=TOKEN, KEY_CACHE_TTL="0")


Answer = tuple[int, Any]


async def call(
    http: aiohttp.ClientSession, method: str, url: str, *, json: object = None,
    data: bytes | None = None, headers: dict[str, str] | None = None,
) -> Answer:  # fmt: skip
    async with http.request(method, url, json=json, data=data,
                            headers=AUTH if headers is None else headers) as response:  # fmt: skip
        return response.status, await response.json(content_type=None)


def assert_error(answer: Answer, status: int, code: str, param: str | None = None) -> None:
    got_status, payload = answer
    assert got_status == status, payload
    assert set(payload) == {"error"}
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert (error["code"], error["param"]) == (code, param), error


def unique_tenant(request: pytest.FixtureRequest) -> str:
    """A tenant of this test's own: the session's Redis holds every test's keys."""
    return f"{request.node.originalname}-{uuid.uuid4().hex[:8]}"


async def redis_contents(redis: aioredis.Redis) -> bytes:
    """Every key and value in Redis, whatever its type, as one blob to search."""
    blob = bytearray()
    async for name in redis.scan_iter(count=1000):
        blob += name + b"\n"
        kind = (await redis.type(name)).decode()
        if kind == "string":
            blob += await redis.get(name) or b""
        elif kind == "set":
            blob += b" ".join(await redis.smembers(name))
        elif kind == "hash":
            for field, value in (await redis.hgetall(name)).items():
                blob += field + b"=" + value + b" "
        elif kind == "list":
            blob += b" ".join(await redis.lrange(name, 0, -1))
        elif kind == "zset":
            blob += b" ".join(await redis.zrange(name, 0, -1))
        elif kind == "stream":
            for _, fields in await redis.xrange(name):
                blob += b" ".join(k + b"=" + v for k, v in fields.items())
        blob += b"\n"
    return bytes(blob)


# --- round trips -----------------------------------------------------------------------------


async def test_create_get_list_patch_revoke_rotate(
    manage: ProxyProcess, http: aiohttp.ClientSession, redis: aioredis.Redis,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    tenant = unique_tenant(request)
    url = f"{manage.manage_url}/manage"
    body = {"name": "search bot", "tenant": tenant, "models": ["gpt-4o*"],
            "limits": {"requests_per_minute": 60, "budget_tokens": 1000},
            "metadata": {"owner": "ana"}}  # fmt: skip
    status, created = await call(http, "POST", f"{url}/keys", json=body)
    assert status == 201, created
    key, key_id = created["key"], created["id"]
    assert key.startswith("gw-") and "key_hash" not in created
    assert created["display"] == f"{key[:7]}...{key[-4:]}"
    assert (created["tenant"], created["models"], created["active"]) == (tenant, ["gpt-4o*"], True)
    assert created["limits"] == {"requests_per_minute": 60, "budget_tokens": 1000}
    stored = KeyStore(redis, cache_ttl=0, timeout=2)
    record = await stored.lookup(hash_key(key))
    assert record is not None and record.id == key_id

    status, fetched = await call(http, "GET", f"{url}/keys/{key_id}")
    assert status == 200
    assert fetched == {k: v for k, v in created.items() if k != "key"}
    status, listed = await call(http, "GET", f"{url}/keys?tenant={tenant}")
    assert (status, listed) == (200, {"object": "list", "data": [fetched]})
    status, everyone = await call(http, "GET", f"{url}/keys")
    assert fetched in everyone["data"]

    patch = {"name": "renamed", "limits": {"tokens_per_minute": 500, "budget_period": "daily"},
             "expires_at": time.time() + 3600, "metadata": {}}  # fmt: skip
    status, patched = await call(http, "PATCH", f"{url}/keys/{key_id}", json=patch)
    assert status == 200, patched
    assert patched["name"] == "renamed" and patched["metadata"] == {}
    assert patched["limits"] == {"requests_per_minute": 60, "tokens_per_minute": 500,
                                 "budget_tokens": 1000, "budget_period": "daily"}  # fmt: skip
    assert patched["expires_at"] == pytest.approx(patch["expires_at"])
    status, patched = await call(http, "PATCH", f"{url}/keys/{key_id}", json={"expires_at": None})
    assert (status, patched["expires_at"], patched["name"]) == (200, None, "renamed")

    status, revoked = await call(http, "POST", f"{url}/keys/{key_id}/revoke")
    assert (status, revoked["active"]) == (200, False)
    record = await stored.lookup(hash_key(key))
    assert record is not None and not record.usable()
    status, revived = await call(http, "PATCH", f"{url}/keys/{key_id}", json={"active": True})
    assert (status, revived["active"]) == (200, True)

    status, rotated = await call(http, "POST", f"{url}/keys/{key_id}/rotate")
    assert status == 200, rotated
    new = rotated.pop("key")
    assert new != key and rotated["id"] == key_id
    assert rotated["display"] == f"{new[:7]}...{new[-4:]}"
    assert {k: v for k, v in rotated.items() if k not in ("display", "version")} == {
        k: v for k, v in revived.items() if k not in ("display", "version")
    }
    assert rotated["version"] == revived["version"] + 1 == created["version"] + 5
    assert await stored.lookup(hash_key(key)) is None
    record = await stored.lookup(hash_key(new))
    assert record is not None and record.id == key_id and record.usable()


async def test_keys_are_shown_once_and_never_stored_in_clear(
    manage: ProxyProcess, http: aiohttp.ClientSession, redis: aioredis.Redis,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    url = f"{manage.manage_url}/manage"
    body = {"name": "n", "tenant": unique_tenant(request)}
    _, created = await call(http, "POST", f"{url}/keys", json=body)
    _, rotated = await call(http, "POST", f"{url}/keys/{created['id']}/rotate")
    keys = [created["key"], rotated["key"]]
    for path in (f"/keys/{created['id']}", f"/keys?tenant={body['tenant']}",
                 f"/usage/keys/{created['id']}"):  # fmt: skip
        async with http.get(f"{url}{path}", headers=AUTH) as response:
            text = await response.text()
        assert not any(key in text for key in keys)
        assert not any(key[3:] in text for key in keys)  # nor without its prefix
    contents = await redis_contents(redis)
    for key in keys:
        assert key.encode() not in contents
        assert key[3:].encode() not in contents
    assert hash_key(rotated["key"]).encode() in contents  # the scan does see the records


def test_the_api_shows_every_field_of_a_record_but_its_hash() -> None:
    assert set(KeyView.__struct_fields__) == set(KeyRecord.__struct_fields__) - {"key_hash"}


# --- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN}, {"x-api-key": TOKEN}],
)  # fmt: skip
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/keys"), ("POST", "/keys"), ("GET", "/keys/key_0000"), ("GET", "/openapi.json"),
     ("GET", "/no/such/path"), ("DELETE", "/keys/key_0000")],
)  # fmt: skip
async def test_every_route_needs_the_management_token(
    manage: ProxyProcess, http: aiohttp.ClientSession, headers: dict[str, str], method: str,
    path: str,
) -> None:  # fmt: skip
    async with http.request(method, f"{manage.manage_url}/manage{path}", headers=headers,
                            json={"name": "x", "tenant": "y"}) as response:  # fmt: skip
        answer = response.status, await response.json()
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert_error(answer, 401, "invalid_management_token")
    assert answer[1]["error"]["type"] == "authentication_error"


async def test_without_a_token_configured_the_api_does_not_exist(
    proxy_factory: ProxyFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_bytes(b"[]")
    proxy = proxy_factory(AUTH_MODE="keys", KEYS_FILE=str(keys_file))
    for method, path in (("GET", "/keys"), ("POST", "/keys"), ("GET", "/openapi.json")):
        answer = await call(http, method, f"{proxy.manage_url}/manage{path}")
        assert_error(answer, 404, "unknown_url")


# --- bad input ---------------------------------------------------------------------------------

GOOD = {"name": "n", "tenant": "team-a"}


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"{oops", "invalid_json", None),
        (b"", "invalid_json", None),
        (b"[]", "invalid_request", None),
        (b'{"tenant": "team-a"}', "missing_required_parameter", "name"),
        (b'{"name": "n"}', "missing_required_parameter", "tenant"),
        ({**GOOD, "colour": "red"}, "invalid_request", "colour"),
        ({**GOOD, "limits": {"rpm": 3}}, "invalid_request", "limits.rpm"),
        ({**GOOD, "name": 3}, "invalid_request", "name"),
        ({**GOOD, "name": ""}, "invalid_request", "name"),
        ({**GOOD, "name": "x" * 201}, "invalid_request", "name"),
        ({**GOOD, "tenant": ""}, "invalid_request", "tenant"),
        ({**GOOD, "tenant": "a b"}, "invalid_request", "tenant"),
        ({**GOOD, "tenant": "team-a\n"}, "invalid_request", "tenant"),
        ({**GOOD, "tenant": "team-a/"}, "invalid_request", "tenant"),
        ({**GOOD, "tenant": "x" * 129}, "invalid_request", "tenant"),
        ({**GOOD, "models": []}, "invalid_request", "models"),
        ({**GOOD, "models": "gpt-4o"}, "invalid_request", "models"),
        ({**GOOD, "models": [""]}, "invalid_request", "models[0]"),
        ({**GOOD, "limits": {"requests_per_minute": -1}}, "invalid_request",
         "limits.requests_per_minute"),
        ({**GOOD, "limits": {"budget_tokens": 1.5}}, "invalid_request", "limits.budget_tokens"),
        ({**GOOD, "limits": {"budget_period": "weekly"}}, "invalid_request",
         "limits.budget_period"),
        ({**GOOD, "expires_at": -5}, "invalid_request", "expires_at"),
        ({**GOOD, "expires_at": "tomorrow"}, "invalid_request", "expires_at"),
        ({**GOOD, "metadata": {"k": 1}}, "invalid_request", "metadata"),
        ({**GOOD, "metadata": {"": "v"}}, "invalid_request", "metadata"),
    ],
)  # fmt: skip
async def test_bad_create_bodies_get_clear_400s(
    manage: ProxyProcess, http: aiohttp.ClientSession, body: object, code: str,
    param: str | None,
) -> None:  # fmt: skip
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    answer = await call(http, "POST", f"{manage.manage_url}/manage/keys", data=data)
    assert_error(answer, 400, code, param)
    assert answer[1]["error"]["type"] == "invalid_request_error"


async def test_bad_patches_unknown_ids_and_methods(
    manage: ProxyProcess, http: aiohttp.ClientSession, request: pytest.FixtureRequest
) -> None:
    url = f"{manage.manage_url}/manage"
    _, created = await call(http, "POST", f"{url}/keys",
                            json={**GOOD, "tenant": unique_tenant(request)})  # fmt: skip
    key_url = f"{url}/keys/{created['id']}"
    assert_error(await call(http, "PATCH", key_url, json={"tenant": "b"}), 400, "invalid_request",
                 "tenant")  # fmt: skip
    assert_error(await call(http, "PATCH", key_url, json={"active": "no"}), 400,
                 "invalid_request", "active")  # fmt: skip
    assert_error(await call(http, "PATCH", key_url, json={"name": None}), 400, "invalid_request",
                 "name")  # fmt: skip
    assert_error(await call(http, "PATCH", key_url, json={"limits": {"tokens_per_minute": -2}}),
                 400, "invalid_request", "limits.tokens_per_minute")  # fmt: skip
    status, unchanged = await call(http, "PATCH", key_url, json={})
    assert status == 200 and unchanged == {k: v for k, v in created.items() if k != "key"}

    for method, path in (("GET", "/keys/key_nope"), ("PATCH", "/keys/key_nope"),
                         ("POST", "/keys/key_nope/revoke"), ("POST", "/keys/key_nope/rotate"),
                         ("GET", "/usage/keys/key_nope")):  # fmt: skip
        answer = await call(http, method, f"{url}{path}", json={} if method == "PATCH" else None)
        assert_error(answer, 404, "key_not_found", "key_id")
    answer = await call(http, "GET", f"{url}/usage/tenants/nobody-{time.time_ns()}")
    assert_error(answer, 404, "tenant_not_found", "tenant")
    assert_error(await call(http, "GET", f"{url}/nothing"), 404, "unknown_url")
    assert_error(await call(http, "DELETE", key_url), 405, "method_not_allowed")
    answer = await call(http, "POST", f"{url}/keys", data=b'{"name": "' + b"x" * 70_000 + b'"}')
    assert_error(answer, 413, "request_too_large")


async def test_redis_down_is_a_503(
    proxy_factory: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    proxy = proxy_factory(AUTH_MODE="keys", MANAGEMENT_TOKEN=TOKEN, REDIS_URL=dead_redis,
                          REDIS_TIMEOUT="0.2")  # fmt: skip
    calls = [("GET", "/keys", None), ("POST", "/keys", GOOD), ("GET", "/keys/key_x", None),
             ("GET", "/usage/tenants/t", None)]  # fmt: skip
    for method, path, body in calls:
        answer = await call(http, method, f"{proxy.manage_url}/manage{path}", json=body)
        assert_error(answer, 503, "store_unavailable")
    assert "management_store_unavailable" in proxy.log_text()


# --- usage -----------------------------------------------------------------------------------


async def test_usage_of_a_key_and_of_a_tenant(
    manage: ProxyProcess, http: aiohttp.ClientSession, redis: aioredis.Redis,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    tenant, url = unique_tenant(request), f"{manage.manage_url}/manage"
    limits = {"requests_per_minute": 100, "tokens_per_minute": 10_000, "budget_tokens": 10**6}
    _, one = await call(http, "POST", f"{url}/keys", json={**GOOD, "tenant": tenant,
                                                           "limits": limits})  # fmt: skip
    _, two = await call(http, "POST", f"{url}/keys", json={**GOOD, "tenant": tenant,
                                                           "limits": limits})  # fmt: skip
    store = KeyStore(redis, cache_ttl=0, timeout=2)
    limiter = RateLimiter(redis, timeout=2, fail_open=False)
    if time.time() % 60 > 57:  # counters are per UTC minute: do not straddle one
        await asyncio.sleep(60 - time.time() % 60 + 0.1)
    for created, requests, tokens in ((one, 2, 30), (two, 1, 12)):
        record = await store.get(created["id"])
        assert record is not None
        for _ in range(requests):
            verdict = await limiter.admit(record)
            assert verdict is not None and verdict.allowed
        for charge in limiter.charges(record, None, tokens):
            await redis.incrby(charge.key, charge.amount)

    status, usage = await call(http, "GET", f"{url}/usage/keys/{one['id']}")
    assert status == 200
    assert usage == {"key_id": one["id"], "tenant": tenant, "requests_this_minute": 2,
                     "tokens_this_minute": 30, "budget_tokens_used": 30,
                     "budget_period": "monthly", "spend_usd": 0.0, "spend_nano_usd": 0,
                     "budget_usd": 0.0, "budget_usd_remaining": None,
                     "budget_soft_limit_reached": False}  # fmt: skip
    status, usage = await call(http, "GET", f"{url}/usage/tenants/{tenant}")
    assert status == 200
    assert usage["total"] == {"requests_this_minute": 3, "tokens_this_minute": 42,
                              "budget_tokens_used": 42, "spend_usd": 0.0,
                              "spend_nano_usd": 0}  # fmt: skip
    assert {k["key_id"]: k["requests_this_minute"] for k in usage["keys"]} == {
        one["id"]: 2,
        two["id"]: 1,
    }


async def test_sub_tenants_have_their_own_usage_url(
    manage: ProxyProcess, http: aiohttp.ClientSession, request: pytest.FixtureRequest
) -> None:
    tenant, url = f"{unique_tenant(request)}/search", f"{manage.manage_url}/manage"
    status, created = await call(http, "POST", f"{url}/keys", json={**GOOD, "tenant": tenant})
    assert status == 201
    status, usage = await call(http, "GET", f"{url}/usage/tenants/{tenant}")
    assert (status, [k["key_id"] for k in usage["keys"]]) == (200, [created["id"]])


async def test_openapi_document_describes_the_api(
    manage: ProxyProcess, http: aiohttp.ClientSession
) -> None:
    status, document = await call(http, "GET", f"{manage.manage_url}/manage/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.1")
    assert document["servers"] == [{"url": "/manage"}]
    assert set(document["paths"]) == {
        "/keys", "/keys/{key_id}", "/keys/{key_id}/revoke", "/keys/{key_id}/rotate",
        "/usage/keys/{key_id}", "/usage/tenants/{tenant}", "/tenants/{tenant}/limits",
        "/openapi.json",
    }  # fmt: skip
    create = document["paths"]["/keys"]["post"]
    assert create["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreatedKey"
    }
    schemas = document["components"]["schemas"]
    assert schemas["CreateKey"]["additionalProperties"] is False
    assert schemas["CreateKey"]["required"] == ["name", "tenant"]


# --- the proxy itself --------------------------------------------------------------------------

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def chat_status(http: aiohttp.ClientSession, base_url: str, key: str) -> int:
    async with http.post(f"{base_url}/v1/chat/completions", json=CHAT,
                         headers={"Authorization": f"Bearer {key}"}) as response:  # fmt: skip
        await response.read()
        return response.status


async def test_keys_made_through_the_api_authenticate_and_never_leak(
    manage: ProxyProcess, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis, request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    proxy = manage
    url = f"{proxy.manage_url}/manage"
    tenant = unique_tenant(request)
    body = {"name": "app", "tenant": tenant, "models": ["gpt-4o*"]}
    status, created = await call(http, "POST", f"{url}/keys", json=body)
    assert status == 201, created
    key = created["key"]
    assert await chat_status(http, proxy.base_url, key) == 200

    status, rotated = await call(http, "POST", f"{url}/keys/{created['id']}/rotate")
    assert status == 200
    assert await chat_status(http, proxy.base_url, key) == 401
    assert await chat_status(http, proxy.base_url, rotated["key"]) == 200

    status, _ = await call(http, "POST", f"{url}/keys/{created['id']}/revoke")
    assert status == 200
    assert await chat_status(http, proxy.base_url, rotated["key"]) == 401

    assert_error(await call(http, "GET", f"{url}/keys", headers={}), 401,
                 "invalid_management_token")  # fmt: skip
    contents, log = await redis_contents(redis), proxy.log_text()
    for secret in (key, rotated["key"], TOKEN):
        assert secret.encode() not in contents
        assert secret not in log
        assert secret[3:] not in log
    assert created["id"] in log  # the audit lines name the key by id
