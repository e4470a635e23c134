"""Messages requests to OpenAI chat/completions and the answers back (messages_openai.py), without
a server: bytes in, bytes out. The reverse of test_anthropic_translation.py."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from llm_gateway_proxy.providers.anthropic import TranslationError
from llm_gateway_proxy.providers.anthropic_response import MalformedResponse
from llm_gateway_proxy.providers.anthropic_stream import SSEEvent
from llm_gateway_proxy.providers.messages_openai import ToolNames, request_to_chat
from llm_gateway_proxy.providers.messages_openai_answer import (
    ChatStreamTranslator,
    error_from_openai,
    response_from_chat,
)

PNG = "iVBORw0KGgo="
LONG = "mcp__filesystem__" + "read_a_file_with_a_very_long_descriptive_name_" + "x" * 37  # 100
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}


def shortened(name: str) -> str:
    """The documented form: the first 55 characters, "_", 8 hex digits of the name's sha256."""
    return f"{name[:55]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def out(request: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    body, _ = request_to_chat(request, model="gpt-4o", **{"include_usage": False, **kwargs})
    decoded: dict[str, Any] = orjson.loads(body)
    return decoded


def msgs(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": list(messages), **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def rejected(request: dict[str, Any]) -> TranslationError:
    with pytest.raises(TranslationError) as caught:
        request_to_chat(request, model="m", include_usage=False)
    return caught.value


# --- request out ---------------------------------------------------------------------------------


def test_simple_request_byte_for_byte() -> None:
    request = msgs(user("Hi"), system="Be brief.", temperature=0.5, top_p=0.9,
                   stop_sequences=["END"], metadata={"user_id": "u-1"}, stream=True)  # fmt: skip
    body, names = request_to_chat(orjson.dumps(request), model="gpt-4o", include_usage=True)
    assert body == (
        b'{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},'
        b'{"role":"user","content":"Hi"}],"max_tokens":100,"temperature":0.5,"top_p":0.9,'
        b'"stop":["END"],"user":"u-1","stream":true,"stream_options":{"include_usage":true}}'
    )
    assert names.original("anything") == "anything"
    assert out(msgs(user("q"), stream=True))["stream"] is True
    assert "stream_options" not in out(msgs(user("q"), stream=True))
    assert "stream" not in out(msgs(user("q"), stream=False), include_usage=True)
    assert "stream_options" not in out(msgs(user("q")), include_usage=True)


def test_system_text_blocks_are_joined_by_a_blank_line() -> None:
    blocks = [
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be brief."},
    ]
    assert out(msgs(user("q"), system=blocks))["messages"] == [
        {"role": "system", "content": "You are Claude Code.\n\nBe brief."},
        {"role": "user", "content": "q"},
    ]
    assert out(msgs(user("q"), system=""))["messages"] == [{"role": "user", "content": "q"}]
    bad = [{"type": "text", "text": "a"}, {"type": "image", "source": {}}]
    assert rejected(msgs(user("q"), system=bad)).param == "system[1]"


def test_user_text_blocks_and_images() -> None:
    one = [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]
    assert out(msgs(user(one)))["messages"] == [{"role": "user", "content": "Hi"}]
    url = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    content = [{"type": "text", "text": "What are these?"}, IMAGE, url]
    parts = [
        {"type": "text", "text": "What are these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    assert out(msgs(user(content)))["messages"] == [{"role": "user", "content": parts}]


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


CHECKING = {"type": "text", "text": "Checking."}


def test_tool_uses_and_results_become_tool_calls_and_tool_messages_in_order() -> None:
    weather = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}
    now = {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}
    texts = [{"type": "text", "text": "12C"}, {"type": "text", "text": "windy"}]
    results = [
        {"type": "text", "text": "Also this:"},
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": texts},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "broke", "is_error": True},
    ]
    again = {"type": "tool_use", "id": "toolu_3", "name": "weather", "input": {"city": "Bergen"}}
    oslo = call("toolu_1", "weather", '{"city":"Oslo"}')
    now_call = call("toolu_2", "now", "{}")
    bergen = call("toolu_3", "weather", '{"city":"Bergen"}')
    request = msgs(
        user("Weather?"),
        assistant(
            [{"type": "thinking", "thinking": "hmm", "signature": "s"}, CHECKING, weather, now]
        ),
        user(results),
        assistant([again]),
        user([{"type": "tool_result", "tool_use_id": "toolu_3"}]),
        assistant([{"type": "redacted_thinking", "data": "opaque"}]),  # left empty: not sent
        user("thanks"),
    )
    assert out(request)["messages"] == [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [oslo, now_call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "12C\nwindy"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "broke"},
        {"role": "user", "content": "Also this:"},
        {"role": "assistant", "content": None, "tool_calls": [bergen]},
        {"role": "tool", "tool_call_id": "toolu_3", "content": ""},
        {"role": "user", "content": "thanks"},
    ]


def test_max_tokens_goes_out_under_the_field_asked_for() -> None:
    assert out(msgs(user("q"), max_tokens=7))["max_tokens"] == 7
    body = out(msgs(user("q"), max_tokens=7), max_tokens_field="max_completion_tokens")
    assert (body["max_completion_tokens"], "max_tokens" in body) == (7, False)


def test_user_id_longer_than_64_goes_as_its_sha256() -> None:
    exact = "u" * 64
    assert out(msgs(user("q"), metadata={"user_id": exact}))["user"] == exact
    long = '{"device_id":"abc","session_id":"' + "f" * 40 + '"}'  # 75 characters
    digest = hashlib.sha256(long.encode()).hexdigest()
    assert out(msgs(user("q"), metadata={"user_id": long}))["user"] == digest
    assert "user" not in out(msgs(user("q"), metadata={}))


def test_dropped_fields_leave_the_same_body() -> None:
    text = {"type": "text", "text": "q", "cache_control": {"type": "ephemeral"}, "citations": []}
    request = msgs(user([text]), top_k=5, thinking={"type": "enabled", "budget_tokens": 1024},
                   service_tier="auto", context_management={"edits": []},
                   output_config={"effort": "high"}, something_new={"x": 1})  # fmt: skip
    expected = {"model": "gpt-4o", "messages": [{"role": "user", "content": "q"}],
                "max_tokens": 100}  # fmt: skip
    assert out(request) == expected


TOOLS = [
    {
        "name": "weather",
        "description": "Weather in a city",
        "input_schema": SCHEMA,
        "cache_control": {"type": "ephemeral"},
        "strict": True,
    },
    {"type": "custom", "name": "now", "input_schema": {"type": "object"}},
]


def test_tools_become_function_tools() -> None:
    weather = {"name": "weather", "description": "Weather in a city"}
    assert out(msgs(user("q"), tools=TOOLS))["tools"] == [
        {"type": "function", "function": {**weather, "parameters": SCHEMA}},
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}},
    ]
    assert "tools" not in out(msgs(user("q"), tools=[]))


@pytest.mark.parametrize(
    ("tool_choice", "expected", "parallel"),
    [
        (None, None, None),
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        ({"type": "tool", "name": "now"}, {"type": "function", "function": {"name": "now"}}, None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": False}, "required", None),
    ],
)
def test_tool_choice(tool_choice: Any, expected: Any, parallel: Any) -> None:
    body = out(msgs(user("q"), tools=TOOLS, tool_choice=tool_choice))
    assert body.get("tool_choice") == expected
    assert body.get("parallel_tool_calls") == parallel


def test_auto_and_none_without_tools_are_dropped() -> None:
    for kind in ("auto", "none"):
        choice = {"type": kind, "disable_parallel_tool_use": True}
        body = out(msgs(user("q"), tool_choice=choice))
        assert "tool_choice" not in body
        assert "parallel_tool_calls" not in body


def test_output_config_json_schema_becomes_response_format() -> None:
    config = {"format": {"type": "json_schema", "schema": SCHEMA}, "effort": "low"}
    assert out(msgs(user("q"), output_config=config))["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": SCHEMA},
    }


BASH = {"type": "bash_20250124", "name": "bash"}
DOCUMENT = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}}


def turn(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [user(list(blocks))]}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"mcp_servers": [{"type": "url", "url": "https://m", "name": "m"}]}, "mcp_servers"),
        ({"container": "container_1"}, "container"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tools": [TOOLS[0], BASH]}, "tools[1].type"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"tool_choice": {"type": "tool", "name": "now"}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "required"}}, "tool_choice.type"),
        ({"tools": TOOLS, "tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"output_config": {"format": {"type": "json_object"}}}, "output_config.format"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": "100"}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": None}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        (turn({"type": "text", "text": "q"}, DOCUMENT), "messages[0].content[1].type"),
        (turn({"type": "search_result", "title": "t"}), "messages[0].content[0].type"),
        (turn({"type": "tool_result", "tool_use_id": "t", "content": [CHECKING, IMAGE]}),
         "messages[0].content[0].content[1].type"),
        (turn({"type": "image", "source": {"type": "file", "file_id": "f"}}),
         "messages[0].content[0].source.type"),
        ({"messages": [assistant([{"type": "tool_use", "id": "t", "name": "f", "input": []}])]},
         "messages[0].content[0].input"),
    ],
)  # fmt: skip
def test_what_chat_completions_cannot_express_is_refused_with_its_param(
    fields: dict[str, Any], param: str
) -> None:
    assert rejected({**msgs(user("q")), **fields}).param == param


# --- tool names ----------------------------------------------------------------------------------


def test_long_tool_names_are_shortened_everywhere_and_restored() -> None:
    assert len(LONG) == 100
    short = shortened(LONG)
    assert len(short) == 64
    request = msgs(
        user("q"),
        assistant([{"type": "tool_use", "id": "toolu_1", "name": LONG, "input": {}}]),
        user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]),
        tools=[{"name": LONG, "input_schema": {"type": "object"}}, TOOLS[0]],
        tool_choice={"type": "tool", "name": LONG},
    )
    raw, names = request_to_chat(request, model="gpt-4o", include_usage=False)
    body = orjson.loads(raw)
    assert [t["function"]["name"] for t in body["tools"]] == [short, "weather"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": short}}
    assert body["messages"][1]["tool_calls"][0]["function"]["name"] == short
    assert names.original(short) == LONG
    assert names.original("weather") == "weather"
    assert names.original("never_sent") == "never_sent"


def test_shortening_is_deterministic_and_keeps_a_shared_prefix_apart() -> None:
    first, second = "p" * 64 + "_alpha", "p" * 64 + "_beta"
    names = ToolNames()
    a, b = names.short(first), names.short(second)
    assert (a, b) == (shortened(first), shortened(second))
    assert a != b
    assert len(a) == len(b) == 64
    assert a[:55] == b[:55] == "p" * 55
    assert ToolNames().short(first) == a == names.short(first)
    assert (names.original(a), names.original(b)) == (first, second)
    assert names.short("p" * 64) == "p" * 64  # within the limit: as it is


def test_names_outside_openais_characters_are_renamed_reversibly() -> None:
    names = ToolNames()
    digest = hashlib.sha256(b"files.read").hexdigest()[:8]
    assert names.short("files.read") == f"files_read_{digest}"
    assert names.original(f"files_read_{digest}") == "files.read"
    assert names.short("files_read") == "files_read"  # the rule kept: as it is


def test_a_name_taken_by_a_renaming_is_renamed_too() -> None:
    long = "a" * 100
    names = ToolNames()
    taken = names.short(long)
    clash = names.short(taken)  # a client tool literally named like the other's renaming
    assert clash != taken
    assert (names.original(taken), names.original(clash)) == (long, taken)
    # The other way round: the literal name first keeps it, the long one gets another.
    other = ToolNames()
    assert other.short(taken) == taken
    assert other.short(long) != taken
    assert other.original(other.short(long)) == long


# --- answers in ----------------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: Any = "stop", **fields: Any) -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "logprobs": None,
              "finish_reason": finish}  # fmt: skip
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    body = {"id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024",
            "choices": [choice], "usage": usage, **fields}  # fmt: skip
    return orjson.dumps(body)


def answer(body: bytes, names: ToolNames | None = None) -> dict[str, Any]:
    raw = response_from_chat(body, model="claude-sonnet-4-5", names=names or ToolNames())
    decoded: dict[str, Any] = orjson.loads(raw)
    return decoded


def test_text_answer_byte_for_byte() -> None:
    body = completion({"content": "Hello", "refusal": None})
    assert response_from_chat(body, model="claude-sonnet-4-5", names=ToolNames()) == (
        b'{"id":"msg_chatcmpl-9","type":"message","role":"assistant","model":"claude-sonnet-4-5",'
        b'"content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn",'
        b'"stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":0,'
        b'"cache_read_input_tokens":0,"output_tokens":5}}'
    )
    assert answer(completion({"content": "x"}, id="msg_already"))["id"] == "msg_already"


def test_tool_calls_come_back_with_the_clients_names_and_parsed_arguments() -> None:
    names = ToolNames()
    short = names.short(LONG)
    calls = [call("call_1", short, '{"city": "Oslo"}'), call("call_2", "now", "")]
    body = answer(completion({"content": "Checking.", "tool_calls": calls}, "tool_calls"), names)
    uses = [
        {"type": "tool_use", "id": "call_1", "name": LONG, "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
    ]
    assert body["content"] == [{"type": "text", "text": "Checking."}, *uses]
    assert body["stop_reason"] == "tool_use"
    assert answer(completion({"content": "", "tool_calls": calls}), names)["content"] == uses


def test_refusal_is_a_text_block_and_text_parts_are_joined() -> None:
    body = answer(completion({"content": None, "refusal": "I can't help."}, "content_filter"))
    assert body["content"] == [{"type": "text", "text": "I can't help."}]
    assert body["stop_reason"] == "refusal"
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    assert answer(completion({"content": parts}))["content"] == [{"type": "text", "text": "Hello"}]


@pytest.mark.parametrize(
    ("finish", "with_call", "stop_reason"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", False, "end_turn"),
        ("function_call", False, "end_turn"),
        ("content_filter", False, "refusal"),
        (None, False, "end_turn"),
        ("surprise", False, "end_turn"),
        ("stop", True, "tool_use"),  # some servers say "stop" after tool calls
        (None, True, "tool_use"),
        ("tool_calls", True, "tool_use"),
        ("function_call", True, "tool_use"),
        ("length", True, "max_tokens"),
    ],
)
def test_finish_reasons(finish: Any, with_call: bool, stop_reason: str) -> None:
    message: dict[str, Any] = {"content": "x"}
    if with_call:
        message["tool_calls"] = [call("call_1", "now", "{}")]
    assert answer(completion(message, finish))["stop_reason"] == stop_reason


def counts(**usage: int) -> dict[str, int]:
    zeros = {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    return {**zeros, "output_tokens": 0, **usage}


def test_usage_subtracts_cached_tokens_from_the_prompt() -> None:
    usage = {"prompt_tokens": 2110, "completion_tokens": 7, "total_tokens": 2117,
             "prompt_tokens_details": {"cached_tokens": 2000, "audio_tokens": 0}}  # fmt: skip
    expected = counts(input_tokens=110, cache_read_input_tokens=2000, output_tokens=7)
    assert answer(completion({"content": "x"}, usage=usage))["usage"] == expected
    assert answer(completion({"content": "x"}, usage=None))["usage"] == counts()
    usage["prompt_tokens"] = 5  # fewer than the cached: never negative
    assert answer(completion({"content": "x"}, usage=usage))["usage"]["input_tokens"] == 0


@pytest.mark.parametrize(
    "body",
    [
        b"<html>not json</html>",
        b"[]",
        b'{"choices":[]}',
        b'{"choices":[{"message":"hi"}]}',
        completion({"content": 5}),
        completion({"content": "x", "tool_calls": "call"}),
        completion({"tool_calls": [{"id": "c", "type": "function"}]}),
        completion({"tool_calls": [call("c", "f", "[1, 2]")]}),
        completion({"tool_calls": [call("c", "f", '"text"')]}),
        completion({"tool_calls": [call("c", "f", '{"cut')]}),
        completion({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": 5}}]}),
        completion({"content": "x"}, usage=[1]),
    ],
)
def test_an_answer_that_is_not_a_chat_completion(body: bytes) -> None:
    with pytest.raises(MalformedResponse):
        response_from_chat(body, model="m", names=ToolNames())


# --- errors --------------------------------------------------------------------------------------


def openai_error(text: str, kind: str, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": text, "type": kind, "param": None, "code": code}})


@pytest.mark.parametrize(
    ("status", "kind", "anthropic"),
    [
        (400, "invalid_request_error", "invalid_request_error"),
        (401, "invalid_request_error", "authentication_error"),
        (403, "permission_denied", "permission_error"),
        (404, "invalid_request_error", "not_found_error"),
        (429, "requests", "rate_limit_error"),
        (500, "server_error", "api_error"),
        (503, "server_error", "overloaded_error"),
        (502, "server_error", "api_error"),
        (418, "teapot", "invalid_request_error"),
    ],
)
def test_openai_errors_become_anthropic_errors(status: int, kind: str, anthropic: str) -> None:
    body = error_from_openai(status, openai_error("It broke.", kind, "some_code"))
    expected = {"type": "error", "error": {"type": anthropic, "message": "It broke."}}
    assert orjson.loads(body) == expected


def test_other_error_shapes_and_a_body_that_is_not_json() -> None:
    plain = error_from_openai(400, b'{"error": "bad model"}')
    assert orjson.loads(plain)["error"] == {"type": "invalid_request_error", "message": "bad model"}
    vllm = b'{"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}'
    assert orjson.loads(error_from_openai(400, vllm))["error"]["message"] == "too long"
    html = error_from_openai(502, b"<html>bad gateway sk-secret</html>")
    assert html == (
        b'{"type":"error","error":{"type":"api_error","message":"The provider answered HTTP 502."}}'
    )


# --- streams -------------------------------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **more: Any) -> SSEEvent:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o", "choices": choices, **more}  # fmt: skip
    return SSEEvent("message", orjson.dumps(body))


def fragment(index: int, arguments: str, call_id: str | None = None, name: str = "") -> SSEEvent:
    function: dict[str, Any] = {"arguments": arguments}
    piece: dict[str, Any] = {"index": index, "function": function}
    if call_id is not None:
        piece.update(id=call_id, type="function")
        function["name"] = name
    return chunk({"tool_calls": [piece]})


DONE = SSEEvent("message", b"[DONE]")


def translator(names: ToolNames | None = None) -> ChatStreamTranslator:
    return ChatStreamTranslator(model="claude-sonnet-4-5", names=names or ToolNames(),
                                message_id="msg_r1")  # fmt: skip


def events(output: bytes) -> list[tuple[str, Any]]:
    """(event name, data) pairs: each frame one `event:` line and one `data:` line."""
    frames = output.split(b"\n\n")
    assert frames[-1] == b""
    parsed = []
    for frame in frames[:-1]:
        head, data = frame.split(b"\n")
        assert head.startswith(b"event: ")
        assert data.startswith(b"data: ")
        name, payload = head[7:].decode(), orjson.loads(data[6:])
        assert payload["type"] == name
        parsed.append((name, payload))
    return parsed


def start_event() -> tuple[str, Any]:
    usage = {"input_tokens": 0, "output_tokens": 0}
    message: dict[str, Any] = {"id": "msg_r1", "type": "message", "role": "assistant",
                               "model": "claude-sonnet-4-5", "content": [], "stop_reason": None,
                               "stop_sequence": None, "usage": usage}  # fmt: skip
    return ("message_start", {"type": "message_start", "message": message})


def block_start(index: int, block: dict[str, Any]) -> tuple[str, Any]:
    body = {"type": "content_block_start", "index": index, "content_block": block}
    return ("content_block_start", body)


def delta(index: int, kind: str, key: str, value: str) -> tuple[str, Any]:
    body = {"type": "content_block_delta", "index": index, "delta": {"type": kind, key: value}}
    return ("content_block_delta", body)


def block_stop(index: int) -> tuple[str, Any]:
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


def finish(stop_reason: str, **usage: int) -> list[tuple[str, Any]]:
    body = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": counts(**usage)}  # fmt: skip
    return [("message_delta", body), ("message_stop", {"type": "message_stop"})]


PING = ("ping", {"type": "ping"})


def test_streamed_text_and_parallel_tool_calls() -> None:
    names = ToolNames()
    short = names.short(LONG)
    stream = translator(names)
    outputs = [stream.feed(chunk({"role": "assistant", "content": "", "refusal": None}))]
    assert not stream.content_started
    outputs.append(stream.feed(chunk({"content": "Let me "})))
    assert stream.content_started
    outputs += [stream.feed(e) for e in (
        chunk({"content": 'check "it"'}),
        fragment(0, "", "call_a", short),  # id and name first, the arguments in fragments
        fragment(0, '{"ci'),
        fragment(0, 'ty": "Oslo"}'),
        fragment(1, "{}", "call_b", "now"),  # a parallel call
    )]  # fmt: skip
    outputs.append(stream.feed(chunk({}, "tool_calls")))
    assert events(outputs[-1]) == [block_stop(2)]  # finish_reason closes the open block
    assert stream.stop_reason == "tool_use"
    assert not stream.finished
    assert not stream.usage_reported
    usage = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
             "prompt_tokens_details": {"cached_tokens": 100}}  # fmt: skip
    outputs.append(stream.feed(chunk(None, usage=usage)))
    assert outputs[-1] == b""
    assert stream.usage_reported
    outputs.append(stream.feed(DONE))
    assert outputs[2] == (  # the spliced hot path, byte for byte
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"check \\"it\\""}}\n\n'
    )
    assert events(b"".join(outputs)) == [
        start_event(),
        block_start(0, {"type": "text", "text": ""}),
        PING,
        delta(0, "text_delta", "text", "Let me "),
        delta(0, "text_delta", "text", 'check "it"'),
        block_stop(0),
        block_start(1, {"type": "tool_use", "id": "call_a", "name": LONG, "input": {}}),
        delta(1, "input_json_delta", "partial_json", '{"ci'),
        delta(1, "input_json_delta", "partial_json", 'ty": "Oslo"}'),
        block_stop(1),
        block_start(2, {"type": "tool_use", "id": "call_b", "name": "now", "input": {}}),
        delta(2, "input_json_delta", "partial_json", "{}"),
        block_stop(2),
        *finish("tool_use", input_tokens=20, cache_read_input_tokens=100, output_tokens=30),
    ]
    assert (stream.finished, stream.errored) == (True, False)
    assert stream.usage == counts(input_tokens=20, cache_read_input_tokens=100, output_tokens=30)
    assert stream.feed(chunk({"content": "late"})) == b""


@pytest.mark.parametrize(
    ("finish_reason", "with_call", "stop_reason"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("content_filter", False, "refusal"),
        ("stop", True, "tool_use"),
        (None, True, "tool_use"),
        (None, False, "end_turn"),
    ],
)
def test_streamed_stop_reasons(finish_reason: Any, with_call: bool, stop_reason: str) -> None:
    stream = translator()
    feed = [chunk({"content": "x"})]
    if with_call:
        feed.append(fragment(0, "{}", "call_1", "now"))
    if finish_reason is not None:
        feed.append(chunk({}, finish_reason))
    output = b"".join(stream.feed(e) for e in [*feed, DONE])
    assert events(output)[-3:] == [block_stop(1 if with_call else 0), *finish(stop_reason)]
    assert not stream.usage_reported


def test_skipped_chunks_reasoning_prompt_filters_and_data_that_is_not_json() -> None:
    stream = translator()
    assert stream.feed(SSEEvent("message", b"not json")) == b""
    assert stream.feed(SSEEvent("message", b"[1, 2]")) == b""
    filters = chunk(None, prompt_filter_results=[{"prompt_index": 0}])
    outputs = [stream.feed(filters), stream.feed(chunk({"reasoning_content": "hmm"}))]
    outputs.append(stream.feed(chunk({"reasoning": "more", "content": "Hi"})))
    outputs.append(stream.feed(chunk({"refusal": " No."}, "stop")))  # a refusal is text too
    outputs.append(stream.feed(DONE))
    assert events(b"".join(outputs)) == [
        start_event(),
        block_start(0, {"type": "text", "text": ""}),
        PING,
        delta(0, "text_delta", "text", "Hi"),
        delta(0, "text_delta", "text", " No."),
        block_stop(0),
        *finish("end_turn"),
    ]


def test_done_alone_is_a_whole_empty_message() -> None:
    stream = translator()
    assert events(stream.feed(DONE)) == [start_event(), *finish("end_turn")]
    assert stream.finished
    assert not stream.content_started


def test_tool_call_fragments_without_an_index_follow_their_id() -> None:
    stream = translator()
    pieces = [{"id": "call_1", "function": {"name": "now", "arguments": "{"}},
              {"function": {"arguments": "}"}}]  # fmt: skip
    outputs = [stream.feed(chunk({"tool_calls": [piece]})) for piece in pieces]
    assert events(b"".join(outputs))[1:] == [
        block_start(0, {"type": "tool_use", "id": "call_1", "name": "now", "input": {}}),
        PING,
        delta(0, "input_json_delta", "partial_json", "{"),
        delta(0, "input_json_delta", "partial_json", "}"),
    ]


@pytest.mark.parametrize(
    ("data", "kind", "message"),
    [
        (b'{"error":{"message":"Server error","type":"x"}}', "api_error", "Server error"),
        (b'{"error":{"message":"Model overloaded"}}', "overloaded_error", "Model overloaded"),
        (b'{"message":"at capacity","code":503}', "overloaded_error", "at capacity"),
        (b'{"message":"boom","code":"server_error"}', "api_error", "boom"),
        (b'{"error":{"code":500}}', "api_error", "The provider's stream failed."),  # no message
    ],
)
def test_an_error_payload_mid_stream_ends_it(data: bytes, kind: str, message: str) -> None:
    stream = translator()
    before = stream.feed(chunk({"content": "Hi"}))
    assert stream.content_started
    event = "message" if data.startswith(b'{"error"') else "error"  # else `event: error` says so
    body = {"type": "error", "error": {"type": kind, "message": message}}
    frame = b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"
    assert stream.feed(SSEEvent(event, data)) == frame
    assert (stream.finished, stream.errored) == (True, True)
    assert stream.feed(DONE) == b""
    assert events(before)[-1] == delta(0, "text_delta", "text", "Hi")


def test_an_error_event_whose_data_is_not_json_still_ends_the_stream() -> None:
    stream = translator()
    [(name, payload)] = events(stream.feed(SSEEvent("error", b"upstream exploded")))
    assert payload["error"] == {"type": "api_error", "message": "The provider's stream failed."}
    assert name == "error"
    assert (stream.finished, stream.errored, stream.content_started) == (True, True, False)


@pytest.mark.parametrize(
    "event",
    [
        chunk({"content": 5}),
        chunk({"tool_calls": {"index": 0}}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),  # no id, name
        chunk({"tool_calls": [{"function": {"arguments": "{}"}}]}),  # no index, id or call before
        chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": 1}}]}),
        SSEEvent("message", b'{"choices": ["x"]}'),
    ],
)
def test_a_chunk_that_is_not_chat_completions_raises(event: SSEEvent) -> None:
    with pytest.raises(MalformedResponse):
        translator().feed(event)
