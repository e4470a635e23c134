"""Token usage: read from what the provider returns, or estimated when it returns none.

Provider shapes understood (OpenAI meanings kept: prompt includes cached, completion includes
reasoning):
  chat / completions / embeddings  {"usage": {"prompt_tokens", "completion_tokens", ...}}
  responses                        {"usage": {"input_tokens", "output_tokens", ...}}
  responses stream events          {"type": "response.completed", "response": {"usage": ...}}

When there is none, tokens are estimated: the text a body carries (streams: streaming.py) counted
with the model family's tokenizer (tokencount.py: loaded lazily, in a thread, on the first
estimate; 22-45 MiB per encoding, bounded time per count), and characters / 4 until it is loaded.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import orjson

from llm_gateway_proxy.tokencount import PROCESS_COUNTER, TokenCounter

# OpenAI's rule of thumb for English text: only until the tokenizer is loaded, and for non-JSON.
CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 85
_TEXT_KEYS = frozenset({"content", "text", "prompt", "input", "instructions", "arguments",
                        "system"})  # fmt: skip
# The most an image costs Anthropic's models (after their resize to ~1.15 megapixels: w*h/750).
MESSAGES_IMAGE_TOKENS = 1600


class Usage(NamedTuple):
    prompt: int = 0
    completion: int = 0
    total: int = 0
    cached: int = 0
    reasoning: int = 0
    cache_write: int = 0  # prompt tokens written to the provider's cache (part of `prompt`)


def usage_from_payload(payload: Any) -> Usage | None:
    """The usage object of a response body or stream chunk, if it carries one."""
    if not isinstance(payload, dict):
        return None
    raw = payload.get("usage")
    if raw is None and isinstance(payload.get("response"), dict):
        raw = payload["response"].get("usage")
    if not isinstance(raw, dict):
        return None
    cache_write = 0
    if "input_tokens" in raw or "output_tokens" in raw:
        prompt = _int(raw.get("input_tokens"))
        completion = _int(raw.get("output_tokens"))
        cached = _int(_detail(raw, "input_tokens_details", "cached_tokens"))
        reasoning = _int(_detail(raw, "output_tokens_details", "reasoning_tokens"))
    else:
        prompt = _int(raw.get("prompt_tokens"))
        completion = _int(raw.get("completion_tokens"))
        cached = _int(_detail(raw, "prompt_tokens_details", "cached_tokens"))
        reasoning = _int(_detail(raw, "completion_tokens_details", "reasoning_tokens"))
        # Set by the Anthropic translation (providers/anthropic_response.py): cache creation.
        cache_write = _int(_detail(raw, "prompt_tokens_details", "cache_write_tokens"))
    total = _int(raw.get("total_tokens")) or prompt + completion
    return Usage(prompt, completion, total, cached, reasoning, cache_write)


def model_from_payload(payload: Any) -> str | None:
    """The model that answered, from a response body or a stream chunk."""
    if not isinstance(payload, dict):
        return None
    model = payload.get("model")
    if model is None and isinstance(payload.get("response"), dict):
        model = payload["response"].get("model")
    return model if isinstance(model, str) and model else None  # Azure: "" before the model


def estimate_tokens(
    body: bytes, model: str | None = None, counter: TokenCounter = PROCESS_COUNTER
) -> int:
    """The tokens of the text a JSON body carries (messages, prompt, input, output), counted
    with the tokenizer of `model` (else of the body's own `model`); images count 85 each."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return math.ceil(len(body) / CHARS_PER_TOKEN) if body else 0
    texts, images = _texts(payload)
    if model is None and isinstance(payload, dict) and isinstance(payload.get("model"), str):
        model = payload["model"]
    tokens = counter.count(texts, model)
    if tokens is None:  # the tokenizer is still loading
        tokens = math.ceil(sum(map(len, texts)) / CHARS_PER_TOKEN)
    return tokens + images * IMAGE_TOKENS


def _texts(root: Any) -> tuple[list[str], int]:
    """(the text strings, images) of a decoded body; iterative, so no nesting depth a client
    sends can exhaust the interpreter's stack."""
    texts: list[str] = []
    images = 0
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        value, inside_text = stack.pop()
        if isinstance(value, str):
            if inside_text:
                texts.append(value)
        elif isinstance(value, dict):
            if value.get("type") in ("image_url", "input_image", "image"):
                images += 1
                continue
            stack.extend((item, key in _TEXT_KEYS) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((item, inside_text) for item in reversed(value))
    return texts, images  # in document order: children are pushed last first


def _detail(raw: dict[str, Any], group: str, key: str) -> Any:
    details = raw.get(group)
    return details.get(key) if isinstance(details, dict) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def estimate_message_tokens(
    body: bytes, model: str | None, counter: TokenCounter = PROCESS_COUNTER
) -> int:
    """The input tokens of a Messages request (`/v1/messages/count_tokens` for a model no
    provider can count for): system, messages, tool calls and results, and the tool definitions
    (names, descriptions, schemas as JSON), counted with `model`'s tokenizer; images at the most
    an image costs."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(payload, dict):
        return 0
    texts, images = _texts({key: payload.get(key) for key in ("system", "messages")})
    for message in payload.get("messages") or ():
        for block in (message.get("content") if isinstance(message, dict) else None) or ():
            if isinstance(block, dict) and block.get("type") == "tool_use":
                texts.append(orjson.dumps(block.get("input")).decode())
    for tool in payload.get("tools") or ():
        if isinstance(tool, dict):
            texts.append(orjson.dumps(tool).decode())
    tokens = counter.count(texts, model)
    if tokens is None:
        tokens = math.ceil(sum(map(len, texts)) / CHARS_PER_TOKEN)
    return tokens + images * MESSAGES_IMAGE_TOKENS
