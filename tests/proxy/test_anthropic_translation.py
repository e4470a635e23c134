"""The Anthropic translation (REFERENCE.md section 9), without a server: bytes in, bytes out."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from llm_gateway_fakes.anthropic import stream_events
from llm_gateway_fakes.anthropic_rules import request_problem
from llm_gateway_proxy.providers.anthropic import JSON_TOOL_NAME, TranslationError, request_out
from llm_gateway_proxy.providers.anthropic_response import MalformedResponse, error_in, response_in
from llm_gateway_proxy.providers.anthropic_stream import SSEEvent, SSEParser, StreamTranslator
from llm_gateway_proxy.providers.streamstart import AnthropicStart, Verdict
from llm_gateway_proxy.streaming import SSETap
from llm_gateway_proxy.usage import Usage, usage_from_payload

PNG = "iVBORw0KGgo="


def out(request: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    body, _ = request_out(request, model="claude-sonnet-4-5", **kwargs)
    decoded: dict[str, Any] = orjson.loads(body)
    return decoded


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet", "messages": list(messages), **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def rejected(request: dict[str, Any], **kwargs: Any) -> TranslationError:
    with pytest.raises(TranslationError) as caught:
        request_out(request, model="m", **kwargs)
    return caught.value


# --- request out ---------------------------------------------------------------------------------


def test_simple_request_byte_for_byte_with_its_headers() -> None:
    request = chat(
        {"role": "system", "content": "Be brief."},
        user("Hi"),
        temperature=0.5,
        top_p=0.9,
        stop="END",
        stream=True,
        stream_options={"include_usage": True},
        user="u-1",
    )
    body, headers = request_out(orjson.dumps(request), model="claude-sonnet-4-5", version="v9")
    assert body == (
        b'{"model":"claude-sonnet-4-5","max_tokens":4096,"system":"Be brief.",'
        b'"messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}],'
        b'"temperature":0.5,"top_p":0.9,"stop_sequences":["END"],'
        b'"metadata":{"user_id":"u-1"},"stream":true}'
    )
    assert headers == [("anthropic-version", "v9"), ("content-type", "application/json")]


def test_system_and_developer_messages_anywhere_become_system_blocks() -> None:
    body = out(
        chat(
            {"role": "developer", "content": [{"type": "text", "text": "A"}]},
            user("q"),
            {"role": "system", "content": "B"},
            {"role": "assistant", "content": "a"},
        )
    )
    assert body["system"] == [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"]


def test_max_tokens_default_parameter_and_both_openai_names() -> None:
    assert out(chat(user("q")), default_max_tokens=100)["max_tokens"] == 100
    assert out(chat(user("q"), max_tokens=7))["max_tokens"] == 7
    assert out(chat(user("q"), max_completion_tokens=9, max_tokens=7))["max_tokens"] == 9
    assert rejected(chat(user("q"), max_tokens=0)).param == "max_tokens"


def test_stop_list_and_whitespace_only_stop() -> None:
    assert out(chat(user("q"), stop=["a", "b"]))["stop_sequences"] == ["a", "b"]
    assert rejected(chat(user("q"), stop=["a", " \n"])).param == "stop"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"temperature": 1.5}, "temperature"),
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"response_format": {"type": "json_object"}}, "response_format.type"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_what_the_messages_api_cannot_express_is_a_400_with_its_param(
    fields: dict[str, Any], param: str
) -> None:
    assert rejected(chat(user("q"), **fields)).param == param


def test_conversation_shape_errors_name_the_message() -> None:
    assert rejected(chat({"role": "assistant", "content": "x"})).param == "messages"
    assert rejected(chat({"role": "system", "content": "x"})).param == "messages"
    assert rejected(chat({"role": "function", "content": "x"})).param == "messages[0].role"
    orphan = {"role": "tool", "tool_call_id": "nope", "content": "r"}
    assert rejected(chat(user("q"), orphan)).param == "messages[1].tool_call_id"
    assert rejected({"messages": []}).param == "messages"
    call = {"id": "t9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    unanswered = rejected(chat(user("q"), {"role": "assistant", "tool_calls": [call]}, user("?")))
    assert unanswered.message == "Tool call 't9' has no tool message answering it."
    assert rejected(b"[1]").message == "The request body must be a JSON object."


WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "weather"}},
            None,
            {"type": "tool", "name": "weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
    ],
)
def test_tools_and_tool_choice(tool_choice: Any, parallel: Any, expected: Any) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER, {"type": "function", "function": {"name": "now"}}]}
    if tool_choice is not None:
        fields["tool_choice"] = tool_choice
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    body = out(chat(user("q"), **fields))
    assert body["tools"] == [
        {
            "name": "weather",
            "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body.get("tool_choice") == expected


def test_tool_calls_and_results_become_blocks_in_alternating_turns() -> None:
    calls = [
        {
            "id": "t1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
        },
        {"id": "t2", "type": "function", "function": {"name": "now", "arguments": ""}},
    ]
    body = out(
        chat(
            user("q"),
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "t1", "content": "cold"},
            {"role": "tool", "tool_call_id": "t2", "content": [{"type": "text", "text": "noon"}]},
            user("and tomorrow?"),
        )
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "t2", "name": "now", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [{"type": "text", "text": "cold"}],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "t2",
                    "content": [{"type": "text", "text": "noon"}],
                },
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
    ]


def test_consecutive_user_messages_merge_and_empty_text_is_dropped() -> None:
    body = out(chat(user("a"), user(""), user([{"type": "text", "text": "b"}])))
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


def test_bad_tool_call_arguments_are_rejected() -> None:
    call = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "[1"}}
    error = rejected(chat(user("q"), {"role": "assistant", "tool_calls": [call]}))
    assert error.param == "messages[1].tool_calls[0].function.arguments"


def test_images_data_url_and_https_url() -> None:
    parts = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg", "detail": "high"}},
    ]
    assert out(chat(user(parts)))["messages"][0]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
    ]


@pytest.mark.parametrize(
    "url",
    [
        "http://internal/a.png",
        "data:image/tiff;base64,AAAA",
        "data:image/png,raw",
        "data:image/png;base64,!!",
    ],
)
def test_images_the_messages_api_would_not_take(url: str) -> None:
    parts = [{"type": "image_url", "image_url": {"url": url}}]
    assert rejected(chat(user(parts))).param == "messages[0].content[0].image_url.url"


def test_audio_and_file_parts_are_rejected() -> None:
    parts = [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]
    assert rejected(chat(user(parts))).param == "messages[0].content[0].type"


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "count", "schema": SCHEMA}}


def test_response_format_json_schema_as_output_config() -> None:
    body = out(chat(user("q"), response_format=JSON_SCHEMA))
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert "tools" not in body
    assert "output_config" not in out(chat(user("q"), response_format={"type": "text"}))


def test_response_format_json_schema_as_a_forced_tool() -> None:
    body = out(chat(user("q"), response_format=JSON_SCHEMA), json_schema_mode="tool")
    assert body["tools"] == [
        {"name": JSON_TOOL_NAME, "description": "Answer with this.", "input_schema": SCHEMA}
    ]
    assert body["tool_choice"] == {"type": "tool", "name": JSON_TOOL_NAME}
    both = chat(user("q"), response_format=JSON_SCHEMA, tools=[WEATHER])
    assert rejected(both, json_schema_mode="tool").param == "response_format"


# --- response in ---------------------------------------------------------------------------------


def message(content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: int) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
        }
    )


def test_text_response_byte_for_byte() -> None:
    body = message([{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}])
    assert response_in(body, created=1700000000, model="claude-sonnet") == (
        b'{"id":"msg_1","object":"chat.completion","created":1700000000,"model":"claude-sonnet",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello","refusal":null},'
        b'"logprobs":null,"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,'
        b'"prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":0}}}'
    )


def test_tool_use_response_parses_with_the_openai_sdk() -> None:
    body = message(
        [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
        ],
        stop_reason="tool_use",
    )
    completion = ChatCompletion.model_validate_json(response_in(body, created=1))
    assert completion.model == "claude-sonnet-4-5"
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name) == ("toolu_1", "weather")  # type: ignore[union-attr]
    assert orjson.loads(call.function.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]


def test_usage_with_cache_tokens_is_normalised() -> None:
    body = message([], cache_creation_input_tokens=100, cache_read_input_tokens=2000)
    assert orjson.loads(response_in(body, created=1))["usage"] == {
        "prompt_tokens": 2110,
        "completion_tokens": 5,
        "total_tokens": 2115,
        "prompt_tokens_details": {"cached_tokens": 2000, "cache_write_tokens": 100},
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    body = message([{"type": "text", "text": "x"}], stop_reason=stop_reason)
    assert orjson.loads(response_in(body, created=1))["choices"][0]["finish_reason"] == finish


def test_forced_json_tool_answer_becomes_text() -> None:
    body = message(
        [{"type": "tool_use", "id": "t", "name": JSON_TOOL_NAME, "input": {"n": 3}}], "tool_use"
    )
    choice = orjson.loads(response_in(body, created=1, json_tool=JSON_TOOL_NAME))["choices"][0]
    assert choice["message"]["content"] == '{"n":3}'
    assert choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]


# --- errors in -----------------------------------------------------------------------------------


def anthropic_error(kind: str, text: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": kind, "message": text}, "request_id": "r"}
    )


@pytest.mark.parametrize(
    ("status", "kind", "new_status", "new_type"),
    [
        (529, "overloaded_error", 503, "api_error"),
        (400, "invalid_request_error", 400, "invalid_request_error"),
        (401, "authentication_error", 401, "authentication_error"),
        (402, "billing_error", 402, "insufficient_quota"),
        (403, "permission_error", 403, "permission_error"),
        (404, "not_found_error", 404, "invalid_request_error"),
        (413, "request_too_large", 413, "invalid_request_error"),
        (429, "rate_limit_error", 429, "rate_limit_error"),
        (500, "api_error", 500, "api_error"),
        (504, "timeout_error", 504, "api_error"),
        (418, "teapot_error", 418, "invalid_request_error"),
    ],
)
def test_errors_keep_the_message_and_map_type_and_status(
    status: int, kind: str, new_status: int, new_type: str
) -> None:
    mapped_status, body = error_in(status, anthropic_error(kind, "It broke."))
    assert mapped_status == new_status
    assert orjson.loads(body) == {
        "error": {"message": "It broke.", "type": new_type, "param": None, "code": kind}
    }


def test_an_error_body_that_is_not_anthropics_is_not_echoed() -> None:
    status, body = error_in(502, b"<html>bad gateway sk-ant-secret</html>")
    assert status == 502
    assert b"secret" not in body
    assert orjson.loads(body)["error"]["type"] == "api_error"


# --- streams -------------------------------------------------------------------------------------


def sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


def start(**usage: int) -> bytes:
    usage = {"input_tokens": 10, "output_tokens": 1, **usage}
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
           "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}  # fmt: skip
    return sse("message_start", {"type": "message_start", "message": msg})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return sse(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def delta(index: int, body: dict[str, Any]) -> bytes:
    return sse(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": body}
    )


def text(index: int, value: str) -> bytes:
    return delta(index, {"type": "text_delta", "text": value})


def block_stop(index: int) -> bytes:
    return sse("content_block_stop", {"type": "content_block_stop", "index": index})


def finish(stop_reason: str, output_tokens: int) -> bytes:
    body = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}}
    return sse("message_delta", {**body, "usage": {"output_tokens": output_tokens}})


PING = sse("ping", {"type": "ping"})
STOP = sse("message_stop", {"type": "message_stop"})

TEXT_STREAM = b"".join(
    [
        start(),
        block_start(0, {"type": "text", "text": ""}),
        PING,
        text(0, "Hel"),
        text(0, 'lo "you"'),
        block_stop(0),
        finish("end_turn", 4),
        STOP,
    ]
)

TOOL_STREAM = b"".join(
    [
        start(cache_creation_input_tokens=100, cache_read_input_tokens=2000),
        block_start(0, {"type": "thinking", "thinking": ""}),
        delta(0, {"type": "thinking_delta", "thinking": "let me see"}),
        delta(0, {"type": "signature_delta", "signature": "sig"}),
        block_stop(0),
        block_start(1, {"type": "text", "text": ""}),
        text(1, "Checking."),
        block_stop(1),
        block_start(2, {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {}}),
        delta(2, {"type": "input_json_delta", "partial_json": ""}),
        delta(2, {"type": "input_json_delta", "partial_json": '{"ci'}),
        PING,
        delta(2, {"type": "input_json_delta", "partial_json": 'ty": "Oslo"}'}),
        block_stop(2),
        block_start(3, {"type": "tool_use", "id": "toolu_b", "name": "now", "input": {}}),
        delta(3, {"type": "input_json_delta", "partial_json": "{}"}),
        block_stop(3),
        finish("tool_use", 30),
        STOP,
    ]
)


def translate(stream: bytes, cuts: list[int] | None = None, **kwargs: Any) -> bytes:
    parser = SSEParser()
    translator = StreamTranslator(created=1700000000, **{"include_usage": False, **kwargs})
    edges = [0, *sorted(cuts or []), len(stream)]
    produced = []
    for a, b in itertools.pairwise(edges):
        for event in parser.feed(stream[a:b]):
            produced.append(translator.feed(event.name, event.data))
    return b"".join(produced)


def chunks(output: bytes) -> list[dict[str, Any]]:
    frames = output.split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""]
    parsed = []
    for frame in frames[:-2]:
        assert frame.startswith(b"data: ")
        parsed.append(orjson.loads(frame[6:]))
        ChatCompletionChunk.model_validate(parsed[-1])
    return parsed


def test_streamed_text_answer_byte_for_byte() -> None:
    head = (
        b'data: {"id":"msg_1","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"claude-sonnet-4-5","choices":[{"index":0,"delta":'
    )
    tail = b',"logprobs":null,"finish_reason":null}]}\n\n'
    assert translate(TEXT_STREAM) == (
        head + b'{"role":"assistant","content":""}' + tail
        + head + b'{"content":"Hel"}' + tail
        + head + b'{"content":"lo \\"you\\""}' + tail
        + head + b'{},"logprobs":null,"finish_reason":"stop"}]}\n\n'
        + b"data: [DONE]\n\n"
    )  # fmt: skip


def test_streamed_text_with_include_usage_ends_with_the_usage_chunk() -> None:
    parsed = chunks(translate(TEXT_STREAM, include_usage=True, model="claude-sonnet"))
    assert all(c["usage"] is None for c in parsed[:-1])
    assert all(c["model"] == "claude-sonnet" for c in parsed)
    assert parsed[-1]["choices"] == []
    assert parsed[-1]["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 4,  # message_delta's cumulative count replaces message_start's 1
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
    }


def test_streamed_tool_calls_reassemble_with_openai_indexes_and_cache_usage() -> None:
    parsed = chunks(translate(TOOL_STREAM, include_usage=True))
    content = ""
    calls: dict[int, dict[str, str]] = {}
    finishes = []
    for chunk in parsed[:-1]:
        choice = chunk["choices"][0]
        content += choice["delta"].get("content") or ""
        finishes.append(choice["finish_reason"])
        for fragment in choice["delta"].get("tool_calls") or []:
            call = calls.setdefault(fragment["index"], {"id": "", "name": "", "arguments": ""})
            call["id"] += fragment.get("id", "")
            call["name"] += fragment.get("function", {}).get("name", "")
            call["arguments"] += fragment["function"]["arguments"]
    assert content == "Checking."
    assert calls == {
        0: {"id": "toolu_a", "name": "weather", "arguments": '{"city": "Oslo"}'},
        1: {"id": "toolu_b", "name": "now", "arguments": "{}"},
    }
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    assert parsed[-1]["usage"] == {
        "prompt_tokens": 2110,
        "completion_tokens": 30,
        "total_tokens": 2140,
        "prompt_tokens_details": {"cached_tokens": 2000, "cache_write_tokens": 100},
    }


def test_forced_json_tool_streams_as_text() -> None:
    stream = b"".join(
        [
            start(),
            block_start(0, {"type": "tool_use", "id": "t", "name": JSON_TOOL_NAME, "input": {}}),
            delta(0, {"type": "input_json_delta", "partial_json": '{"n":'}),
            delta(0, {"type": "input_json_delta", "partial_json": "3}"}),
            finish("tool_use", 3),
            STOP,
        ]
    )
    parsed = chunks(translate(stream, json_tool=JSON_TOOL_NAME))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in parsed) == '{"n":3}'
    assert parsed[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in parsed)


def test_error_event_ends_the_stream_with_an_openai_error_and_no_done() -> None:
    error = sse(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    translator = StreamTranslator(created=1, include_usage=True)
    parser = SSEParser()
    outputs = [translator.feed(e.name, e.data) for e in parser.feed(start() + PING)]
    assert not translator.content_started  # the router may still fail over
    outputs += [
        translator.feed(e.name, e.data) for e in parser.feed(error + text(0, "late") + STOP)
    ]
    assert outputs[-3:] == [
        b'data: {"error":{"message":"Overloaded","type":"api_error","param":null,'
        b'"code":"overloaded_error"}}\n\n',
        b"",
        b"",
    ]
    assert translator.finished


def test_content_started_and_usage_so_far_for_the_router_and_meter() -> None:
    translator = StreamTranslator(created=1, include_usage=False)
    events = SSEParser().feed(
        start(cache_read_input_tokens=5) + block_start(0, {"type": "text", "text": ""})
    )
    for event in events:
        translator.feed(event.name, event.data)
    assert not translator.content_started
    translator.feed(
        "content_block_delta",
        orjson.dumps({"index": 0, "delta": {"type": "text_delta", "text": "x"}}),
    )
    assert translator.content_started
    assert translator.usage["prompt_tokens"] == 15


def verdict_of(*frames: bytes) -> Verdict:
    start_ = AnthropicStart()
    verdict = Verdict.WAIT
    for frame in frames:
        verdict = start_.feed(frame)
        if verdict is not Verdict.WAIT:
            break
    return verdict


OVERLOADED = sse(
    "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
)


def test_the_router_may_still_fail_over_until_a_block_gives_the_client_something() -> None:
    """Every answer opens with an empty text block: an error after it has reached no client
    yet (the router's stream-start verdict, providers/streamstart.py)."""
    empty_text = block_start(0, {"type": "text", "text": ""})
    thinking = block_start(0, {"type": "thinking", "thinking": ""})
    assert verdict_of(start(), empty_text, PING, OVERLOADED) is Verdict.ERROR
    assert verdict_of(start(), thinking, OVERLOADED) is Verdict.ERROR
    assert verdict_of(start(), empty_text, PING, text(0, "Hi")) is Verdict.CONTENT
    tool = block_start(0, {"type": "tool_use", "id": "toolu_a", "name": "now", "input": {}})
    assert verdict_of(start(), tool) is Verdict.CONTENT  # the client gets the call's id and name
    assert verdict_of(start(), block_start(0, {"type": "text", "text": "Hi"})) is Verdict.CONTENT
    assert verdict_of(start(), sse("content_block_start", {"index": 0})) is Verdict.CONTENT


@given(st.lists(st.integers(min_value=0, max_value=len(TOOL_STREAM)), max_size=12))
def test_any_network_split_gives_the_same_openai_output(cuts: list[int]) -> None:
    whole = translate(TOOL_STREAM, include_usage=True)
    assert translate(TOOL_STREAM, cuts, include_usage=True) == whole
    crlf = TOOL_STREAM.replace(b"\n", b"\r\n")
    assert translate(crlf, [c * 2 for c in cuts if c * 2 <= len(crlf)], include_usage=True) == whole


def test_sse_parser_framing() -> None:
    parser = SSEParser()
    assert parser.feed(b": comment\nevent: a\ndata: 1\ndata:2\r") == []
    assert parser.feed(b"\n\r\nid: 7\ndata: x\r\rdata: y\n") == [
        SSEEvent("a", b"1\n2"),
        SSEEvent("message", b"x"),
    ]
    assert parser.feed(b"\n") == [SSEEvent("message", b"y")]
    assert parser.feed(b"event: lonely\n\n") == []  # no data: nothing to dispatch
    assert parser.feed(b"data: z\n\n") == [SSEEvent("message", b"z")]  # the name was reset


def test_sse_parser_bounds_one_event() -> None:
    parser = SSEParser(max_event_bytes=64)
    parser.feed(b"data: " + b"x" * 40 + b"\n")
    with pytest.raises(ValueError, match="outgrew 64 bytes"):
        parser.feed(b"data: " + b"x" * 40)


def test_the_gateways_meter_reads_the_translated_stream_and_its_errors() -> None:
    """What the SSE tap of today's streaming path sees when the lead wires this in."""
    tap = SSETap(strip_usage_chunk=True)
    output = translate(TOOL_STREAM, include_usage=True)
    relayed = tap.feed(output) + tap.flush()
    assert tap.usage == Usage(prompt=2110, completion=30, total=2140, cached=2000, cache_write=100)
    frames = output.split(b"\n\n")  # [..., usage chunk, "data: [DONE]", ""]
    assert relayed == b"\n\n".join(frames[:-3] + frames[-2:])
    completion = orjson.loads(response_in(message([], cache_read_input_tokens=7), created=1))
    assert usage_from_payload(completion) == Usage(prompt=17, completion=5, total=22, cached=7)
    error = sse("error", {"type": "error", "error": {"type": "api_error", "message": "boom"}})
    tap = SSETap(strip_usage_chunk=True)
    tap.feed(translate(start() + error))
    assert tap.errored


@pytest.mark.parametrize(
    "body", [b"<html>", b"[]", b'{"content": []}', b'{"id": "m", "content": [1]}']
)
def test_a_response_that_is_not_the_messages_format(body: bytes) -> None:
    with pytest.raises(MalformedResponse):
        response_in(body, created=1)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("message_start", b"{}"),
        ("content_block_delta", b'{"index": 0}'),
        ("content_block_start", b"not json"),
        ("message_delta", b'{"delta": 1}'),
    ],
)
def test_a_stream_event_that_is_not_the_messages_format(name: str, data: bytes) -> None:
    with pytest.raises(MalformedResponse, match=name):
        StreamTranslator(created=1, include_usage=False).feed(name, data)


def test_byte_at_a_time_crlf_stream_gives_the_same_output() -> None:
    """Every split, including each one between a CR and its LF."""
    crlf = TEXT_STREAM.replace(b"\n", b"\r\n")
    assert translate(crlf, list(range(len(crlf)))) == translate(TEXT_STREAM)


def test_every_translated_request_passes_the_anthropic_fakes_validation() -> None:
    """The fake (libs/fakes) rejects what the real API rejects; nothing we send may trip it."""
    calls = [
        {
            "id": "t1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
        },
        {"id": "t2", "type": "function", "function": {"name": "now", "arguments": ""}},
    ]
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    requests = [
        chat({"role": "system", "content": "s"}, user("q"), stop=["x"], temperature=1, user="u"),
        chat(
            {"role": "developer", "content": "d"},
            user([{"type": "text", "text": "look"}, image]),
            {"role": "assistant", "content": "Let me check.", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "t1", "content": "cold"},
            {"role": "tool", "tool_call_id": "t2", "content": ""},
            user("thanks"),
            {"role": "assistant", "content": ""},
            user(""),
            user("more"),
            tools=[WEATHER, {"type": "function", "function": {"name": "now"}}],
            tool_choice={"type": "function", "function": {"name": "now"}},
            parallel_tool_calls=False,
        ),
        chat(user("q"), tools=[WEATHER], tool_choice="none", stream=True),
        chat(user("q"), tool_choice="none", response_format=JSON_SCHEMA),
    ]
    for request in requests:
        for mode in ("output_config", "tool"):
            body = out(request, json_schema_mode=mode)
            assert request_problem(body) is None, (request, body)


def test_the_fakes_streams_reassemble_into_the_message() -> None:
    """Real-shaped event sequences (libs/fakes) in, the non-streamed translation's content out."""
    answer = orjson.loads(
        answer_body := message(
            [
                {"type": "text", "text": "Let me look that up for you."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "weather",
                    "input": {"city": "Oslo", "days": [1, 2]},
                },
            ],
            "tool_use",
        )
    )
    stream = b"".join(sse(e["type"], e) for e in stream_events(answer, ping_every=2))
    parsed = chunks(translate(stream))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in parsed)
    arguments = "".join(
        fragment["function"]["arguments"]
        for c in parsed
        for fragment in c["choices"][0]["delta"].get("tool_calls") or []
    )
    expected = orjson.loads(response_in(answer_body, created=1))["choices"][0]
    assert text == expected["message"]["content"]
    assert arguments == expected["message"]["tool_calls"][0]["function"]["arguments"]
    assert parsed[-1]["choices"][0]["finish_reason"] == expected["finish_reason"]
