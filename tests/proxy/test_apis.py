"""Request validation: malformed requests are refused with the OpenAI `param` that is wrong."""

from __future__ import annotations

import orjson
import pytest

from llm_gateway_proxy.apis import CHAT, EMBEDDINGS, RESPONSES, client_asked_for_usage, wants_stream
from llm_gateway_proxy.errors import InvalidJSON, InvalidRequest, MissingParameter


def test_valid_chat_request_keeps_what_metering_needs() -> None:
    request = CHAT.parse(b'{"model":"m","messages":[{"role":"user","content":"hi"}],'
                         b'"stream":true,"user":"u-1","temperature":0.2}')  # fmt: skip
    assert request.model == "m"
    assert request.user == "u-1"
    assert wants_stream(request)
    assert not client_asked_for_usage(request)


@pytest.mark.parametrize(
    ("body", "error", "param"),
    [
        (b"{not json", InvalidJSON, None),
        (b"[1,2]", InvalidRequest, None),
        (b'{"messages":[]}', MissingParameter, "model"),
        (b'{"model":7,"messages":[]}', InvalidRequest, "model"),
        (b'{"model":"m","messages":"hi"}', InvalidRequest, "messages"),
        (b'{"model":"m","messages":[{"content":"hi"}]}', MissingParameter, "messages[0].role"),
        (b'{"model":"m","messages":[],"stream":"yes"}', InvalidRequest, "stream"),
    ],
)
def test_malformed_chat_requests(body: bytes, error: type[Exception], param: str | None) -> None:
    with pytest.raises(error) as caught:
        CHAT.parse(body)
    assert type(caught.value) is error
    assert getattr(caught.value, "param", None) == param


def test_embeddings_need_input_and_responses_need_model() -> None:
    with pytest.raises(MissingParameter) as caught:
        EMBEDDINGS.parse(b'{"model":"e"}')
    assert caught.value.param == "input"
    with pytest.raises(MissingParameter):
        RESPONSES.parse(b'{"input":"hi"}')


def test_error_body_is_openai_shaped() -> None:
    with pytest.raises(InvalidRequest) as caught:
        CHAT.parse(b'{"model":"m"}')
    assert orjson.loads(caught.value.body()) == {
        "error": {
            "message": "Missing required parameter: 'messages'.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "missing_required_parameter",
        }
    }
