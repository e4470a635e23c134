"""A fake OpenAI API: real wire format, configurable timing and failures, and a record of what
it received. Used by the tests, `make demo` and `bench/`.

It checks what it receives as OpenAI would: JSON bodies, a `model`, the server-side key when one
is configured (401 otherwise). Streams follow the real framing: `data: <json>\\n\\n` chunks with
`"usage": null`, the usage-only chunk (`"choices": []`) only when `stream_options.include_usage`
was asked for, then `data: [DONE]\\n\\n`.

Run standalone: `python -m llm_gateway_fakes.openai --port 9000 [--chunk-delay 0.01]`.
A request may override the completion length and the delay between chunks with the headers
`X-Fake-Words` and `X-Fake-Chunk-Delay` (seconds), which proxies pass through (bench/ uses them).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from llm_gateway_fakes.openai_rules import chat_problem
from llm_gateway_fakes.openai_shapes import (
    answer_model,
    call_deltas,
    call_tokens,
    delta,
    include_usage,
    model_object,
    prompt_tokens,
    text_choice,
)
from llm_gateway_fakes.threaded import ThreadedServer
from llm_gateway_fakes.tool_inputs import sample_input


@dataclass
class Behaviour:
    """What the fake does next; tests change it between requests."""

    words: int = 8
    chunk_delay: float = 0.0
    response_delay: float = 0.0
    fail_status: int | None = None
    fail_times: int | None = None  # None: every request fails while fail_status is set
    retry_after: str | None = "1"  # the Retry-After of a 429 (None: none)
    stream_error_first: bool = False  # a 200 stream whose first event is an error (vLLM)
    omit_usage: bool = False
    api_key: str | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    use_tools: bool = False  # with tool_choice auto: answer with text, then tool calls
    tool_calls: int = 1  # calls per answer (1 when parallel_tool_calls is false)
    finish_reason: str = "stop"  # a text answer's ("length": cut at max_tokens)


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class FakeOpenAI:
    """The fake's state: behaviour, what it received, what usage it reported, streams cut off."""

    behaviour: Behaviour = field(default_factory=Behaviour)
    received: list[Received] = field(default_factory=list)
    usages: list[dict[str, Any]] = field(default_factory=list)
    streams_cut: int = 0
    streams_completed: int = 0
    abandoned: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.received.clear()
        self.usages.clear()
        self.streams_cut = 0
        self.streams_completed = 0
        self.abandoned = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_route("*", "/v1/{tail:.*}", self._other)
        return app

    # --- handlers -------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, failure = await self._admit(request)
        if failure is not None:
            return failure
        if not isinstance(body.get("messages"), list):
            return _error(400, "'messages' is a required property", "messages")
        problem = chat_problem(body)
        if problem is not None:
            return _error(400, problem.message, problem.param, problem.code)
        words = self._words(request)
        calls, forced = self._calls(body)
        if forced:
            words = []  # a forced tool choice: the model writes no text before the call
        usage = self._usage(prompt_tokens(body.get("messages")), len(words) + call_tokens(calls))
        if body.get("stream"):
            return await self._chat_stream(request, body, words, calls, usage)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(words) or None,
                                   "refusal": None}  # fmt: skip
        if calls:
            message["tool_calls"] = calls
        return web.json_response(
            {
                "id": self._id("chatcmpl"),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": answer_model(body["model"]),
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "tool_calls" if calls else self.behaviour.finish_reason,
                    }
                ],
                **self._usage_field(usage),
                "system_fingerprint": "fp_fake",
            },
            headers={"x-request-id": self._id("req")},
            dumps=_dumps,
        )

    async def _chat_stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        words: list[str],
        calls: list[dict[str, Any]],
        usage: dict[str, Any],
    ) -> web.StreamResponse:
        base = {
            "id": self._id("chatcmpl"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": answer_model(body["model"]),
            "system_fingerprint": "fp_fake",
        }
        if self.behaviour.stream_error_first:
            error = {"message": "The server is overloaded.", "type": "server_error",
                     "param": None, "code": 503}  # fmt: skip
            return await self._sse(request, [(None, {"error": error})], done=False)
        with_usage = include_usage(body)
        null_usage = {"usage": None} if with_usage else {}
        deltas: list[dict[str, Any]] = [{"content": w} for w in words] + call_deltas(calls)
        if words or not calls:
            deltas.insert(0, {"role": "assistant", "content": ""})
        else:  # only calls: the first names the role, with no text (null content)
            deltas[0] = {"role": "assistant", "content": None, **deltas[0]}
        chunks = [{**base, "choices": [delta(d)], **null_usage} for d in deltas]
        finish = "tool_calls" if calls else self.behaviour.finish_reason
        chunks.append({**base, "choices": [delta({}, finish)], **null_usage})
        if with_usage and not self.behaviour.omit_usage:
            chunks.append({**base, "choices": [], "usage": usage})
        return await self._sse(request, [(None, c) for c in chunks], done=True)

    def _calls(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The tool calls to answer with (and whether tool_choice forced them): when tools are
        given and tool_choice is `required` or names one, or is auto and `use_tools` is set."""
        functions = [t["function"] for t in body.get("tools") or []]
        choice = body.get("tool_choice", "auto")
        forced = choice == "required" or isinstance(choice, dict)
        if not functions or not (forced or (choice == "auto" and self.behaviour.use_tools)):
            return [], False
        if isinstance(choice, dict):
            functions = [f for f in functions if f["name"] == choice["function"]["name"]]
        count = 1 if body.get("parallel_tool_calls") is False else self.behaviour.tool_calls
        return [
            {"id": self._id("call"), "type": "function",
             "function": {"name": f["name"],
                          "arguments": _dumps(sample_input(f.get("parameters")))}}
            for f in itertools.islice(itertools.cycle(functions), count)
        ], forced  # fmt: skip

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, failure = await self._admit(request)
        if failure is not None:
            return failure
        words = self._words(request)
        usage = self._usage(prompt_tokens(body.get("prompt")), len(words))
        base = {
            "id": self._id("cmpl"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": answer_model(body["model"]),
        }
        if body.get("stream"):
            with_usage = include_usage(body)
            null_usage = {"usage": None} if with_usage else {}
            chunks = [{**base, "choices": [text_choice(w, None)], **null_usage} for w in words] + [
                {**base, "choices": [text_choice("", "stop")], **null_usage}
            ]
            if with_usage and not self.behaviour.omit_usage:
                chunks.append({**base, "choices": [], "usage": usage})
            return await self._sse(request, [(None, c) for c in chunks], done=True)
        payload = {**base, "choices": [text_choice("".join(words), "stop")]}
        return web.json_response({**payload, **self._usage_field(usage)}, dumps=_dumps)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, failure = await self._admit(request)
        if failure is not None:
            return failure
        inputs = body.get("input")
        if inputs is None:
            return _error(400, "'input' is a required property", "input")
        items = inputs if isinstance(inputs, list) else [inputs]
        prompt = prompt_tokens(items)
        usage = {"prompt_tokens": prompt, "total_tokens": prompt}
        self.usages.append(usage)
        data = [
            {"object": "embedding", "index": i, "embedding": [0.001 * (i + 1)] * 8}
            for i in range(len(items))
        ]
        payload: dict[str, Any] = {"object": "list", "data": data, "model": body["model"]}
        if not self.behaviour.omit_usage:
            payload["usage"] = usage
        return web.json_response(payload, dumps=_dumps)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body, failure = await self._admit(request)
        if failure is not None:
            return failure
        words = self._words(request)
        prompt = prompt_tokens(body.get("input"))
        usage = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": self.behaviour.cached_tokens},
            "output_tokens": len(words),
            "output_tokens_details": {"reasoning_tokens": self.behaviour.reasoning_tokens},
            "total_tokens": prompt + len(words),
        }
        self.usages.append(usage)
        response_id = self._id("resp")
        text = "".join(words)
        message = {
            "id": self._id("msg"),
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        response = {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": answer_model(body["model"]),
            "output": [message],
            "usage": None if self.behaviour.omit_usage else usage,
        }
        if not body.get("stream"):
            return web.json_response(response, dumps=_dumps)
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        events: list[tuple[str | None, dict[str, Any]]] = [
            ("response.created", {"type": "response.created", "response": started}),
            ("response.in_progress", {"type": "response.in_progress", "response": started}),
        ]
        events += [
            (
                "response.output_text.delta",
                {
                    "type": "response.output_text.delta",
                    "item_id": message["id"],
                    "output_index": 0,
                    "content_index": 0,
                    "delta": w,
                },
            )
            for w in words
        ]
        events.append(("response.completed", {"type": "response.completed", "response": response}))
        for number, (_, event) in enumerate(events):
            event["sequence_number"] = number
        return await self._sse(request, events, done=False)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        _, failure = await self._admit(request, needs_body=False)
        if failure is not None:
            return failure
        models = [
            model_object(name) for name in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
        ]
        return web.json_response({"object": "list", "data": models}, dumps=_dumps)

    async def _model(self, request: web.Request) -> web.StreamResponse:
        _, failure = await self._admit(request, needs_body=False)
        if failure is not None:
            return failure
        return web.json_response(model_object(request.match_info["model"]), dumps=_dumps)

    async def _other(self, request: web.Request) -> web.StreamResponse:
        """Any other path: echo what arrived, so pass-through tests can check it."""
        _, failure = await self._admit(request, needs_body=False)
        if failure is not None:
            return failure
        last = self.received[-1]
        return web.json_response(
            {"object": "echo", "method": last.method, "path": last.path, "query": last.query,
             "body_bytes": len(last.body)},
            dumps=_dumps,
        )  # fmt: skip

    # --- helpers --------------------------------------------------------------------------

    async def _admit(
        self, request: web.Request, *, needs_body: bool = True
    ) -> tuple[dict[str, Any], web.Response | None]:
        """Record the request and check it as OpenAI would; a failure is the response to send."""
        raw = await request.read()
        self.received.append(
            Received(
                request.method,
                request.path,
                request.query_string,
                {k.lower(): v for k, v in request.headers.items()},
                raw,
            )
        )
        behaviour = self.behaviour
        if behaviour.response_delay and await self._abandoned_while_waiting(request):
            self.abandoned += 1
            return {}, _error(499, "client closed request", None)
        expected = f"Bearer {behaviour.api_key}" if behaviour.api_key else None
        if expected is not None and request.headers.get("Authorization") != expected:
            return {}, _error(401, "Incorrect API key provided.", None, "invalid_api_key",
                              "authentication_error")  # fmt: skip
        if behaviour.fail_status is not None and behaviour.fail_times != 0:
            if behaviour.fail_times is not None:
                behaviour.fail_times -= 1
            kind = "rate_limit_error" if behaviour.fail_status == 429 else "server_error"
            if behaviour.fail_status < 500 and behaviour.fail_status != 429:
                kind = "invalid_request_error"
            failure = _error(behaviour.fail_status, "The fake was told to fail.", None, None, kind)
            if behaviour.fail_status == 429 and behaviour.retry_after is not None:
                failure.headers["retry-after"] = behaviour.retry_after
            elif behaviour.fail_status == 429:
                del failure.headers["retry-after"]
            return {}, failure
        if not needs_body:
            return {}, None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}, _error(400, "We could not parse the JSON body of your request.", None)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return {}, _error(400, "you must provide a model parameter", "model")
        return body, None

    async def _abandoned_while_waiting(self, request: web.Request) -> bool:
        """Wait `response_delay`, noticing if the caller closes the connection meanwhile."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.behaviour.response_delay
        while loop.time() < until:
            transport = request.transport
            if transport is None or transport.is_closing():
                return True
            await asyncio.sleep(0.01)
        return False

    def _words(self, request: web.Request) -> list[str]:
        count = int(request.headers.get("X-Fake-Words", self.behaviour.words))
        return [f"word{i} " for i in range(count)]

    def _usage(self, prompt: int, completion: int) -> dict[str, Any]:
        behaviour = self.behaviour
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": behaviour.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": behaviour.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        self.usages.append(usage)
        return usage

    def _usage_field(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {} if self.behaviour.omit_usage else {"usage": usage}

    def _id(self, prefix: str) -> str:
        return f"{prefix}-fake{next(self._ids):08d}"

    async def _sse(
        self, request: web.Request, events: list[tuple[str | None, dict[str, Any]]], *, done: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8",
                     "x-request-id": self._id("req")}
        )  # fmt: skip
        await response.prepare(request)
        delay = float(request.headers.get("X-Fake-Chunk-Delay", self.behaviour.chunk_delay))
        try:
            for name, event in events:
                prefix = f"event: {name}\n".encode() if name else b""
                await response.write(prefix + b"data: " + _dumps(event).encode() + b"\n\n")
                if delay:
                    await asyncio.sleep(delay)
            if done:
                await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.streams_cut += 1
            raise
        self.streams_completed += 1
        return response


class FakeOpenAIServer(ThreadedServer[FakeOpenAI]):
    """A FakeOpenAI on 127.0.0.1 in a thread of its own; `base_url` includes `/v1`, as the
    OpenAI SDK's does."""

    def __init__(self, fake: FakeOpenAI | None = None, port: int = 0) -> None:
        super().__init__(fake or FakeOpenAI(), port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def _error(
    status: int,
    message: str,
    param: str | None,
    code: str | None = None,
    kind: str = "invalid_request_error",
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"x-request-id": "req-fake-error"}
    if status == 429:
        headers["retry-after"] = "1"
    if status >= 500 or status in (408, 409, 429):  # as OpenAI tells its SDKs
        headers["x-should-retry"] = "true"
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a fake OpenAI API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--words", type=int, default=8, help="completion length in chunks")
    args = parser.parse_args()
    fake = FakeOpenAI(behaviour=Behaviour(words=args.words, chunk_delay=args.chunk_delay))
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, access_log=None, print=None,
                backlog=2048)  # fmt: skip


if __name__ == "__main__":
    main()
