"""How one usage event becomes a Lunary run and a Helicone log (no processes)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson

from llm_gateway_common.events import UsageEvent
from llm_gateway_dispatcher.captures import assemble_stream, response_body
from llm_gateway_dispatcher.helicone import log_body, log_headers
from llm_gateway_dispatcher.lunary import encode_run, run_events
from llm_gateway_dispatcher.outcomes import delivery_id
from tests.support.events import make_event

SNAPSHOT = "gpt-4o-mini-2024-07-18"
STARTED = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
REQUEST = {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0.2, "max_tokens": 50}
ANSWER = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": SNAPSHOT,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello there"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}  # fmt: skip


def sse(*chunks: object) -> str:
    return "".join(f"data: {orjson.dumps(c).decode()}\n\n" for c in chunks) + "data: [DONE]\n\n"


def chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": SNAPSHOT,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip


STREAM = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "hello "}),
    chunk({"content": "there"}),
    chunk({}, "stop"),
    {**chunk({}), "choices": [], "usage": ANSWER["usage"]},
)


def captured_event(**overrides: object) -> UsageEvent:
    fields: dict[str, object] = {
        "started_at": STARTED, "finished_at": STARTED + timedelta(milliseconds=850),
        "latency_ms": 850.0, "ttfb_ms": 120.4, "user": "alice", "tenant": "acme",
        "model": "gpt-4o-mini", "response_model": "gpt-4o-mini-2024-07-18",
        "prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11, "cached_tokens": 4,
        "captured_request": orjson.dumps(REQUEST).decode(),
        "captured_response": orjson.dumps(ANSWER).decode(),
    }  # fmt: skip
    fields.update(overrides)
    return make_event(1, **fields)


def test_a_run_is_a_start_and_an_end_with_one_deterministic_uuid() -> None:
    event = captured_event()
    start, end = run_events(event)
    assert start["runId"] == end["runId"] == delivery_id(event)
    assert uuid.UUID(start["runId"]).version == 5
    assert run_events(event) == [start, end]
    assert (start["type"], start["event"], end["event"]) == ("llm", "start", "end")
    assert start["name"] == "gpt-4o-mini-2024-07-18"  # the model that answered: Lunary prices it
    assert start["timestamp"] == "2026-11-22T10:00:00.123Z"
    assert end["timestamp"] == "2026-11-22T10:00:00.973Z"
    assert start["userId"] == "alice"
    assert start["tags"] == ["tenant:acme", "provider:openai", "model:gpt-4o-mini"]
    assert start["metadata"]["model"] == "gpt-4o-mini"  # the public name the client sent
    assert start["input"] == MESSAGES
    assert start["params"] == {"temperature": 0.2, "max_tokens": 50}
    assert end["output"] == [{"role": "assistant", "content": "hello there"}]
    assert end["tokensUsage"] == {"prompt": 9, "completion": 2, "promptCached": 4}
    metadata = start["metadata"]
    assert metadata["tenant"] == "acme" and metadata["statusCode"] == 200
    assert metadata["latencyMs"] == 850.0 and metadata["endpoint"] == "/v1/chat/completions"
    assert all(isinstance(value, str | int | float | bool) for value in metadata.values())


def test_an_end_in_the_same_millisecond_as_its_start_is_nudged_after_it() -> None:
    event = make_event(2, started_at=STARTED, finished_at=STARTED + timedelta(microseconds=300))
    start, end = run_events(event)
    assert (start["timestamp"], end["timestamp"]) == (
        "2026-11-22T10:00:00.123Z", "2026-11-22T10:00:00.124Z",
    )  # fmt: skip
    assert "input" not in start and "output" not in end  # nothing captured: what the event knows
    assert "userId" not in start  # no user named: not the tenant (it is a tag), or every
    # anonymous request of a tenant would show as one Lunary user


def test_a_failed_request_sends_its_tokens_in_an_end_just_before_the_error() -> None:
    """Lunary's error handler keeps only the status and the error: the tokens (and the cost
    Lunary derives from them) must come in an `end`, stamped before the `error`."""
    event = make_event(3, outcome="client_disconnected", error_type="client_disconnected",
                       status_code=200, prompt_tokens=40, completion_tokens=7,
                       cached_tokens=8)  # fmt: skip
    start, end, error = run_events(event)
    assert [e["event"] for e in (start, end, error)] == ["start", "end", "error"]
    assert end["tokensUsage"] == {"prompt": 40, "completion": 7, "promptCached": 8}
    assert error["error"] == {"message": "client_disconnected (HTTP 200)"}
    assert start["timestamp"] < end["timestamp"] < error["timestamp"]
    assert start["runId"] == end["runId"] == error["runId"]
    assert start["metadata"]["errorType"] == "client_disconnected"


def test_nul_characters_are_removed_and_nothing_else() -> None:
    """PostgreSQL's jsonb refuses NUL: one in a captured body would lose the whole run."""
    request = {**REQUEST, "messages": [{"role": "user", "content": "a\x00b \\u0000 c"}]}
    event = captured_event(user="al\x00ice", captured_request=orjson.dumps(request).decode())
    encoded = encode_run(event)
    assert b"\\u0000" not in encoded.replace(b"\\\\u0000", b"")
    start, _ = orjson.loads(b"[" + encoded + b"]")
    assert start["userId"] == "alice"
    assert start["input"][0]["content"] == "ab \\u0000 c"  # an escaped backslash stays


def test_a_responses_request_shows_as_chat_messages() -> None:
    request = {
        "model": "gpt-4o-mini", "instructions": "Answer in French.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Say "},
                                         {"type": "input_text", "text": "hello"}]},
            {"type": "function_call", "name": "lookup", "arguments": '{"q":"x"}'},
            {"type": "function_call_output", "output": "found"},
        ],
    }  # fmt: skip
    captured = orjson.dumps(request).decode()
    start, _ = run_events(captured_event(endpoint="/v1/responses", captured_request=captured))
    assert start["input"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Say hello"},
        {"role": "assistant", "content": 'lookup({"q":"x"})'},
        {"role": "tool", "content": "found"},
    ]
    plain = {"model": "gpt-4o-mini", "input": "Bonjour"}
    start, _ = run_events(captured_event(captured_request=orjson.dumps(plain).decode()))
    assert start["input"] == [{"role": "user", "content": "Bonjour"}]


def test_a_stream_is_assembled_into_the_completion_it_became() -> None:
    assembled = assemble_stream(STREAM)
    assert assembled is not None
    assert assembled["choices"][0]["message"] == {"role": "assistant", "content": "hello there"}
    assert assembled["choices"][0]["finish_reason"] == "stop"
    assert assembled["usage"] == ANSWER["usage"]
    cut = captured_event(stream=True, captured_response=STREAM[:40],
                         captured_response_truncated=True)  # fmt: skip
    assert response_body(cut) is None


def test_a_helicone_log_carries_request_response_usage_and_timing() -> None:
    event = captured_event(stream=True, captured_response=STREAM)
    body = log_body(event)
    request = body["providerRequest"]
    assert request["url"] == "custom-model-nopath"
    assert request["json"] == {**REQUEST, "stream": False}
    assert request["meta"] == {}
    response = body["providerResponse"]
    assert response["status"] == 200 and response["headers"] == {}
    assert response["json"]["model"] == "gpt-4o-mini-2024-07-18"
    assert response["json"]["choices"][0]["message"]["content"] == "hello there"
    assert response["json"]["usage"] == {
        "prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11,
        "prompt_tokens_details": {"cached_tokens": 4},
    }  # fmt: skip
    assert body["timing"] == {
        "startTime": {"seconds": 1795341600, "milliseconds": 123},
        "endTime": {"seconds": 1795341600, "milliseconds": 973},
        "timeToFirstToken": 120,
    }
    headers = log_headers(event)
    assert headers["Helicone-Request-Id"] == delivery_id(event)
    assert headers["Helicone-User-Id"] == "alice"
    assert headers["Helicone-Property-Tenant"] == "acme"
    assert headers["Helicone-Property-Stream"] == "true"


def test_a_helicone_log_without_captures_is_still_complete() -> None:
    event = make_event(4, user="bob\r\nX-Injected: 1", tenant="épicerie", outcome="gateway_error",
                       status_code=502, error_type="upstream_unreachable")  # fmt: skip
    body = log_body(event)
    assert body["providerRequest"]["json"] == {"model": event.model}
    assert body["providerResponse"]["json"]["error"]["type"] == "upstream_unreachable"
    assert body["providerResponse"]["status"] == 502
    assert "timeToFirstToken" not in body["timing"]
    headers = log_headers(event)
    assert all(value.isascii() and "\n" not in value and "\r" not in value
               for value in headers.values())  # fmt: skip
    assert headers["Helicone-Property-Outcome"] == "gateway_error"


def test_a_request_failed_by_every_target_keeps_its_attempts_in_an_error_run_and_a_log() -> None:
    event = make_event(5, outcome="upstream_error", status_code=503, error_type="overloaded_error",
                       provider="anthropic", provider_name="anthropic-main", attempts=2,
                       failed_targets=("openai-us", "anthropic-main"))  # fmt: skip
    start, _, error = run_events(event)
    assert error["event"] == "error"
    assert start["metadata"]["attempts"] == 2
    assert start["metadata"]["failedTargets"] == "openai-us,anthropic-main"
    assert "upstreamModel" not in start["metadata"]  # unknown: left out, not sent as null
    headers = log_headers(event)
    assert headers["Helicone-Property-Provider"] == "anthropic"
    assert headers["Helicone-Property-Failed-Targets"] == "openai-us,anthropic-main"
    assert "Helicone-Property-Upstream-Model" not in headers
