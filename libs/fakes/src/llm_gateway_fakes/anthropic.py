"""A fake Anthropic Messages API: the real wire format, the real API's refusals, configurable
timing and failures, and a record of what it received. Used by the routing tests and `bench/`.

It rejects what the real API rejects, with Anthropic's error body
`{"type":"error","error":{"type","message"},"request_id"}`: no key (`x-api-key`, or
`Authorization: Bearer` as anthropic SDK 2.14 sends it) or a wrong one (401), no or an unknown
`anthropic-version` (400), an `anthropic-beta` flag it does not know (400), unknown top-level
fields, no `model`, no `max_tokens` (an int >= 1),
an empty `messages`, a `system` role inside `messages`, a first message that is not `user`, roles
that do not alternate, empty content, a `tool_result` that does not answer the previous
assistant turn's `tool_use` ids (or a `tool_use` left unanswered), an image without a valid
source, bad tools or tool_choice (all 400 `invalid_request_error`; `anthropic_rules.py`).

Answers are text (`words` words), or `tool_use` blocks when tools are given and either
`tool_choice` forces one or `Behaviour.use_tools` says so. Streams follow the real sequence:
`message_start` (input usage with the cache fields), per block `content_block_start` / `ping`
(after the first start) / `content_block_delta` (`text_delta`, or `input_json_delta` fragments
starting with an empty one) / `content_block_stop`, then `message_delta` (stop_reason, CUMULATIVE
`output_tokens`) and `message_stop`; no `[DONE]`. `Behaviour.error_after_deltas` ends a 200
stream with `event: error` after that many deltas.

Run standalone: `python -m llm_gateway_fakes.anthropic --port 9001`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from llm_gateway_fakes.anthropic_rules import request_problem
from llm_gateway_fakes.openai import Received
from llm_gateway_fakes.threaded import ThreadedServer
from llm_gateway_fakes.tool_inputs import sample_input

VERSIONS = frozenset({"2023-01-01", "2023-06-01", "2026-10-21"})
# `anthropic-beta` flags the API knows (a sample of the real list: Claude Code's among them);
# any other is refused with a 400, as the real API refuses it.
BETAS = frozenset({
    "claude-code-20250219", "interleaved-thinking-2025-05-14",
    "fine-grained-tool-streaming-2025-05-14",
    "prompt-caching-2024-07-31", "token-efficient-tools-2025-02-19", "output-128k-2025-02-19",
    "context-1m-2025-08-07", "context-management-2025-06-27", "files-api-2025-04-14",
    "computer-use-2025-01-24", "oauth-2025-04-20", "structured-outputs-2025-11-13",
})  # fmt: skip

# Anthropic's error `type` for each status it answers with (their errors page).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_MAX_BODY = 32 * 1024 * 1024  # the Messages API's request size limit


@dataclass
class Behaviour:
    """What the fake does next; tests change it between requests."""

    words: int = 8
    chunk_delay: float = 0.0
    response_delay: float = 0.0
    stream_start_delay: float = 0.0  # after the 200 headers, before message_start
    content_delay: float = 0.0  # after message_start, before the first content (thinking time)
    betas: frozenset[str] = BETAS  # the beta flags it accepts (a Bedrock-like server: fewer)
    api_key: str | None = None  # None: any non-empty key is accepted, but one is required
    models: frozenset[str] | None = None  # None: every model exists; else 404 for the others
    fail_status: int | None = None
    fail_times: int | None = None  # None: every request fails while fail_status is set
    retry_after: int = 1
    use_tools: bool = False  # with tool_choice auto: answer with a text block, then tool_use
    tool_calls: int = 1  # tool_use blocks per answer (1 when disable_parallel_tool_use)
    stop_reason: str | None = None  # override, e.g. "refusal" or "pause_turn"
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    error_after_deltas: int | None = None
    stream_error_type: str = "overloaded_error"
    ping_every: int = 0  # extra pings every N deltas (0: only the one after the first block start)


@dataclass
class FakeAnthropic:
    """The fake's state: behaviour, what it received, what usage it reported, streams cut off."""

    behaviour: Behaviour = field(default_factory=Behaviour)
    received: list[Received] = field(default_factory=list)
    usages: list[dict[str, Any]] = field(default_factory=list)
    streams_cut: int = 0
    streams_completed: int = 0
    streams_errored: int = 0  # ended by an `event: error`
    abandoned: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.received.clear()
        self.usages.clear()
        self.streams_cut = 0
        self.streams_completed = 0
        self.streams_errored = 0
        self.abandoned = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_get("/v1/models", self._models)
        return app

    # --- handlers -------------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body, failure = await self._admit(request)
        if failure is not None:
            return failure
        blocks, stop_reason = self._answer(body)
        output_tokens = sum(_block_tokens(block) for block in blocks)
        usage = {
            "input_tokens": _input_tokens(body),
            "cache_creation_input_tokens": self.behaviour.cache_creation_input_tokens,
            "cache_read_input_tokens": self.behaviour.cache_read_input_tokens,
            "output_tokens": output_tokens,
        }
        self.usages.append(usage)
        message = {
            "id": self._id("msg"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": blocks,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        if body.get("stream"):
            return await self._stream(request, message)
        return web.json_response(message, headers={"request-id": self._id("req")}, dumps=_dumps)

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        body, failure = await self._admit(request, count_only=True)
        if failure is not None:
            return failure
        return web.json_response({"input_tokens": _input_tokens(body)}, dumps=_dumps)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        names = sorted(self.behaviour.models or {"claude-sonnet-4-5", "claude-haiku-4-5"})
        data = [
            {"type": "model", "id": name, "display_name": name,
             "created_at": "2025-09-29T00:00:00Z"}
            for name in names
        ]  # fmt: skip
        page = {"data": data, "has_more": False, "first_id": names[0], "last_id": names[-1]}
        return web.json_response(page, dumps=_dumps)

    # --- admission: record, authenticate, fail on purpose, validate -----------------------

    async def _admit(
        self, request: web.Request, *, count_only: bool = False
    ) -> tuple[dict[str, Any], web.Response | None]:
        """Record the request and check it as Anthropic would; a failure is the response."""
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.received.append(
            Received(request.method, request.path, request.query_string, headers, raw)
        )
        behaviour = self.behaviour
        if behaviour.response_delay and await _abandoned_while_waiting(
            request, behaviour.response_delay
        ):
            self.abandoned += 1
            return {}, error_response(499, "client closed request")
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if not key:
            return {}, error_response(401, "x-api-key header is required")
        if behaviour.api_key is not None and key != behaviour.api_key:
            return {}, error_response(401, "invalid x-api-key")
        version = headers.get("anthropic-version")
        if version is None:
            return {}, error_response(400, "anthropic-version: header is required")
        if version not in VERSIONS:
            return {}, error_response(400, f'anthropic-version: "{version}" is not a valid version')
        unknown = [
            flag.strip() for flag in headers.get("anthropic-beta", "").split(",")
            if flag.strip() and flag.strip() not in behaviour.betas
        ]  # fmt: skip
        if unknown:
            listed = ", ".join(f"`{flag}`" for flag in unknown)
            return {}, error_response(
                400,
                f"Unexpected value(s) {listed} for the `anthropic-beta` "
                "header. Please consult our documentation at "
                "docs.anthropic.com or try again without the header.",
            )
        if behaviour.fail_status is not None and behaviour.fail_times != 0:
            if behaviour.fail_times is not None:
                behaviour.fail_times -= 1
            return {}, self._scripted_failure(behaviour.fail_status)
        if len(raw) > _MAX_BODY:
            return {}, error_response(413, "Request exceeds the maximum allowed number of bytes.")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}, error_response(400, "There was an error parsing the body of your request.")
        if not isinstance(body, dict):
            return {}, error_response(400, "Input should be a valid dictionary")
        problem = request_problem(body, count_only=count_only)
        if problem is not None:
            return {}, error_response(400, problem)
        if behaviour.models is not None and body["model"] not in behaviour.models:
            return {}, error_response(404, f"model: {body['model']}")
        return body, None

    def _scripted_failure(self, status: int) -> web.Response:
        messages = {
            429: "Number of request tokens has exceeded your per-minute rate limit.",
            529: "Overloaded",
            500: "Internal server error",
        }
        headers = {"retry-after": str(self.behaviour.retry_after)} if status == 429 else {}
        message = messages.get(status, "The fake was told to fail.")
        return error_response(status, message, headers)

    # --- answers --------------------------------------------------------------------------

    def _answer(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        """The content blocks and stop_reason for a valid request."""
        behaviour = self.behaviour
        words = [f"word{i} " for i in range(behaviour.words)]
        choice = body.get("tool_choice") or {"type": "auto"}
        tools = [t for t in body.get("tools") or [] if "input_schema" in t]
        forced = choice["type"] in ("any", "tool")
        if tools and (forced or (behaviour.use_tools and choice["type"] == "auto")):
            if choice["type"] == "tool":
                tools = [t for t in tools if t["name"] == choice["name"]]
            count = 1 if choice.get("disable_parallel_tool_use") else behaviour.tool_calls
            calls = [
                {"type": "tool_use", "id": self._id("toolu"), "name": tool["name"],
                 "input": sample_input(tool["input_schema"])}
                for tool in itertools.islice(itertools.cycle(tools), count)
            ]  # fmt: skip
            # A forced tool choice prefills the turn, so the model writes no text before it.
            preamble = [] if forced else [{"type": "text", "text": "Let me check that."}]
            return preamble + calls, behaviour.stop_reason or "tool_use"
        stop_reason = "end_turn"
        if len(words) > body["max_tokens"]:
            words, stop_reason = words[: body["max_tokens"]], "max_tokens"
        return [{"type": "text", "text": "".join(words)}], behaviour.stop_reason or stop_reason

    async def _stream(self, request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8",
                     "Cache-Control": "no-cache", "request-id": self._id("req")}
        )  # fmt: skip
        await response.prepare(request)
        behaviour = self.behaviour
        deltas = 0
        try:
            if behaviour.stream_start_delay:
                await asyncio.sleep(behaviour.stream_start_delay)
            for event in stream_events(message, ping_every=behaviour.ping_every):
                first = event["type"] == "content_block_start" and event["index"] == 0
                if first and behaviour.content_delay:
                    await asyncio.sleep(behaviour.content_delay)
                if event["type"] == "content_block_delta":
                    if deltas == behaviour.error_after_deltas:
                        error = {"type": behaviour.stream_error_type, "message": "Overloaded"}
                        # Counted before the end goes out: a client that read the end must
                        # find it counted (the fake runs in another thread).
                        self.streams_errored += 1
                        await response.write(_frame({"type": "error", "error": error}))
                        await response.write_eof()
                        return response
                    deltas += 1
                await response.write(_frame(event))
                if behaviour.chunk_delay and event["type"] == "content_block_delta":
                    await asyncio.sleep(behaviour.chunk_delay)
            self.streams_completed += 1  # before the end goes out, as above
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.streams_cut += 1
            raise
        return response

    def _id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):08d}"


class FakeAnthropicServer(ThreadedServer[FakeAnthropic]):
    """A FakeAnthropic on 127.0.0.1 in a thread of its own; `base_url` has no `/v1`, as the
    anthropic SDK's does not."""

    def __init__(self, fake: FakeAnthropic | None = None, port: int = 0) -> None:
        super().__init__(fake or FakeAnthropic(), port)


def stream_events(message: dict[str, Any], *, ping_every: int = 0) -> list[dict[str, Any]]:
    """The Messages stream events for a finished `message`, in the order the real API sends."""
    started = {**message, "content": [], "stop_reason": None,
               "usage": {**message["usage"], "output_tokens": 1}}  # fmt: skip
    events: list[dict[str, Any]] = [{"type": "message_start", "message": started}]
    deltas = 0
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            opening = {**block, "input": {}}
            text = orjson.dumps(block["input"]).decode()
            # The real API opens with an empty fragment, then splits the JSON anywhere.
            pieces = [""] + [text[i : i + 7] for i in range(0, len(text), 7)]
            delta = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
        else:
            opening = {"type": "text", "text": ""}
            words = re.findall(r"\S+\s*", block["text"]) or [block["text"]]
            delta = [{"type": "text_delta", "text": word} for word in words]
        events.append({"type": "content_block_start", "index": index, "content_block": opening})
        if index == 0:
            events.append({"type": "ping"})
        for item in delta:
            events.append({"type": "content_block_delta", "index": index, "delta": item})
            deltas += 1
            if ping_every and deltas % ping_every == 0:
                events.append({"type": "ping"})
        events.append({"type": "content_block_stop", "index": index})
    events.append({
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": message["usage"]["output_tokens"]},
    })  # fmt: skip
    events.append({"type": "message_stop"})
    return events


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An Anthropic error body with the `type` Anthropic uses for `status`."""
    kind = ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message},
            "request_id": "req_fake_error"}  # fmt: skip
    all_headers = {"request-id": "req_fake_error", **(headers or {})}
    return web.json_response(body, status=status, headers=all_headers, dumps=_dumps)


# --- request validation: the first problem, worded as the real API words it ----------------


async def _abandoned_while_waiting(request: web.Request, delay: float) -> bool:
    """Wait `delay` seconds, noticing if the caller closes the connection meanwhile."""
    loop = asyncio.get_running_loop()
    until = loop.time() + delay
    while loop.time() < until:
        transport = request.transport
        if transport is None or transport.is_closing():
            return True
        await asyncio.sleep(0.01)
    return False


def _input_tokens(body: dict[str, Any]) -> int:
    """A deterministic count: one per word of text, 85 per image, plus framing per message.
    Like Anthropic's `input_tokens`, it excludes the cache tokens the behaviour reports."""
    return _tokens(body.get("system")) + _tokens(body.get("messages"))


def _tokens(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_tokens(item) for item in value) + (3 if value else 0)
    if isinstance(value, dict):
        if value.get("type") == "image":
            return 85
        return sum(_tokens(value[k]) for k in ("content", "text") if k in value)
    return 0


def _block_tokens(block: dict[str, Any]) -> int:
    if block["type"] == "text":
        return len(block["text"].split())
    return 1 + len(orjson.dumps(block["input"])) // 4


def _frame(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a fake Anthropic API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between deltas")
    parser.add_argument("--words", type=int, default=8, help="completion length in deltas")
    args = parser.parse_args()
    fake = FakeAnthropic(behaviour=Behaviour(words=args.words, chunk_delay=args.chunk_delay))
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
