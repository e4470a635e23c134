"""CPU per chunk of the SSE tap alone, on a realistic stream: a micro-benchmark, no processes.

    uv run python bench/sse_tap.py [--chunks 200] [--repeat 7]

The stream is what OpenAI sends for a chat completion when the gateway added
`stream_options.include_usage`: every chunk carries `"usage":null`, then the usage-only chunk and
`[DONE]`. Each chunk is fed on its own, as a token-by-token upstream delivers them. Prints the
best of `--repeat` runs in µs per chunk (noise only ever adds).
"""

from __future__ import annotations

import argparse
import timeit

import orjson

from llm_gateway_proxy.streaming import SSETap


def openai_stream(chunks: int) -> list[bytes]:
    """`chunks` content chunks between the role and stop chunks, as the provider frames them."""
    base = {"id": "chatcmpl-AbC123", "object": "chat.completion.chunk", "created": 1764400000,
            "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_0ba0d124f1"}  # fmt: skip

    def event(choices: list[object], usage: object = None) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": choices, "usage": usage}) + b"\n\n"

    def choice(delta: dict[str, str | None], finish: str | None = None) -> dict[str, object]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks,
             "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}  # fmt: skip
    return [
        event([choice({"role": "assistant", "content": "", "refusal": None})]),
        *(event([choice({"content": f" word{i}"})]) for i in range(chunks)),
        event([choice({}, "stop")]),
        event([], usage),
        b"data: [DONE]\n\n",
    ]


def per_chunk_us(stream: list[bytes], *, strip: bool, repeat: int) -> float:
    def one_stream() -> None:
        tap = SSETap(strip_usage_chunk=strip)
        for piece in stream:
            tap.feed(piece)
        tap.flush()

    number = max(1, 20_000 // len(stream))
    best = min(timeit.repeat(one_stream, number=number, repeat=repeat))
    return best / number / len(stream) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description="µs per chunk of the SSE tap.")
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    stream = openai_stream(args.chunks)
    for strip in (True, False):
        mode = "gateway added include_usage" if strip else "client asked for usage"
        print(f"{per_chunk_us(stream, strip=strip, repeat=args.repeat):.2f} µs/chunk "
              f"({len(stream)} chunks, {mode})")  # fmt: skip
    floor = timeit.repeat(lambda: [piece for piece in stream], number=100, repeat=args.repeat)
    print(f"{min(floor) / 100 / len(stream) * 1e6:.2f} µs/chunk (a bare loop over the chunks)")


if __name__ == "__main__":
    main()
