"""CPU per streamed chunk of the stream translations alone: a micro-benchmark, no processes.

    uv run python bench/translate.py [--chunks 200] [--repeat 7]

The Anthropic stream is what the Messages API sends for a text answer (message_start, a ping, a
text block of `--chunks` deltas, message_delta with usage, message_stop), each event fed on its
own as a token-by-token provider delivers them, through the parser and the translator the relay
uses for chat completions (`providers/anthropic_stream.py`), and through the tap that watches it
on its way to a Messages client untouched (`relay_messages.MessagesTap`). The OpenAI stream
(`--chunks` content chunks, the finish chunk, the usage chunk, [DONE]) goes through the parser
and the translator to a Messages stream (`providers/messages_openai.py`). Prints the best of
`--repeat` runs in µs per chunk.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

import orjson

from llm_gateway_proxy.providers.anthropic_stream import SSEParser, StreamTranslator
from llm_gateway_proxy.providers.messages_openai import ToolNames
from llm_gateway_proxy.providers.messages_openai_answer import ChatStreamTranslator
from llm_gateway_proxy.relay_messages import MessagesTap


def anthropic_stream(chunks: int) -> list[bytes]:
    def event(name: str, data: dict[str, object]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    message = {"id": "msg_01Abc", "type": "message", "role": "assistant", "content": [],
               "model": "claude-sonnet-4-5-20250929", "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": 12, "output_tokens": 1}}  # fmt: skip
    return [
        event("message_start", {"type": "message_start", "message": message}),
        event("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}}),
        event("ping", {"type": "ping"}),
        *(event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": f" word{i}"}})
          for i in range(chunks)),
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
              "stop_sequence": None}, "usage": {"output_tokens": chunks}}),
        event("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip


def per_chunk_us(stream: list[bytes], *, repeat: int) -> float:
    def one_stream() -> None:
        parser = SSEParser()
        translator = StreamTranslator(created=1764400000, include_usage=True)
        for piece in stream:
            for name, data in parser.feed(piece):
                translator.feed(name, data)

    number = max(1, 20_000 // len(stream))
    best = min(timeit.repeat(one_stream, number=number, repeat=repeat))
    return best / number / len(stream) * 1e6


def openai_stream(chunks: int) -> list[bytes]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1764400000,
            "model": "gpt-4o-2024-08-06"}  # fmt: skip

    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": f" word{i}"}) for i in range(chunks)),
        chunk({}, "stop"),
        b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n",
        b"data: [DONE]\n\n",
    ]


def _best_us(run: Callable[[], None], stream: list[bytes], repeat: int) -> float:
    number = max(1, 20_000 // len(stream))
    best = min(timeit.repeat(run, number=number, repeat=repeat))
    return best / number / len(stream) * 1e6


def messages_per_chunk_us(stream: list[bytes], *, repeat: int) -> float:
    """chat.completion chunks to a Messages stream (a Messages client, an OpenAI target)."""

    def one_stream() -> None:
        parser = SSEParser()
        translator = ChatStreamTranslator(model="gpt-coder", names=ToolNames(), message_id="m")
        for piece in stream:
            for event in parser.feed(piece):
                translator.feed(event)

    return _best_us(one_stream, stream, repeat)


def tap_per_chunk_us(stream: list[bytes], *, repeat: int) -> float:
    """A Messages stream watched on its way through (a Messages client, an Anthropic target)."""

    def one_stream() -> None:
        tap = MessagesTap()
        for piece in stream:
            tap.feed(piece)

    return _best_us(one_stream, stream, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description="µs per chunk of the Anthropic translation.")
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    figure = per_chunk_us(anthropic_stream(args.chunks), repeat=args.repeat)
    print(f"anthropic stream translation (parse + translate): {figure:.2f} µs/chunk")
    messages = messages_per_chunk_us(openai_stream(args.chunks), repeat=args.repeat)
    print(f"openai stream to a Messages client (parse + translate): {messages:.2f} µs/chunk")
    tap = tap_per_chunk_us(anthropic_stream(args.chunks), repeat=args.repeat)
    print(f"anthropic stream to a Messages client (the tap): {tap:.2f} µs/chunk")


if __name__ == "__main__":
    main()
