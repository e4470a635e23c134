"""A fake Azure OpenAI resource: its two path shapes, its checks, its answers' quirks, and a
record of what it received. Used by the routing tests.

Paths: classic `/openai/deployments/{deployment}/chat/completions?api-version=...` (and
`/embeddings`), where the body's `model` is ignored; and the v1 API `/openai/v1/chat/completions`
(and `/embeddings`), where `model` names the deployment and `api-version` is absent (or
`preview`/`latest`). As Azure does, it answers 404 `Resource not found` to an unknown path or a
missing or unknown api-version, 401 without the right `api-key` header (the v1 API also takes the
key as `Authorization: Bearer`, which the plain OpenAI SDK sends), 404 `DeploymentNotFound` to a
deployment it does not have, and 400 `Unrecognized request argument supplied: stream_options`
when the api-version predates `stream_options` (2024-09-01-preview).

Answers are OpenAI-shaped with Azure's additions: `prompt_filter_results`, a
`content_filter_results` per choice, and the deployment's dated model name. Streams begin with
Azure's prompt-filter chunk (`"choices": []`, `"model": ""`, `"id": ""`), carry
`content_filter_results` in every chunk, the usage-only chunk when `include_usage` was asked for,
then `data: [DONE]`. Knobs end an answer with `finish_reason: content_filter`, put an error
inside a 200 stream, refuse the prompt (400 `content_filter`) or fail with a status.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from llm_gateway_fakes.openai import Received
from llm_gateway_fakes.openai_shapes import prompt_tokens
from llm_gateway_fakes.threaded import ThreadedServer

API_VERSIONS = frozenset({
    "2024-02-01", "2024-06-01", "2024-10-21",
    "2024-05-01-preview", "2024-08-01-preview", "2024-09-01-preview", "2024-10-01-preview",
    "2024-12-01-preview", "2025-01-01-preview", "2025-03-01-preview", "2025-04-01-preview",
})  # fmt: skip
V1_API_VERSIONS = frozenset({None, "preview", "latest"})
_STREAM_OPTIONS_SINCE = "2024-09-01"  # the first api-version that accepts stream_options

_SAFE = {"filtered": False, "severity": "safe"}
_COMPLETION_FILTERS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_PROMPT_FILTERS = {**_COMPLETION_FILTERS, "jailbreak": {"filtered": False, "detected": False}}
_FILTERED = {**_COMPLETION_FILTERS, "violence": {"filtered": True, "severity": "medium"}}
_ERRORS = {
    401: ("401", "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
          "to provide a valid key for an active subscription and use a correct regional API "
          "endpoint for your resource."),
    404: ("404", "Resource not found"),
    500: ("InternalServerError", "The server had an error while processing your request."),
    503: ("ServiceUnavailable", "The service is temporarily unable to process your request."),
}  # fmt: skip


@dataclass
class Behaviour:
    """What the fake does next; tests change it between requests."""

    words: int = 8
    chunk_delay: float = 0.0
    response_delay: float = 0.0
    api_key: str = "azure-fake-key"
    # deployment name -> the model it serves, as Azure reports it in answers
    deployments: dict[str, str] = field(
        default_factory=lambda: {
            "gpt-4o": "gpt-4o-2024-11-20",
            "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
        }
    )
    fail_status: int | None = None
    fail_times: int | None = None  # None: every request fails while fail_status is set
    retry_after: int = 1
    cached_tokens: int = 0
    filter_after: int | None = None  # words before the answer is cut with content_filter
    stream_error_after: int | None = None  # words before an error inside the 200 stream
    refuse_prompt: bool = False  # 400 content_filter, as when the prompt trips the filter


@dataclass
class FakeAzure:
    """The fake's state: behaviour, what it received, what usage it reported."""

    behaviour: Behaviour = field(default_factory=Behaviour)
    received: list[Received] = field(default_factory=list)
    usages: list[dict[str, Any]] = field(default_factory=list)
    streams_completed: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.received.clear()
        self.usages.clear()
        self.streams_completed = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        app.router.add_post("/openai/deployments/{deployment}/embeddings", self._embeddings)
        app.router.add_post("/openai/v1/chat/completions", self._chat)
        app.router.add_post("/openai/v1/embeddings", self._embeddings)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        return app

    # --- handlers -------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, model, failure = await self._admit(request)
        if failure is not None:
            return failure
        if not isinstance(body.get("messages"), list):
            return _openai_error(400, "'messages' is a required property", "messages")
        if body.get("stream_options") is not None and not _accepts_stream_options(request):
            return _openai_error(
                400, "Unrecognized request argument supplied: stream_options", None
            )
        behaviour = self.behaviour
        words = [f"word{i} " for i in range(behaviour.words)]
        finish = "stop"
        if behaviour.filter_after is not None and behaviour.filter_after < len(words):
            words, finish = words[: behaviour.filter_after], "content_filter"
        usage = self._usage(prompt_tokens(body["messages"]), len(words))
        base = {
            "id": self._id("chatcmpl"),
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        if body.get("stream"):
            return await self._stream(
                request, body, base=base, words=words, finish=finish, usage=usage
            )
        filters = _FILTERED if finish == "content_filter" else _COMPLETION_FILTERS
        answer = {
            **base,
            "object": "chat.completion",
            "prompt_filter_results": [_prompt_filter()],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(words), "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                    "content_filter_results": filters,
                }
            ],
            "usage": usage,
        }
        return web.json_response(answer, headers=self._headers(), dumps=_dumps)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, model, failure = await self._admit(request)
        if failure is not None:
            return failure
        inputs = body.get("input")
        if inputs is None:
            return _openai_error(400, "'input' is a required property", "input")
        items = inputs if isinstance(inputs, list) else [inputs]
        prompt = prompt_tokens(items)
        usage = {"prompt_tokens": prompt, "total_tokens": prompt}
        self.usages.append(usage)
        data = [
            {"object": "embedding", "index": i, "embedding": [0.001 * (i + 1)] * 8}
            for i in range(len(items))
        ]
        answer = {"object": "list", "data": data, "model": model, "usage": usage}
        return web.json_response(answer, headers=self._headers(), dumps=_dumps)

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return _azure_error(404)

    # --- admission ------------------------------------------------------------------------

    async def _admit(self, request: web.Request) -> tuple[dict[str, Any], str, web.Response | None]:
        """Record the request and check it as Azure would; returns the body, the model name
        the deployment serves, and the response to send instead when a check fails."""
        raw = await self._record(request)
        behaviour = self.behaviour
        if behaviour.response_delay:
            await asyncio.sleep(behaviour.response_delay)
        v1 = "deployment" not in request.match_info
        version = request.query.get("api-version")
        if version not in (V1_API_VERSIONS if v1 else API_VERSIONS):
            return {}, "", _azure_error(404)
        key = request.headers.get("api-key")
        if v1 and key is None:
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if key != behaviour.api_key:
            return {}, "", _azure_error(401)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}, "", _openai_error(400, "We could not parse the JSON body.", None)
        if not isinstance(body, dict):
            return {}, "", _openai_error(400, "The body must be a JSON object.", None)
        deployment = body.get("model") if v1 else request.match_info["deployment"]
        if deployment not in behaviour.deployments:
            return {}, "", _deployment_not_found()
        if behaviour.fail_status is not None and behaviour.fail_times != 0:
            if behaviour.fail_times is not None:
                behaviour.fail_times -= 1
            return {}, "", self._scripted_failure(behaviour.fail_status, version)
        if behaviour.refuse_prompt:
            return {}, "", _prompt_refused()
        return body, behaviour.deployments[deployment], None

    async def _record(self, request: web.Request) -> bytes:
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
        return raw

    def _scripted_failure(self, status: int, version: str | None) -> web.Response:
        if status != 429:
            return _azure_error(status)
        seconds = self.behaviour.retry_after
        message = (
            f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
            f"{version or 'v1'} have exceeded token rate limit of your current OpenAI S0 pricing "
            f"tier. Please retry after {seconds} second."
        )
        headers = {"retry-after": str(seconds), "retry-after-ms": str(seconds * 1000)}
        return _azure_error(429, message, headers)

    # --- answers --------------------------------------------------------------------------

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        *,
        base: dict[str, Any],
        words: list[str],
        finish: str,
        usage: dict[str, Any],
    ) -> web.StreamResponse:
        behaviour = self.behaviour
        base = {**base, "object": "chat.completion.chunk"}
        # Azure's first chunk reports the prompt filter and nothing else: no choices, no model.
        chunks: list[dict[str, Any]] = [
            {"choices": [], "created": 0, "id": "", "model": "", "object": "",
             "prompt_filter_results": [_prompt_filter()]},
            {**base, "choices": [_choice({"role": "assistant", "content": "", "refusal": None},
                                         None, {})]},
        ]  # fmt: skip
        chunks += [{**base, "choices": [_choice({"content": w}, None)]} for w in words]
        closing = _FILTERED if finish == "content_filter" else {}
        chunks.append({**base, "choices": [_choice({}, finish, closing)]})
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            chunks.append({**base, "choices": [], "usage": usage})
        cut = behaviour.stream_error_after
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", **self._headers()}
        )
        await response.prepare(request)
        for number, chunk in enumerate(chunks):
            if cut is not None and number == cut + 2:  # after the filter and role chunks
                error = {"message": "The server had an error while processing your request.",
                         "type": "server_error", "param": None, "code": None}  # fmt: skip
                await response.write(b"data: " + orjson.dumps({"error": error}) + b"\n\n")
                await response.write_eof()
                return response
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            if behaviour.chunk_delay:
                await asyncio.sleep(behaviour.chunk_delay)
        await response.write(b"data: [DONE]\n\n")
        self.streams_completed += 1  # before the end goes out: a client that read it sees it
        await response.write_eof()
        return response

    def _usage(self, prompt: int, completion: int) -> dict[str, Any]:
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": self.behaviour.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        self.usages.append(usage)
        return usage

    def _headers(self) -> dict[str, str]:
        return {"apim-request-id": self._id("apim"), "x-request-id": self._id("req"),
                "x-ms-region": "Sweden Central"}  # fmt: skip

    def _id(self, prefix: str) -> str:
        return f"{prefix}-fake{next(self._ids):08d}"


class FakeAzureServer(ThreadedServer[FakeAzure]):
    """A FakeAzure on 127.0.0.1 in a thread of its own; `base_url` is the resource's endpoint
    (`https://{resource}.openai.azure.com` in production), with no `/openai`."""

    def __init__(self, fake: FakeAzure | None = None, port: int = 0) -> None:
        super().__init__(fake or FakeAzure(), port)


def _accepts_stream_options(request: web.Request) -> bool:
    version = request.query.get("api-version")
    return version in V1_API_VERSIONS or (version or "")[:10] >= _STREAM_OPTIONS_SINCE


def _choice(
    delta: dict[str, Any], finish: str | None, filters: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "index": 0,
        "delta": delta,
        "logprobs": None,
        "finish_reason": finish,
        "content_filter_results": _COMPLETION_FILTERS if filters is None else filters,
    }


def _prompt_filter() -> dict[str, Any]:
    return {"prompt_index": 0, "content_filter_results": _PROMPT_FILTERS}


def _azure_error(
    status: int, message: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """Azure's own error shape (`code` and `message` only), used for its gateway-level errors."""
    code, default = _ERRORS.get(status, (str(status), "The fake was told to fail."))
    body = {"error": {"code": code, "message": message or default}}
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _deployment_not_found() -> web.Response:
    message = (
        "The API deployment for this resource does not exist. If you created the deployment "
        "within the last 5 minutes, please wait a moment and try again."
    )
    body = {"error": {"code": "DeploymentNotFound", "message": message}}
    return web.json_response(body, status=404, dumps=_dumps)


def _prompt_refused() -> web.Response:
    message = (
        "The response was filtered due to the prompt triggering Azure OpenAI's content "
        "management policy. Please modify your prompt and retry."
    )
    body = {
        "error": {
            "message": message,
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": _FILTERED,
            },
        }
    }
    return web.json_response(body, status=400, dumps=_dumps)


def _openai_error(status: int, message: str, param: str | None) -> web.Response:
    """The model service's errors, which Azure passes on in OpenAI's shape."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": None}}  # fmt: skip
    return web.json_response(body, status=status, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
