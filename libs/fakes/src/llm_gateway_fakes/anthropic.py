"""A fake Anthropic Messages API: the real wire format, the real API's refusals, configurable
timing and failures, and a record of what it received. Used by the routing tests and `bench/`.

It rejects what the real API rejects, with Anthropic's error body
`{"type":"error","error":{"type","message"},"request_id"}`: no key (`x-api-key`, or
`Authorization: Bearer` as anthropic SDK 2.14 sends it) or a wrong one (401), no or an unknown
`anthropic-version` (400), unknown top-level fields, no `model`, no `max_tokens` (an int >= 1),
an empty `messages`, a `system` role inside `messages`, a first message that is not `user`, roles
that do not alternate, empty content, a `tool_result` that does not answer the previous
assistant turn's `tool_use` ids (or a `tool_use` left unanswered), an image without a valid
source, bad tools or tool_choice (all 400 `invalid_request_error`).

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
import base64
import binascii
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from llm_gateway_fakes.openai import Received
from llm_gateway_fakes.threaded import ThreadedServer

VERSIONS = frozenset({"2023-01-01", "2023-06-01", "2026-10-21"})

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

_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
    "output_config", "container", "mcp_servers", "context_management",
})  # fmt: skip
_BLOCK_FIELDS = {
    "text": {"text", "cache_control", "citations"},
    "image": {"source", "cache_control"},
    "document": {"source", "title", "context", "citations", "cache_control"},
    "tool_use": {"id", "name", "input", "cache_control"},
    "tool_result": {"tool_use_id", "content", "is_error", "cache_control"},
    "thinking": {"thinking", "signature"},
    "redacted_thinking": {"data"},
}
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_SERVER_TOOL = re.compile(r"^[a-z_]+_\d{8}$")
_MAX_BODY = 32 * 1024 * 1024  # the Messages API's request size limit


@dataclass
class Behaviour:
    """What the fake does next; tests change it between requests."""

    words: int = 8
    chunk_delay: float = 0.0
    response_delay: float = 0.0
    stream_start_delay: float = 0.0  # after the 200 headers, before message_start
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
                 "input": _sample_input(tool["input_schema"])}
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
                if event["type"] == "content_block_delta":
                    if deltas == behaviour.error_after_deltas:
                        error = {"type": behaviour.stream_error_type, "message": "Overloaded"}
                        await response.write(_frame({"type": "error", "error": error}))
                        await response.write_eof()
                        self.streams_errored += 1
                        return response
                    deltas += 1
                await response.write(_frame(event))
                if behaviour.chunk_delay and event["type"] == "content_block_delta":
                    await asyncio.sleep(behaviour.chunk_delay)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.streams_cut += 1
            raise
        self.streams_completed += 1
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


def request_problem(body: dict[str, Any], *, count_only: bool = False) -> str | None:
    """Why Anthropic would answer 400 to this Messages body, or None when it is valid."""
    extra = sorted(set(body) - _FIELDS)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    if not count_only:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            return "max_tokens: Field required"
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return "max_tokens: Input should be a valid integer"
        if max_tokens < 1:
            return "max_tokens: Input should be greater than or equal to 1"
    return (
        _sampling_problem(body)
        or _system_problem(body.get("system"))
        or _tools_problem(body)
        or _messages_problem(body.get("messages"))
    )


def _sampling_problem(body: dict[str, Any]) -> str | None:
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        return "temperature: Input should be less than or equal to 1"
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            return "stop_sequences: Input should be a valid list of strings"
        if any(not s.strip() for s in stops):
            return "stop_sequences: each stop sequence must contain non-whitespace"
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        return "metadata: Extra inputs are not permitted"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream: Input should be a valid boolean"
    return None


def _system_problem(system: Any) -> str | None:
    if system is None or isinstance(system, str):
        return None
    if isinstance(system, list) and all(
        isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        for b in system
    ):
        return None
    return "system: Input should be a valid string or a list of text blocks"


def _tools_problem(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                return f"tools.{i}: Input should be a valid dictionary"
            kind = tool.get("type")
            if isinstance(kind, str) and _SERVER_TOOL.match(kind):
                continue  # a versioned server tool (web_search_20250305, ...): not checked here
            if kind not in (None, "custom"):
                return _tag_problem(f"tools.{i}", kind)
            name, schema = tool.get("name"), tool.get("input_schema")
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                return (
                    f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                )
            if name in names:
                return "tools: Tool names must be unique."
            if not isinstance(schema, dict) or schema.get("type") != "object":
                return f"tools.{i}.custom.input_schema: Input should be an object schema"
            extra = sorted(set(tool) - {"type", "name", "description", "input_schema",
                                        "cache_control"})  # fmt: skip
            if extra:
                return f"tools.{i}.custom.{extra[0]}: Extra inputs are not permitted"
            names.add(name)
    choice = body.get("tool_choice")
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        return _tag_problem("tool_choice", kind)
    if kind != "none" and not tools:
        return "tool_choice: tool_choice may only be specified while providing tools"
    if kind == "tool" and choice.get("name") not in names:
        return f"tool_choice.tool.name: tool {choice.get('name')!r} was not found in tools"
    return None


def _messages_problem(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return "messages: Field required"
    if not messages:
        return "messages: at least one message is required"
    pending: set[str] = set()  # tool_use ids of the previous assistant turn
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            return f"{where}: Input should be a valid dictionary"
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            return f"{where}.{extra[0]}: Extra inputs are not permitted"
        role = message.get("role")
        if role == "system":
            return (
                f'{where}.role: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            return f"{where}.role: Input should be 'user' or 'assistant'"
        if i == 0 and role != "user":
            return 'messages: first message must use the "user" role'
        if i > 0 and role == messages[i - 1]["role"]:
            return ('messages: roles must alternate between "user" and "assistant", but found '
                    f'multiple "{role}" roles in a row')  # fmt: skip
        final_assistant = role == "assistant" and i == len(messages) - 1
        blocks = message.get("content")
        if isinstance(blocks, str):
            blocks = [{"type": "text", "text": blocks}] if blocks or final_assistant else []
        if not isinstance(blocks, list):
            return f"{where}.content: Input should be a valid string or list"
        if not blocks and not final_assistant:
            return (f"{where}: all messages must have non-empty content except for the "
                    "optional final assistant message")  # fmt: skip
        problem = _blocks_problem(blocks, f"{where}.content", role)
        if problem is not None:
            return problem
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        unexpected = [tool_id for tool_id in results if tool_id not in pending]
        if unexpected:
            return (f"{where}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{unexpected[0]}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message.")  # fmt: skip
        unanswered = sorted(pending - set(results))
        if unanswered:
            return (f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {unanswered[0]}. Each `tool_use` block must have a "
                    "corresponding `tool_result` block in the next message.")  # fmt: skip
        pending = {b["id"] for b in blocks if b["type"] == "tool_use"}
    return None


def _blocks_problem(blocks: list[Any], where: str, role: str) -> str | None:
    seen_other = False
    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in _BLOCK_FIELDS:
            return _tag_problem(at, kind)
        assert isinstance(block, dict)
        extra = sorted(set(block) - _BLOCK_FIELDS[kind] - {"type"})
        if extra:
            return f"{at}.{kind}.{extra[0]}: Extra inputs are not permitted"
        if kind in ("tool_use", "thinking", "redacted_thinking") and role != "assistant":
            return f"{at}: `{kind}` blocks are only allowed in assistant messages"
        if kind in ("tool_result", "image", "document") and role != "user":
            return f"{at}: `{kind}` blocks are only allowed in user messages"
        if kind == "tool_result" and seen_other:
            return f"{at}: `tool_result` blocks must come before any other content"
        seen_other = seen_other or kind != "tool_result"
        problem = _block_problem(block, f"{at}.{kind}")
        if problem is not None:
            return problem
    return None


def _block_problem(block: dict[str, Any], at: str) -> str | None:
    kind = block["type"]
    if kind == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
        return f"{at}.text: text content blocks must be non-empty"
    if kind == "image":
        return _image_problem(block.get("source"), f"{at}.source")
    if kind == "tool_use" and not (
        isinstance(block.get("id"), str)
        and isinstance(block.get("name"), str)
        and isinstance(block.get("input"), dict)
    ):
        return f"{at}: `tool_use` blocks need a string `id` and `name` and an object `input`"
    if kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            return f"{at}.tool_use_id: Field required"
        content = block.get("content")
        if content is not None and not isinstance(content, str | list):
            return f"{at}.content: Input should be a valid string or list"
        if isinstance(content, list):
            return _blocks_problem(content, f"{at}.content", "user")
    return None


def _image_problem(source: Any, at: str) -> str | None:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        assert isinstance(source, dict)
        if source.get("media_type") not in _IMAGE_TYPES:
            return (f"{at}.base64.media_type: Input should be 'image/jpeg', 'image/png', "
                    "'image/gif' or 'image/webp'")  # fmt: skip
        data = source.get("data")
        try:
            if not isinstance(data, str) or not data:
                raise ValueError
            base64.b64decode(data, validate=True)
        except (ValueError, binascii.Error):
            return f"{at}.base64.data: The image data is not valid base64"
        return None
    if kind == "url":
        assert isinstance(source, dict)
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            return f"{at}.url.url: Input should be a valid URL"
        return None
    return (f"{at}: Input tag '{kind}' found using 'type' does not match any of the expected "
            "tags: 'base64', 'file', 'url'")  # fmt: skip


def _tag_problem(at: str, kind: Any) -> str:
    return f"{at}: Input tag '{kind}' found using 'type' does not match any of the expected tags"


# --- small helpers -------------------------------------------------------------------------


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


def _sample_input(schema: dict[str, Any]) -> dict[str, Any]:
    """Arguments that fit the top level of a tool's input schema, so tests can predict them."""
    samples: dict[Any, Any] = {"string": "fake", "integer": 1, "number": 1.5, "boolean": True,
                               "array": [], "object": {}}  # fmt: skip
    properties = schema.get("properties") or {}
    return {
        name: samples.get(spec.get("type") if isinstance(spec, dict) else None)
        for name, spec in properties.items()
    }


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
