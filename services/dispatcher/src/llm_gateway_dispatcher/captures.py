"""What the captured bodies of an event say: the request (messages, parameters) and the answer
(the assistant's message), for the sinks that show conversations.

Bodies are captured only when the proxy runs with `METERING_CAPTURE_BYTES`, and cut at that
size; a cut or unparseable body is treated as absent (a sink then gets only what the event
knows). A streamed answer is captured as the SSE the provider sent, and assembled here into the
message (or whole response) a non-streamed call would have returned.
"""

from __future__ import annotations

from typing import Any

import orjson

from llm_gateway_common.events import UsageEvent

# Request fields that are sampling parameters, as Lunary's `params` shows them.
PARAMS = (
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "max_output_tokens", "n",
    "stop", "seed", "presence_penalty", "frequency_penalty", "response_format", "tools",
    "tool_choice", "reasoning_effort",
)  # fmt: skip


def request_body(event: UsageEvent) -> dict[str, Any] | None:
    """The client's request as a JSON object, if it was captured whole."""
    if event.captured_request is None or event.captured_request_truncated:
        return None
    parsed = _json(event.captured_request)
    return parsed if isinstance(parsed, dict) else None


def request_input(body: dict[str, Any]) -> Any:
    """The conversation sent: chat `messages`, Responses `instructions` and `input` as chat
    messages, or a completions `prompt`."""
    if "messages" in body:
        return body["messages"]
    if "input" in body or "instructions" in body:
        return responses_messages(body)
    return body.get("prompt")


def responses_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A Responses API request as chat messages `{role, content: text}`: `instructions` as the
    system message, a string `input` as the user's, each input item with its text parts joined
    (`input_text`, `output_text`), function calls and their outputs as text."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    for item in _list(items):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "function_call":
            call = f"{item.get('name')}({item.get('arguments') or ''})"
            messages.append({"role": "assistant", "content": call})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": _text(item.get("output"))})
        elif isinstance(item.get("role"), str):
            messages.append({"role": item["role"], "content": _text(item.get("content"))})
    return messages


def _text(content: Any) -> str:
    """The text of a message's content: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    return "".join(
        part["text"]
        for part in _list(content)
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


def request_params(body: dict[str, Any]) -> dict[str, Any]:
    return {name: body[name] for name in PARAMS if body.get(name) is not None}


def response_body(event: UsageEvent) -> dict[str, Any] | None:
    """The provider's answer as a JSON object (a stream assembled into one), if captured whole."""
    if event.captured_response is None or event.captured_response_truncated:
        return None
    if event.stream:
        return assemble_stream(event.captured_response)
    parsed = _json(event.captured_response)
    return parsed if isinstance(parsed, dict) else None


def assistant_message(response: dict[str, Any]) -> dict[str, Any] | None:
    """The answer as a chat message, from a chat, completions or Responses API body."""
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first = choices[0]
        if isinstance(first.get("message"), dict):
            return dict(first["message"])
        if isinstance(first.get("text"), str):
            return {"role": "assistant", "content": first["text"]}
    output = response.get("output")
    if isinstance(output, list):
        texts = [
            part.get("text", "")
            for item in output
            if isinstance(item, dict) and item.get("type") == "message"
            for part in _list(item.get("content"))
            if isinstance(part, dict) and part.get("type") == "output_text"
        ]
        return {"role": "assistant", "content": "".join(texts)}
    return None


def assemble_stream(sse: str) -> dict[str, Any] | None:
    """A streamed chat/completions/Responses answer as the body a non-streamed call returns."""
    chunks = [chunk for chunk in _sse_data(sse) if isinstance(chunk, dict)]
    if not chunks:
        return None
    for chunk in chunks:  # the Responses API sends the whole response at the end
        if chunk.get("type") == "response.completed" and isinstance(chunk.get("response"), dict):
            return dict(chunk["response"])
    return _assemble_choices(chunks)


def _assemble_choices(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    first = chunks[0]
    text: list[str] = []
    role = "assistant"
    finish: str | None = None
    usage: Any = None
    chat = first.get("object") == "chat.completion.chunk"
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in _list(chunk.get("choices")):
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            finish = choice.get("finish_reason") or finish
            delta = choice.get("delta") if chat else choice
            if isinstance(delta, dict):
                role = delta.get("role") or role
                piece = delta.get("content") if chat else delta.get("text")
                if isinstance(piece, str):
                    text.append(piece)
    content = "".join(text)
    choice_body: dict[str, Any] = (
        {"message": {"role": role, "content": content}} if chat else {"text": content}
    )
    return {
        "id": first.get("id"),
        "object": "chat.completion" if chat else "text_completion",
        "created": first.get("created"),
        "model": first.get("model"),
        "choices": [{"index": 0, **choice_body, "finish_reason": finish}],
        **({"usage": usage} if usage is not None else {}),
    }


def _sse_data(sse: str) -> list[Any]:
    """The JSON payload of each SSE event (`data:` lines joined), `[DONE]` and junk skipped."""
    payloads: list[Any] = []
    for block in sse.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(
            line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")
        )
        if data and data != "[DONE]":
            parsed = _json(data)
            if parsed is not None:
                payloads.append(parsed)
    return payloads


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
