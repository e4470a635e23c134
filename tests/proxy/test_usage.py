from __future__ import annotations

import orjson

from llm_gateway_proxy.tokencount import Encoder, TokenCounter
from llm_gateway_proxy.usage import Usage, estimate_tokens, model_from_payload, usage_from_payload


def _never_loads(name: str) -> Encoder:
    raise OSError(name)


# Before the tokenizer is loaded (tests/proxy/test_token_estimates.py covers it): chars / 4.
LOADING = TokenCounter(_never_loads)


def test_chat_usage_with_details() -> None:
    payload = {"usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                         "prompt_tokens_details": {"cached_tokens": 64},
                         "completion_tokens_details": {"reasoning_tokens": 7}}}  # fmt: skip
    assert usage_from_payload(payload) == Usage(100, 20, 120, 64, 7)


def test_embeddings_usage_has_no_completion() -> None:
    assert usage_from_payload({"usage": {"prompt_tokens": 8, "total_tokens": 8}}) == Usage(8, 0, 8)


def test_responses_usage_is_normalised_to_openai_chat_names() -> None:
    payload = {"usage": {"input_tokens": 30, "output_tokens": 12, "total_tokens": 42,
                         "input_tokens_details": {"cached_tokens": 10}}}  # fmt: skip
    assert usage_from_payload(payload) == Usage(30, 12, 42, 10, 0)


def test_total_is_derived_when_missing_and_garbage_is_ignored() -> None:
    assert usage_from_payload({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}) == Usage(
        3, 4, 7
    )
    assert usage_from_payload({"usage": {"prompt_tokens": "x", "completion_tokens": True}}) == (
        Usage(0, 0, 0)
    )
    assert usage_from_payload({"usage": None}) is None
    assert usage_from_payload([1, 2]) is None


def test_model_from_body_and_from_responses_event() -> None:
    assert model_from_payload({"model": "gpt-4o"}) == "gpt-4o"
    assert model_from_payload({"response": {"model": "o3"}}) == "o3"
    assert model_from_payload({"model": 5}) is None


def test_estimate_while_loading_counts_message_text_and_images_not_json_syntax() -> None:
    body = orjson.dumps({"model": "gpt-4o", "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "a" * 400},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100000}},
        ]}]})  # fmt: skip
    assert estimate_tokens(body, counter=LOADING) == 100 + 85


def test_estimate_of_non_json_is_by_length() -> None:
    assert estimate_tokens(b"x" * 40, counter=LOADING) == 10
    assert estimate_tokens(b"", counter=LOADING) == 0


def test_an_empty_model_is_not_the_model_that_answered() -> None:
    # Azure OpenAI's first stream chunk (prompt filter results) carries `"model": ""`.
    assert model_from_payload({"model": "", "choices": []}) is None
    assert model_from_payload({"model": "gpt-4o-2024-08-06"}) == "gpt-4o-2024-08-06"
