"""What OpenAI's chat/completions, completions and models payloads look like, for the fake
(openai.py): the pieces of answers and streams, and the fake's deterministic token counts."""

from __future__ import annotations

from typing import Any


def answer_model(requested: str) -> str:
    """OpenAI answers with a dated snapshot of the alias that was asked for."""
    return requested if requested[-10:-6] == "-202" else f"{requested}-2024-07-18"


def delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A call streamed as OpenAI does: its id and name first, then its arguments in pieces."""
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        function = call["function"]
        deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                       "function": {"name": function["name"],
                                                    "arguments": ""}}]})  # fmt: skip
        deltas += [
            {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            for piece in pieces(function["arguments"])
        ]
    return deltas


def pieces(arguments: str, size: int = 6) -> list[str]:
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def call_tokens(calls: list[dict[str, Any]]) -> int:
    """A call costs its name and one token per streamed piece of its arguments."""
    return sum(1 + len(pieces(call["function"]["arguments"])) for call in calls)


def text_choice(text: str, finish: str | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "system"}


def prompt_tokens(value: Any) -> int:
    """A deterministic token count: one per whitespace-separated word of text, plus framing."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(prompt_tokens(item) for item in value) + (3 if value else 0)
    if isinstance(value, dict):
        if value.get("type") in ("image_url", "input_image"):
            return 85
        return sum(prompt_tokens(v) for k, v in value.items() if k in ("content", "text"))
    return 0
