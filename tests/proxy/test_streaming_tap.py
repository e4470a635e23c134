"""The SSE tap: usage found, usage-only chunk removed only when the gateway asked for it, and the
bytes otherwise passed through exactly, however the network splits them."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_gateway_proxy import streaming
from llm_gateway_proxy.streaming import MAX_EVENT_BYTES, SSETap
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


# --- the fast path: only events that may say something are parsed ---------------------------


def openai_stream(words: int, *, spaced: bool = False) -> tuple[list[bytes], bytes]:
    """A token-by-token chat stream as OpenAI frames it when `include_usage` is on (`"usage":null`
    in every chunk; `spaced`: `"usage": null`, as Python-served providers write it), one event
    per item, and the same stream as the client should get it without the usage-only chunk."""
    base = {"id": "c2", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06"}
    body = [chunk({**base, "choices": [{"index": 0, "delta": {"content": f"w{i} "}}],
                   "usage": None}) for i in range(words)]  # fmt: skip
    if spaced:
        body = [event.replace(b'"usage":null', b'"usage": null') for event in body]
    usage_chunk = chunk({**base, "choices": [], "usage": USAGE})
    done = b"data: [DONE]\n\n"
    return [*body, usage_chunk, done], b"".join(body) + done


def count_parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record every event the tap parses."""
    parsed: list[bytes] = []
    real = streaming._data_payload

    def recording(event: bytes) -> object:
        parsed.append(event)
        return real(event)

    monkeypatch.setattr(streaming, "_data_payload", recording)
    return parsed


@pytest.mark.parametrize("spaced", [False, True])
def test_null_usage_chunks_are_not_parsed(monkeypatch: pytest.MonkeyPatch, spaced: bool) -> None:
    events, stripped = openai_stream(200, spaced=spaced)
    parsed = count_parses(monkeypatch)
    tap = SSETap(strip_usage_chunk=True)
    assert run(tap, events) == stripped
    assert parsed == [events[0], events[-2]]  # the first (model) and the usage chunk
    assert tap.usage is not None and tap.usage.total == 14
    assert (tap.response_model, tap.events) == ("gpt-4o-2024-08-06", 202)


def test_an_error_anywhere_in_an_event_is_noticed_after_the_model_is_known() -> None:
    events, _ = openai_stream(3)
    failure = chunk({"id": "c2", "error": {"message": "overloaded", "type": "server_error"}})
    tap = SSETap(strip_usage_chunk=False)
    assert run(tap, [*events[:3], failure]) == b"".join(events[:3]) + failure
    assert tap.errored


def test_usage_as_a_word_in_the_text_costs_a_parse_and_changes_nothing() -> None:
    base = {"id": "c3", "model": "m", "usage": None}
    text = [chunk({**base, "choices": [{"delta": {"content": w}}]}) for w in ("usage", '"usage"')]
    tap = SSETap(strip_usage_chunk=True)
    assert run(tap, text) == b"".join(text)
    assert tap.usage is None


def mixed_stream() -> tuple[bytes, bytes]:
    """Compact and spaced nulls, a comment, CR-free framing, usage at the end."""
    events, _ = openai_stream(12)
    spaced, _ = openai_stream(12, spaced=True)
    comment = b": keep-alive\n\n"
    body = [*events[:6], comment, *spaced[6:12]]
    full = b"".join([*body, events[-2], events[-1]])
    return full, b"".join([*body, events[-1]])


@given(st.lists(st.integers(min_value=0, max_value=100_000), max_size=40), st.booleans())
def test_fast_path_gives_the_same_bytes_usage_and_model_for_any_split(
    cuts: list[int], crlf: bool
) -> None:
    full, stripped = mixed_stream()
    if crlf:
        full, stripped = full.replace(b"\n", b"\r\n"), stripped.replace(b"\n", b"\r\n")
    for strip, expected in ((True, stripped), (False, full)):
        whole = SSETap(strip_usage_chunk=strip)  # one piece: every event parsed
        assert run(whole, [full]) == expected
        tap = SSETap(strip_usage_chunk=strip)
        assert run(tap, split(full, cuts)) == expected
        assert (tap.usage, tap.response_model, tap.errored, tap.events) == (
            whole.usage, whole.response_model, whole.errored, whole.events)  # fmt: skip
        assert tap.usage is not None and tap.usage.total == 14


def test_responses_api_event_by_event_parses_only_what_may_carry_model_or_usage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def named(name: str, payload: dict[str, object]) -> bytes:
        return f"event: {name}\n".encode() + chunk({"type": name, **payload})

    created = named("response.created", {"response": {"model": "gpt-4o", "usage": None}})
    deltas = [named("response.output_text.delta", {"delta": f"w{i}"}) for i in range(50)]
    completed = named("response.completed", {"response": {"model": "gpt-4o", "usage": {
        "input_tokens": 9, "output_tokens": 50, "total_tokens": 59}}})  # fmt: skip
    parsed = count_parses(monkeypatch)
    tap = SSETap(strip_usage_chunk=False)
    events = [created, *deltas, completed]
    assert run(tap, events) == b"".join(events)
    assert parsed == [created, completed]
    assert tap.usage == Usage(prompt=9, completion=50, total=59)


@pytest.mark.parametrize("strip", [True, False])
def test_an_event_that_never_ends_is_not_held_in_memory(strip: bool) -> None:
    tap = SSETap(strip_usage_chunk=strip)
    piece = b"data: " + b"x" * (1 << 20)
    forwarded = b"".join(tap.feed(piece) for _ in range(MAX_EVENT_BYTES // len(piece) + 2))
    assert len(forwarded) >= MAX_EVENT_BYTES  # what was held went on, once it was too much
    later = b'data: {"model":"m","usage":{"prompt_tokens":1}}\n\n'
    assert tap.feed(later) == later  # from then on, bytes pass as they come
    assert forwarded + later == piece * (MAX_EVENT_BYTES // len(piece) + 2) + later
