"""The SSE tap: usage found, usage-only chunk removed only when the gateway asked for it, and the
bytes otherwise passed through exactly, however the network splits them."""

from __future__ import annotations

import itertools

import orjson
from hypothesis import given
from hypothesis import strategies as st

from llm_gateway_proxy.streaming import SSETap
from llm_gateway_proxy.usage import Usage

USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14,
         "prompt_tokens_details": {"cached_tokens": 4},
         "completion_tokens_details": {"reasoning_tokens": 1}}  # fmt: skip


def chunk(payload: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chat_stream(*, with_usage: bool) -> tuple[bytes, bytes]:
    """The whole stream, and the same stream without its usage-only chunk."""
    base = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini-2024-07-18"}
    null = {"usage": None} if with_usage else {}
    body = [chunk({**base, "choices": [{"index": 0, "delta": {"content": w}}], **null})
            for w in ("Hel", "lo", "!")]  # fmt: skip
    usage_chunk = chunk({**base, "choices": [], "usage": USAGE}) if with_usage else b""
    done = b"data: [DONE]\n\n"
    return b"".join(body) + usage_chunk + done, b"".join(body) + done


def run(tap: SSETap, pieces: list[bytes]) -> bytes:
    return b"".join(tap.feed(piece) for piece in pieces) + tap.flush()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def test_strips_usage_chunk_the_gateway_asked_for() -> None:
    full, stripped = chat_stream(with_usage=True)
    tap = SSETap(strip_usage_chunk=True)
    assert run(tap, [full]) == stripped
    assert tap.usage == Usage(prompt=11, completion=3, total=14, cached=4, reasoning=1)
    assert tap.response_model == "gpt-4o-mini-2024-07-18"


def test_keeps_usage_chunk_the_client_asked_for() -> None:
    full, _ = chat_stream(with_usage=True)
    tap = SSETap(strip_usage_chunk=False)
    assert run(tap, [full]) == full
    assert tap.usage is not None and tap.usage.total == 14


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=12))
def test_any_network_split_gives_the_same_bytes_and_usage(cuts: list[int]) -> None:
    full, stripped = chat_stream(with_usage=True)
    for strip, expected in ((True, stripped), (False, full)):
        tap = SSETap(strip_usage_chunk=strip)
        assert run(tap, split(full, cuts)) == expected
        assert tap.usage is not None and tap.usage.total == 14


def test_passthrough_mode_forwards_partial_events_at_once() -> None:
    full, _ = chat_stream(with_usage=True)
    tap = SSETap(strip_usage_chunk=False)
    assert tap.feed(full[:7]) == full[:7]


def test_crlf_framing() -> None:
    full, stripped = chat_stream(with_usage=True)
    crlf_full = full.replace(b"\n", b"\r\n")
    tap = SSETap(strip_usage_chunk=True)
    assert run(tap, split(crlf_full, [10, 200, 333])) == stripped.replace(b"\n", b"\r\n")
    assert tap.usage is not None and tap.usage.prompt == 11


def test_responses_api_usage_from_completed_event() -> None:
    created = {"type": "response.created", "response": {"model": "gpt-4o", "usage": None}}
    completed = {"type": "response.completed", "response": {"model": "gpt-4o", "usage": {
        "input_tokens": 9, "output_tokens": 5, "total_tokens": 14,
        "input_tokens_details": {"cached_tokens": 2},
        "output_tokens_details": {"reasoning_tokens": 3}}}}  # fmt: skip
    stream = (b"event: response.created\n" + chunk(created)
              + b"event: response.completed\n" + chunk(completed))  # fmt: skip
    tap = SSETap(strip_usage_chunk=False)
    assert run(tap, [stream]) == stream
    assert tap.usage == Usage(prompt=9, completion=5, total=14, cached=2, reasoning=3)
    assert tap.response_model == "gpt-4o"


def test_stream_without_usage_counts_events_for_an_estimate() -> None:
    full, _ = chat_stream(with_usage=False)
    tap = SSETap(strip_usage_chunk=True)
    assert run(tap, [full]) == full
    assert tap.usage is None
    assert tap.events == 4


def test_error_event_is_noticed() -> None:
    tap = SSETap(strip_usage_chunk=False)
    tap.feed(chunk({"error": {"message": "overloaded", "type": "server_error"}}))
    assert tap.errored
