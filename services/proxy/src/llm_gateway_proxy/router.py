"""Routing: which provider answers a request, and what a failed attempt does.

`Planner.plan` (routeplan.py) turns the public model name into steps (the model's own targets,
then each of its fallbacks); `Router.forward` makes attempts until one answers, and returns that
answer with its headers in (and, for a stream, its first events read). What a failed attempt does:

    connect error, timeout before the first byte,   retry: another target first (the same one
    408, 429, 5xx, 529, an error event before any   when it is the only one), then the fallbacks;
    content in a 200 stream                          counts toward the target's cooldown
    401, 403, 404 from the provider                  the gateway's configuration is at fault: the
                                                     next target, logged loudly; nothing left ->
                                                     502 in the gateway's words
    any other 4xx (400, 413, 422, ...)               the client's: answered as it is, never retried

`retries` counts extra attempts within one step; the fallbacks get their own. Backoff (full
jitter; Retry-After honoured up to `backoff.max`) applies when a target is tried again; another
target is tried at once. All attempts share the step's `deadline` before the first byte. When
attempts run out, the last failure is the answer (a provider's error as it sent it, translated
for anthropic), marked `x-should-retry: false` so SDKs do not retry what the gateway already did.
Without MODELS_FILE (one provider, no retries) every answer passes through as it always did.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import structlog
from yarl import URL

from llm_gateway_proxy.apis import Api, ParsedRequest
from llm_gateway_proxy.cooldowns import Cooldowns
from llm_gateway_proxy.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamMisconfigured,
    UpstreamStreamError,
    UpstreamTimeout,
)
from llm_gateway_proxy.exchange import Exchange
from llm_gateway_proxy.modelconfig import ModelTable, Routing
from llm_gateway_proxy.providers.adapters import Outgoing
from llm_gateway_proxy.providers.messages_openai import ToolNames
from llm_gateway_proxy.providers.streamstart import Verdict
from llm_gateway_proxy.routeplan import Choice, Plan, Planner, Step, route_header
from llm_gateway_proxy.tracing import end_attempt
from llm_gateway_proxy.upstream import Upstream, map_exceptions, read_body

log = structlog.get_logger("llm_gateway.proxy")

_RETRYABLE = frozenset({408, 429})
_MISCONFIGURED = frozenset({401, 403, 404})
NO_RETRY = (b"x-should-retry", b"false")
_MAX_LIST_BYTES = 4 << 20
_UNTIMED = 24 * 3600.0  # a budget this long is no deadline: no timer is armed for it


@dataclass(frozen=True, slots=True)
class Call:
    """What the client asked for, as every attempt needs it."""

    method: str
    forward_path: str
    query: bytes
    headers: Sequence[tuple[bytes, bytes]]
    body: bytes
    api: Api | None
    request: ParsedRequest | None
    stream: bool
    include_usage: bool  # the client asked for the usage chunk itself


@dataclass(slots=True)
class Answer:
    """The attempt the client gets: its open response, the bytes already read from it (the
    stream's first events), and the headers the gateway adds."""

    response: aiohttp.ClientResponse
    choice: Choice
    prefetched: bytes = b""
    strip_usage_chunk: bool = False  # the gateway asked for a usage chunk the client did not
    include_usage: bool = False  # the client asked for the usage chunk (translated streams)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes | None = None  # a whole answer, already read (when another attempt was possible)
    tool_names: ToolNames | None = None  # tool names the translation shortened, to restore


class _Failed(Exception):
    """One attempt failed in a way the router may route around."""

    def __init__(
        self,
        reason: str,
        *,
        answer: Answer | None = None,
        error: GatewayError | None = None,
        retry_after: float | None = None,
        misconfigured: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.answer = answer  # a provider's answer, still open, if it sent one
        self.error = error  # else what the gateway answers if this is the last failure
        self.retry_after = retry_after
        self.misconfigured = misconfigured


class Router:
    def __init__(
        self,
        table: ModelTable,
        upstream: Upstream,
        cooldowns: Cooldowns,
        *,
        forward_account: Sequence[bytes] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.table = table
        self.upstream = upstream
        self.cooldowns = cooldowns
        self._rng = rng or random.Random()
        self.planner = Planner(table, forward_account)

    async def fetch(self, call: Call, exchange: Exchange) -> bytes | None:
        """A small pass-through answer's body from the default provider (its model list), or
        None when it failed: what the gateway knows is answered without it."""
        try:
            answer = await self.forward(self.planner.plan(None, None), call, exchange)
        except GatewayError as exc:
            log.warning("provider_list_failed", reason=exc.code)
            return None
        try:
            if answer.response.status != 200:
                log.warning("provider_list_failed", reason=f"http_{answer.response.status}")
                return None
            body = bytearray()
            with map_exceptions():
                async for chunk in answer.response.content.iter_any():
                    body += chunk
                    if len(body) > _MAX_LIST_BYTES:
                        log.warning("provider_list_failed", reason="too_large")
                        return None
            return bytes(body)
        except GatewayError as exc:
            log.warning("provider_list_failed", reason=exc.code)
            return None
        finally:
            answer.response.close()

    # --- attempts -------------------------------------------------------------------------

    async def forward(self, plan: Plan, call: Call, exchange: Exchange) -> Answer:
        """Attempt until one answers; the answer's headers are in. Raises a GatewayError when
        the last attempt failed without an answer to pass on."""
        deadline = time.monotonic() + plan.steps[0].routing.deadline
        last: _Failed | None = None
        for number, step in enumerate(plan.steps):
            routing = step.routing
            tried: list[str] = []
            refused: set[str] = set()  # targets that cannot take this request (a 400 each)
            choice = self._choose(step, tried, refused)
            while choice is not None:
                tried.append(choice.id)
                try:
                    answer = await self._attempt(choice, call, exchange, deadline, plan)
                except InvalidRequest:
                    # Refused before anything was sent (the Messages API cannot express it):
                    # another target may take it; if none can, the fallbacks; the client gets
                    # the 400 only when nothing was tried, else the last real failure.
                    tried.pop()
                    refused.add(choice.id)
                    self.cooldowns.abandoned(choice.id)
                    choice = self._choose(step, tried, refused)
                    if choice is not None or number + 1 < len(plan.steps):
                        continue
                    if last is None:
                        raise
                    return self._last_failure(last, plan, exchange)
                except _Failed as failed:
                    last = failed
                    self._note_failure(choice, routing, failed, exchange)
                    retry = None
                    if len(tried) <= routing.retries:
                        retry = self._next(step, tried, refused, failed, deadline)
                    if (
                        retry is None
                        and number + 1 < len(plan.steps)
                        and (time.monotonic() < deadline)
                    ):
                        _discard(failed.answer)
                        break  # on to the fallbacks
                    if retry is None:
                        return self._last_failure(failed, plan, exchange)
                    _discard(failed.answer)
                    choice, delay = retry
                    if delay:
                        await asyncio.sleep(delay)
                    continue
                if not self.table.single:
                    self.cooldowns.succeeded(choice.id)
                answer.headers.append(_attempts(exchange))
                return answer
        raise AssertionError("every step ends in an answer or a failure")  # pragma: no cover

    def _next(
        self, step: Step, tried: list[str], refused: set[str], failed: _Failed, deadline: float
    ) -> tuple[Choice, float] | None:
        """The next target and how long to wait first; None when the deadline allows none."""
        choice = self._choose(step, tried, refused)
        if choice is None:
            return None
        delay = 0.0
        if choice.id in tried and failed.misconfigured:
            return None  # the same key or deployment would be refused the same way
        if choice.id in tried:  # the same target again: back off first
            ceiling = step.routing.backoff.base * 2 ** (tried.count(choice.id) - 1)
            delay = self._rng.uniform(0, min(step.routing.backoff.max, ceiling))
            if failed.retry_after is not None:
                if failed.retry_after > step.routing.backoff.max:
                    return None  # the provider asks for longer than we may wait
                delay = failed.retry_after
        if time.monotonic() + delay >= deadline:
            return None
        return choice, delay

    def _choose(self, step: Step, tried: list[str], refused: set[str]) -> Choice | None:
        """Weighted random among the targets not cooling down, untried ones first; when all
        cool down, the one that frees soonest. None when every target refused the request."""
        choices = step.choices
        if not (tried or refused or self.cooldowns.cooling):  # the usual case: all healthy
            if len(choices) == 1:
                return choices[0]
            drawn = self._rng.random() * step.cumulative[-1]
            return choices[min(bisect.bisect(step.cumulative, drawn), len(choices) - 1)]
        if refused:
            choices = tuple(c for c in choices if c.id not in refused)
            if not choices:
                return None
        if len(choices) == 1 and self.table.single:
            return choices[0]
        now = self.cooldowns.now()
        free = [c for c in choices if self.cooldowns.frees_at(c.id, now) == 0.0]
        pool = [c for c in free if c.id not in tried] or free
        if pool:
            choice = pool[0] if len(pool) == 1 else self._weighted(pool)
        else:
            choice = min(choices, key=lambda c: self.cooldowns.frees_at(c.id, now))
        self.cooldowns.chosen(choice.id, now, lease=step.routing.deadline)
        return choice

    def _weighted(self, pool: list[Choice]) -> Choice:
        return self._rng.choices(pool, weights=[c.weight for c in pool])[0]

    async def _attempt(
        self, choice: Choice, call: Call, exchange: Exchange, deadline: float, plan: Plan
    ) -> Answer:
        adapter = choice.adapter
        model = choice.model if call.api is not None else None
        outgoing = adapter.outgoing(call.api, call.body, call.request, model)
        url: URL = adapter.url(call.api, call.forward_path, call.query, model)
        headers = adapter.headers(call.headers, call.api)
        exchange.attempt(adapter.otel_name, adapter.name, model or exchange.model, choice.id)
        route = choice.route or route_header(adapter.name, exchange.model or "")
        answer_headers = [(b"x-llm-route", route)]
        budget = deadline - time.monotonic()
        if call.stream and adapter.first_token is not None:
            budget = min(budget, adapter.first_token)
        trace = exchange.trace
        if trace is None:
            return await self._send(choice, call, plan, url=url, headers=headers,
                                    outgoing=outgoing, answer_headers=answer_headers,
                                    budget=budget)  # fmt: skip
        span = trace.attempt(adapter, call.method, url, model or exchange.model, headers)
        try:
            answer = await self._send(choice, call, plan, url=url, headers=headers,
                                      outgoing=outgoing, answer_headers=answer_headers,
                                      budget=budget)  # fmt: skip
        except _Failed as failed:
            end_attempt(span, failed.reason, _status(failed.answer))
            raise
        except BaseException as exc:
            end_attempt(span, _reason(exc), None)
            raise
        end_attempt(span, "ok", answer.response.status)
        return answer

    async def _send(
        self,
        choice: Choice,
        call: Call,
        plan: Plan,
        *,
        url: URL,
        headers: dict[str, str],
        outgoing: Outgoing,
        answer_headers: list[tuple[bytes, bytes]],
        budget: float,
    ) -> Answer:
        """One attempt's request, as the adapter made it, and what its answer says: an Answer,
        or _Failed. `budget`: seconds before the first byte."""
        response: aiohttp.ClientResponse | None = None
        timer = _Deadline(budget)
        try:
            response = await self.upstream.send(
                call.method, url, headers, outgoing.body, choice.adapter.timeout
            )
            answer = Answer(response, choice, b"", outgoing.strip_usage_chunk,
                            call.include_usage, answer_headers,
                            tool_names=outgoing.tool_names)  # fmt: skip
            if call.api is None:
                return answer  # pass-through: the provider's answer, whatever it is
            if response.status >= 400:
                return self._judge_status(answer)
            if response.content_type == "text/event-stream":
                # Held to its first content only if that can still change anything.
                watch = plan.retrying or choice.adapter.first_token is not None
                return await self._peek(answer, watch=watch)
            if plan.retrying:  # a body cut off or stalled is still a failed attempt
                answer.body = await read_body(response)
            return answer
        except _Failed:
            raise  # its answer stays open: it may be the one the client gets
        except (TimeoutError, asyncio.CancelledError) as exc:
            _close(response)
            if isinstance(exc, asyncio.CancelledError) and not timer.fired():
                self.cooldowns.abandoned(choice.id)
                raise  # the client left
            raise _Failed("timeout", error=UpstreamTimeout(
                "The upstream provider did not answer in time.")) from exc  # fmt: skip
        except GatewayError as exc:  # unreachable, cut off (upstream.py)
            _close(response)
            if exc.outcome != "upstream_error":
                raise
            raise _Failed(exc.code or "unreachable", error=exc) from exc
        except BaseException:
            _close(response)  # a bug: never leak a connection
            self.cooldowns.abandoned(choice.id)
            raise
        finally:
            timer.stop()

    def _judge_status(self, answer: Answer) -> Answer:
        status = answer.response.status
        if self.table.single:
            return answer  # one provider: its answer, whatever it is, as it always was
        if status in _RETRYABLE or status >= 500:
            raise _Failed(f"http_{status}", answer=answer,
                          retry_after=_retry_after(answer.response))  # fmt: skip
        if status in _MISCONFIGURED:
            raise _Failed(f"http_{status}", answer=answer, misconfigured=True)
        return answer  # the client's error: never routed around

    async def _peek(self, answer: Answer, *, watch: bool) -> Answer:
        """Read a stream up to its first content: an error before it is a failed attempt."""
        if not watch:
            return answer
        start = answer.choice.adapter.stream_start()
        read = bytearray()
        with map_exceptions():
            async for chunk in answer.response.content.iter_any():
                read += chunk
                verdict = start.feed(chunk)
                if verdict is Verdict.WAIT:
                    continue
                answer.prefetched = bytes(read)
                if verdict is Verdict.ERROR:
                    message = (start.error or {}).get("message")
                    raise _Failed("stream_error", answer=answer, error=UpstreamStreamError(
                        f"The upstream provider failed the stream: {message}"))  # fmt: skip
                return answer
        answer.prefetched = bytes(read)
        raise _Failed("stream_empty", answer=answer, error=UpstreamStreamError(
            "The upstream provider ended the stream before any content."))  # fmt: skip

    def _note_failure(
        self, choice: Choice, routing: Routing, failed: _Failed, exchange: Exchange
    ) -> None:
        exchange.failed_targets.append(choice.adapter.name)
        if self.table.single:
            return
        self.cooldowns.failed(choice.id, routing.cooldown, failed.retry_after)
        if failed.misconfigured:
            log.error(
                "provider_refused_gateway", provider=choice.adapter.name, model=choice.model,
                status=failed.reason, request_id=exchange.request_id,
                detail="the provider refused the gateway's key or does not have this model: "
                "fix MODELS_FILE or the provider's key",
            )  # fmt: skip
        else:
            log.warning("attempt_failed", provider=choice.adapter.name, model=choice.model,
                        reason=failed.reason, request_id=exchange.request_id)  # fmt: skip

    def _last_failure(self, failed: _Failed, plan: Plan, exchange: Exchange) -> Answer:
        """No attempt is left: pass the provider's error on, or raise the gateway's."""
        extra = [_attempts(exchange)]
        if plan.retrying:
            extra.append(NO_RETRY)
        if failed.misconfigured:
            _discard(failed.answer)
            raise UpstreamMisconfigured(
                "No provider configured for this model accepted the request (the gateway's "
                "provider configuration is at fault, not your request or key).",
                headers=extra,
            )
        if failed.answer is not None:
            failed.answer.headers.extend(extra)
            return failed.answer
        assert failed.error is not None
        failed.error.extra_headers = extra
        raise failed.error


class _Deadline:
    """An attempt's budget: a timer that cancels the attempt's task when it is spent (one
    `call_later`; `asyncio.timeout` costs twice as much). `fired()` tells a cancellation of its
    own, turned into a timeout, from the client leaving."""

    __slots__ = ("_expired", "_handle", "_task")

    def __init__(self, budget: float) -> None:
        self._expired = False
        self._task = task = asyncio.current_task()
        self._handle = (
            task.get_loop().call_later(budget, self._expire)
            if budget < _UNTIMED and task is not None
            else None
        )

    def _expire(self) -> None:
        self._expired = True
        if self._task is not None:
            self._task.cancel()

    def fired(self) -> bool:
        """True when this timer cancelled the task (and that request is withdrawn)."""
        return self._expired and self._task is not None and self._task.uncancel() == 0

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


def _discard(answer: Answer | None) -> None:
    if answer is not None:
        answer.response.close()


def _close(response: aiohttp.ClientResponse | None) -> None:
    if response is not None:
        response.close()


def _status(answer: Answer | None) -> int | None:
    return None if answer is None else answer.response.status


def _reason(exc: BaseException) -> str:
    """What ended an attempt that is not a failure to route around, as its span says it."""
    if isinstance(exc, asyncio.CancelledError):
        return "client_disconnected"
    if isinstance(exc, GatewayError):
        return exc.code or exc.type
    return type(exc).__name__


def _attempts(exchange: Exchange) -> tuple[bytes, bytes]:
    return (b"x-llm-attempts", str(exchange.attempts).encode())


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    """Seconds a provider asks to wait: `retry-after-ms`, `x-ms-retry-after-ms`, `retry-after`."""
    headers = response.headers
    for name, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001),
                        ("retry-after", 1.0)):  # fmt: skip
        value = headers.get(name)
        if value is not None:
            try:
                seconds = float(value) * scale
            except ValueError:
                continue  # an HTTP date: not worth a clock comparison across hosts
            if seconds >= 0:
                return seconds
    return None
