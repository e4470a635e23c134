"""The wire never lies: bad input is a 4xx (never a 500 the SDKs would retry), and an answer that
cannot be completed is visibly incomplete, to the client and in the event."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis
from starlette.exceptions import HTTPException
from starlette.requests import Request

from llm_gateway_fakes.openai import FakeOpenAI
from llm_gateway_proxy.app import _http_error
from tests.conftest import ProxyFactory
from tests.support.events import event_for
from tests.support.rawhttp import ScriptedUpstream, raw_request
from tests.support.services import ProxyProcess

JSON = [(b"content-type", b"application/json")]


def chat(content: bytes = b'"hi"', extra: bytes = b"", model: bytes = b'"gpt-4o-mini"') -> bytes:
    return (b'{"model":' + model + b',"messages":[{"role":"user","content":' + content + b"}]"
            + extra + b"}")  # fmt: skip


BAD_BODIES = {
    "nested 1200 deep": chat(b"[" * 1200 + b"]" * 1200),
    "nested 1200 deep in an unknown field": chat(extra=b',"x":' + b"[" * 1200 + b"]" * 1200),
    "invalid UTF-8 in model": chat(model=b'"gpt\xff"'),
    "invalid UTF-8 in role": b'{"model":"m","messages":[{"role":"us\xc3er","content":"x"}]}',
    "invalid UTF-8 in content": chat(b'"h\xe9llo"'),
    "invalid UTF-8 in user": chat(extra=b',"user":"\xff"'),
    "invalid UTF-8 in an unknown field": chat(extra=b',"vendor_field":"\xfe\xff"'),
    "max_tokens of the wrong type": chat(extra=b',"max_tokens":"12"'),
    "n not an integer": chat(extra=b',"n":1.5'),
    "tools not a list": chat(extra=b',"tools":{"type":"function"}'),
    "stream_options with a number out of range": chat(
        extra=b',"stream":true,"stream_options":{"include_usage":false},"x":1e400'
    ),
    "not an object": b"[1,2,3]",
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
async def test_bad_bodies_are_refused_with_400_and_never_forwarded(
    name: str, proxy: ProxyProcess, upstream: FakeOpenAI
) -> None:
    answer = await raw_request(proxy.port, "POST", b"/v1/chat/completions", headers=JSON,
                               body=BAD_BODIES[name])  # fmt: skip
    assert answer.status == 400, answer.body
    error = answer.json()["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error"
    assert upstream.received == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (b"/v1/embeddings", b'{"model":"e","input":"\xff"}'),
        (b"/v1/completions", b'{"model":"c","prompt":"\xff"}'),
        (b"/v1/responses", b'{"model":"r","input":"\xff"}'),
        (b"/v1/images/generations", b'{"model":"i","prompt":"\xff"}'),
    ],
)
async def test_invalid_utf8_is_refused_on_every_api(
    path: bytes, body: bytes, proxy: ProxyProcess, upstream: FakeOpenAI
) -> None:
    answer = await raw_request(proxy.port, "POST", path, headers=JSON, body=body)
    assert answer.status == 400
    assert upstream.received == []


@pytest.mark.parametrize(
    "extra",
    [b',"x":' + b"[" * 300 + b"]" * 300, b',"x":1e400', b',"x":' + b"9" * 5000],
    ids=["nested 300 deep", "1e400", "5000-digit integer"],
)
async def test_streams_ask_for_usage_without_reencoding_what_the_client_sent(
    extra: bytes, proxy: ProxyProcess, upstream: FakeOpenAI
) -> None:
    """Valid JSON that a JSON library cannot round-trip still streams: the gateway splices
    `stream_options` in and leaves every other byte as sent."""
    body = chat(extra=b',"stream":true' + extra)
    answer = await raw_request(proxy.port, "POST", b"/v1/chat/completions", headers=JSON,
                               body=body)  # fmt: skip
    assert answer.status != 500
    forwarded = upstream.received[-1].body
    assert forwarded.replace(b'"stream_options":{"include_usage":true},', b"", 1) == body


async def test_header_with_a_control_byte_is_a_400(
    proxy: ProxyProcess, upstream: FakeOpenAI
) -> None:
    for value in (b"a\x01b", b"a\x7fb", b"\xff\xfe"):
        answer = await raw_request(proxy.port, "POST", b"/v1/chat/completions",
                                   headers=[*JSON, (b"x-custom", value)], body=chat())  # fmt: skip
        assert answer.status == 400, value
    assert upstream.received == []


async def test_every_framework_status_is_an_openai_error() -> None:
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "query_string": b""}
    for status in (400, 408, 411, 413, 415, 422, 431, 503):
        response = await _http_error(Request(scope), HTTPException(status, "nope"))
        assert response.status_code == status
        error = orjson.loads(response.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedUpstream]:
    server = await ScriptedUpstream().start()
    yield server
    await server.stop()


def _answer(head: str, body: bytes) -> bytes:
    return f"HTTP/1.1 200 OK\r\n{head}\r\n\r\n".encode() + body


async def test_a_body_cut_off_upstream_is_incomplete_downstream(
    proxy_factory: ProxyFactory, scripted: ScriptedUpstream, redis: aioredis.Redis
) -> None:
    proxy = proxy_factory(UPSTREAM_OPENAI_BASE_URL=f"http://127.0.0.1:{scripted.port}/v1")
    cuts = {
        b"/v1/files/declared": _answer(
            "content-type: application/json\r\ncontent-length: 400",
            b'{"object":"list","data":[{"id":"file-1"',
        ),
        b"/v1/files/chunked": _answer(
            "content-type: application/json\r\ntransfer-encoding: chunked",
            b'10\r\n{"object":"list"\r\n',
        ),
    }
    scripted.answer = lambda target: cuts[target]
    for target in cuts:
        answer = await raw_request(proxy.port, "GET", target)
        assert answer.status == 200
        assert not answer.complete, target  # never a complete-looking 200
        assert b"data:" not in answer.body
        event = await event_for(redis, answer.headers["x-llm-request-id"])
        assert (event.outcome, event.error_type) == ("upstream_error", "upstream_incomplete")


async def test_a_stream_cut_off_upstream_ends_with_an_error_event(
    proxy_factory: ProxyFactory, scripted: ScriptedUpstream, redis: aioredis.Redis
) -> None:
    proxy = proxy_factory(UPSTREAM_OPENAI_BASE_URL=f"http://127.0.0.1:{scripted.port}/v1")
    first = b'data: {"id":"c1","model":"gpt-4o-mini","choices":[{"delta":{"content":"a"}}]}\n\n'
    cut = b'data: {"id":"c1","choices":[{"del'
    scripted.answer = lambda target: _answer(
        "content-type: text/event-stream\r\ntransfer-encoding: chunked",
        f"{len(first) + len(cut):x}\r\n".encode() + first + cut + b"\r\n",
    )
    answer = await raw_request(proxy.port, "POST", b"/v1/chat/completions", headers=JSON,
                               body=chat(extra=b',"stream":true'))  # fmt: skip
    assert answer.status == 200
    # What was cut off may or may not have been forwarded (the tap holds back an incomplete
    # event when it may have to drop it); the stream then ends with a whole error event.
    assert answer.body.startswith(first)
    tail = answer.body[len(first) :].removeprefix(cut)
    assert tail.startswith(b"\n\ndata: {") and tail.endswith(b"}\n\n")
    error = orjson.loads(tail.strip()[len(b"data: ") :])["error"]
    assert error["code"] == "upstream_incomplete"
    event = await event_for(redis, answer.headers["x-llm-request-id"])
    assert (event.outcome, event.error_type) == ("upstream_error", "upstream_incomplete")
