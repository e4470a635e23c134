"""No path form walks around the access layer, and no path leaves the provider's base path."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import orjson
import pytest
import redis.asyncio as aioredis

from llm_gateway_fakes.openai import FakeOpenAI
from llm_gateway_proxy.errors import InvalidPath
from llm_gateway_proxy.keys import KeyRecord, Limits, hash_key, new_key, new_key_id
from llm_gateway_proxy.paths import CanonicalPaths, PathTable, check_path
from llm_gateway_proxy.settings import DEFAULT_PASSTHROUGH
from tests.conftest import ProxyFactory
from tests.support.events import event_for
from tests.support.rawhttp import ScriptedUpstream, ok_json, raw_request
from tests.support.services import BIN

GPT4O = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})

# Every spelling of "chat completions, but not quite", and of "somewhere else".
REFUSED_400 = [
    b"/v1/./chat/completions",
    b"/v1/../v1/chat/completions",
    b"/v1/..%2Fv1%2Fchat%2Fcompletions",
    b"/v1/chat%2Fcompletions",
    b"/v1/chat%2fcompletions",
    b"/v1//chat/completions",
    b"/v1/chat/completions/",
    b"/v1/%2E/chat/completions",
    b"/v1/%2e%2e/v1/chat/completions",
    b"/v1/chat/completions%3F",
    b"/v1/chat/completions%23x",
    b"/v1/chat%5Ccompletions",
    b"/v1/chat\\completions",
    b"/v1/chat/completions%00",
    b"/v1/chat/%252E%252E/completions",
    b"/v1/chat/compl\xc3\xa9tions",
    b"/v1/chat/%ff",
    b"//v1/chat/completions",
]
REFUSED_BY_HTTP_PARSER = {b"/v1/chat/compl\xc3\xa9tions"}
REFUSED_404 = [b"/V1/chat/completions", b"/v1/Chat/Completions", b"/v1/chat/completions/x/y",
               b"/v1/assistants", b"/v1/threads/t1/runs", b"/v1"]  # fmt: skip


@pytest.mark.parametrize("raw", REFUSED_400)
def test_ambiguous_raw_paths_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidPath):
        check_path(raw)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (b"/v1/chat/completions", "/v1/chat/completions"),
        (b"/v1/%63hat/completions", "/v1/chat/completions"),  # one reading: it IS chat
        (b"/v1/models/ft%3Agpt-4o%3Aacme", "/v1/models/ft:gpt-4o:acme"),
        (b"/v1/files/file-AbC_12.3", "/v1/files/file-AbC_12.3"),
    ],
)
def test_unambiguous_paths_decode_once(raw: bytes, canonical: str) -> None:
    assert check_path(raw) == canonical


async def test_paths_remembered_by_the_middleware_are_checked_all_the_same() -> None:
    """CanonicalPaths remembers the canonical form of raw paths it accepted (a bounded table):
    a remembered path reaches the app canonical each time, a refused one is refused each time,
    and once the table is full every new path is still checked."""
    seen: list[str] = []
    statuses: list[int] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen.append(str(scope["path"]))

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(str(message["status"])))

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    middleware = CanonicalPaths(app)

    async def call(raw: bytes) -> None:
        scope = {"type": "http", "method": "POST", "path": raw.decode("latin-1"),
                 "raw_path": raw, "query_string": b"", "headers": []}  # fmt: skip
        await middleware(scope, receive, send)

    for _ in range(2):
        await call(b"/v1/%63hat/completions")
        await call(b"/v1/../v1/chat/completions")
    assert (seen, statuses) == (["/v1/chat/completions"] * 2, [400, 400])
    for n in range(1100):
        await call(b"/v1/files/file-%d" % n)
    for raw in REFUSED_400:
        await call(raw)
    assert statuses == [400] * (2 + len(REFUSED_400))
    assert seen[-1] == "/v1/files/file-1099"


def test_path_table_meters_posts_and_forwards_only_what_is_allowed() -> None:
    table = PathTable(DEFAULT_PASSTHROUGH)
    chat = table.resolve("POST", "/v1/chat/completions")
    assert chat is not None and chat.api is not None and chat.forward_path == "/chat/completions"
    listing = table.resolve("GET", "/v1/chat/completions")  # stored completions: pass-through
    assert listing is not None and listing.api is None
    content = table.resolve("GET", "/v1/files/file-1/content")
    assert content is not None and content.forward_path == "/files/file-1/content"
    assert table.resolve("POST", "/v1/assistants") is None
    assert table.resolve("GET", "/v1/Models") is None
    assert PathTable(()).resolve("GET", "/v1/models") is None
    model = table.resolve("GET", "/v1/models/ft:a b")
    assert model is not None and model.forward_path == "/models/ft:a%20b"
    images = table.resolve("POST", "/v1/images/generations")
    assert images is not None and images.runs_a_model("POST")
    upload = table.resolve("POST", "/v1/files")
    assert upload is not None and not upload.runs_a_model("POST")


def _key_record(key: str, **fields: object) -> KeyRecord:
    return KeyRecord(id=new_key_id(), key_hash=hash_key(key), name="t", tenant="team-a",
                     created_at=time.time(), **fields)  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedUpstream]:
    server = await ScriptedUpstream().start()
    yield server
    await server.stop()


async def test_no_path_form_reaches_the_provider_around_the_access_checks(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """The reproduced bypass: a key for gpt-4o-mini only, with a 5-token budget, must not get
    gpt-4o through any spelling of the chat completions path."""
    key = new_key()
    limits = Limits(budget_tokens=5, budget_period="total")
    record = _key_record(key, models=("gpt-4o-mini",), limits=limits)
    keys = tmp_path / "keys.json"
    keys.write_bytes(msgspec.json.encode([record]))
    proxy = proxy_factory(AUTH_MODE="keys", KEYS_FILE=str(keys))
    auth = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    cases = [(b"/v1/chat/completions", 403), (b"/v1/%63hat/completions", 403)]
    cases += [(r, 400) for r in REFUSED_400] + [(r, 404) for r in REFUSED_404]
    for raw, expected in cases:
        answer = await raw_request(proxy.port, "POST", raw, headers=auth, body=GPT4O)
        assert answer.status == expected, raw
        if raw in REFUSED_BY_HTTP_PARSER:  # h11 refuses the request line before the app runs
            assert answer.body == b"", raw
            continue
        error = answer.json()["error"]  # type: ignore[index]
        assert set(error) == {"message", "type", "param", "code"}, raw
    assert upstream.received == []


async def test_paths_never_leave_the_base_path_of_an_azure_style_provider(
    proxy_factory: ProxyFactory, scripted: ScriptedUpstream
) -> None:
    base = f"http://127.0.0.1:{scripted.port}/openai/v1"
    proxy = proxy_factory(UPSTREAM_OPENAI_BASE_URL=base)
    for raw in (b"/v1/files/..%2F..%2Fadmin", b"/v1/files/%2e%2e/%2e%2e/admin",
                b"/v1/files/../../admin", b"/v1/models/x%2F..%2F..%2Fadmin"):  # fmt: skip
        answer = await raw_request(proxy.port, "GET", raw)
        assert answer.status == 400, raw
    answer = await raw_request(proxy.port, "GET", b"/v1/files/file-1/content?limit=2")
    assert answer.status == 200
    answer = await raw_request(proxy.port, "GET", b"/v1/models/ft%3Agpt-4o%3Aacme")
    assert answer.status == 200
    assert scripted.targets == [b"/openai/v1/files/file-1/content?limit=2",
                                b"/openai/v1/models/ft:gpt-4o:acme"]  # fmt: skip


async def test_only_allowed_passthrough_paths_are_forwarded(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    closed = proxy_factory(PASSTHROUGH_PATHS="none")
    async with http.get(f"{closed.base_url}/v1/models") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "unknown_url"
    narrow = proxy_factory(PASSTHROUGH_PATHS="models, fine_tuning/jobs")
    async with http.get(f"{narrow.base_url}/v1/models") as response:
        assert response.status == 200
    async with http.get(f"{narrow.base_url}/v1/files") as response:
        assert response.status == 404
    async with http.post(f"{narrow.base_url}/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "x"}]}) as response:  # fmt: skip
        assert response.status == 200  # metered APIs do not depend on the pass-through list
    assert [r.path for r in upstream.received] == ["/v1/models", "/v1/chat/completions"]


def test_bad_passthrough_list_stops_startup() -> None:
    env = {"PATH": os.environ.get("PATH", ""), "AUTH_MODE": "none",
           "PASSTHROUGH_PATHS": "files/../admin"}  # fmt: skip
    result = subprocess.run([str(BIN / "llm-gateway-proxy")], env=env, capture_output=True,
                            timeout=30, check=False)  # fmt: skip
    assert result.returncode == 2
    assert b"PASSTHROUGH_PATHS" in result.stderr


async def test_paid_passthrough_is_checked_metered_and_attributed(
    proxy_factory: ProxyFactory, scripted: ScriptedUpstream, redis: aioredis.Redis,
    tmp_path: Path,
) -> None:  # fmt: skip
    usage = {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210}
    scripted.answer = lambda target: ok_json({"created": 1, "data": [], "usage": usage})
    key = new_key()
    record = _key_record(key, models=("gpt-image-1",))
    keys = tmp_path / "keys.json"
    keys.write_bytes(msgspec.json.encode([record]))
    base = f"http://127.0.0.1:{scripted.port}/v1"
    proxy = proxy_factory(AUTH_MODE="keys", KEYS_FILE=str(keys), UPSTREAM_OPENAI_BASE_URL=base)
    auth = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]

    async def post(path: bytes, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
        answer = await raw_request(proxy.port, "POST", path, headers=headers, body=body)
        return answer.status

    # Another model, or none (the provider would pick its default), or a batch: refused.
    assert await post(b"/v1/images/generations", b'{"model":"dall-e-3","prompt":"x"}', auth) == 403
    assert await post(b"/v1/images/generations", b'{"prompt":"x"}', auth) == 403
    assert await post(b"/v1/batches", b'{"input_file_id":"f","endpoint":"/v1/chat/completions"}',
                      auth) == 403  # fmt: skip
    boundary = b"XyZ"
    form = (b"--XyZ\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
            b"--XyZ\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            b"content-type: audio/wav\r\n\r\nRIFF....\r\n--XyZ--\r\n")  # fmt: skip
    multipart = [auth[0], (b"content-type", b"multipart/form-data; boundary=" + boundary)]
    assert await post(b"/v1/audio/transcriptions", form, multipart) == 403
    assert scripted.targets == []
    # The allowed model: forwarded, and what the provider reports is metered to the key.
    answer = await raw_request(proxy.port, "POST", b"/v1/images/generations", headers=auth,
                               body=b'{"model":"gpt-image-1","prompt":"x"}')  # fmt: skip
    assert answer.status == 200
    event = await event_for(redis, answer.headers["x-llm-request-id"])
    assert (event.key_id, event.tenant, event.model) == (record.id, "team-a", "gpt-image-1")
    assert (event.prompt_tokens, event.completion_tokens, event.usage_source) == (
        50, 4160, "provider")  # fmt: skip
