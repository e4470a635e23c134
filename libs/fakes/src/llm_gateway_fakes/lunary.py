"""A fake Lunary ingestion API (`POST /v1/runs/ingest`) that answers as Lunary's own backend
(`packages/backend/src`: `api/v1/runs/ingest.ts`, `utils/ingest.ts`, `api/v1/auth/utils.ts`,
`utils/ratelimit.ts`, on PostgreSQL), records the runs it accepted, and fails on command.

In Lunary's order:
- the key (`Authorization: <any scheme> <key>`, else `X-Api-Key`): a UUID that is not the
  project's is 401 "Invalid API key"; a bearer that is not a UUID is 401 "Invalid access token"
  (an `X-Api-Key` that is not one, 404); no key goes on, to a 402 below;
- `rate_limit` requests a minute per client (first `X-Forwarded-For` address, else the peer),
  a fixed window from the client's first request; past it, 429 text "Sometimes You Just Have to
  Slow Down." with `Retry-After` (whole seconds) and `Rate-Limit-Reset` (epoch seconds);
  counted answers carry `Rate-Limit-Remaining`, `Rate-Limit-Reset`, `Rate-Limit-Total`;
- the body, read only for a JSON content type (else it is `{}`): over 20 MB 413, bad JSON 400;
- no key 402 "Incorrect project id format"; no `events` key (or a falsy one, as in JavaScript)
  500 "Missing events payload."; `{"events": []}` is `200 {"results": []}`;
- events (a list, or one event) sorted by timestamp, answered one after another in
  `200 {"results": [{"id"?, "success", "error"?}]}`, `id` the runId as sent. Keys are
  camelCased recursively, a runId that is not 36 characters becomes the UUID Lunary derives
  from it, metadata keeps scalars, arrays of scalars and `enrichment`. A repeated `start` fails
  ("Run with this ID already exists in the database.") and a repeated `end` updates the run.
- A NUL character in what Lunary stores fails the event as PostgreSQL does, at the first value
  its query binds: in a text column (a start's `userId`, `tags`, `name`) 'invalid byte sequence
  for encoding "UTF8": 0x00', in a jsonb one (a start's `params`, `metadata`, `input`; an end's
  `output`, `metadata`, `input`; an error's `error`) "unsupported Unicode escape sequence".
  Elsewhere (a start's `output`, a dropped metadata value) it is ignored, as nothing stores it.
- An `end` (of an `llm` run) whose start is not stored waits `orphan_delay` seconds for it,
  asynchronously, one such event after another; a start arriving meanwhile lets it complete the
  run. Still alone, it is answered success though Lunary stores nothing: it goes to `orphans`
  (with its runId as Lunary would key it), never to `runs`. An `error` without a start is such
  an orphan at once: Lunary does not wait for an error's start.

Knobs, all restored by reset(): `api_key` (None: any UUID), `response_delay` 0.0,
`orphan_delay` 5.0, `rate_limit` 150 (None: unlimited), `clock` (time.time, the rate limit's).
A request still waiting when reset() is called stores nothing more (its test is over) and is
answered 503; the app shutting down cuts every wait short, so the fake stops at once.

Stricter than Lunary, so tests catch what Lunary would store wrongly or drop: an end or error
stamped before its start fails; so does an event without `runId`, `type` or `event`, with a
timestamp that is not ISO 8601 with a zone, tags that are not a list of strings, tokensUsage
that is not numbers, or an event name other than start, end and error.

Run standalone: `python -m llm_gateway_fakes.lunary --port 9100 [--api-key <uuid>]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from llm_gateway_fakes.scripted import FailureScript

INGEST_PATH = "/v1/runs/ingest"
_BODY_LIMIT = 20 * 1024 * 1024  # koa-bodyparser's jsonLimit "20mb"
_JSON_TYPES = frozenset({"application/json", "application/json-patch+json",
                         "application/vnd.api+json", "application/csp-report",
                         "application/scim+json"})  # fmt: skip
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)  # zod's
_SCALARS = (str, int, float, bool)
_TEXT_NUL = 'invalid byte sequence for encoding "UTF8": 0x00'  # PostgreSQL, a text parameter
_JSONB_NUL = "unsupported Unicode escape sequence"  # PostgreSQL, \u0000 in jsonb
_SLOW_DOWN = "Sometimes You Just Have to Slow Down."


class _EventError(Exception):
    pass


class _Stale(Exception):
    """reset() came while the request waited: what it had still to store belongs to a test over."""


class _Refusal(Exception):
    """Lunary answers the request with this, before (or instead of) ingesting its events."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass
class Received:
    at: float  # time.monotonic() on arrival
    headers: dict[str, str]  # names lower-cased
    body: bytes
    status: int = 0  # what the fake answered


@dataclass
class Run:
    run_id: str
    start: dict[str, Any]
    end: dict[str, Any] | None = None  # the latest `end` or `error` event
    ends_received: int = 0
    # The run's row as Lunary keeps it: an `end` sets the status, tokens and output; an `error`
    # sets only the status and the error (its handler leaves the tokens an `end` stored).
    status: str = "started"
    tokens_usage: dict[str, Any] | None = None
    error: Any = None


@dataclass
class _Window:
    """koa-ratelimit's memory driver: a fixed minute from the client's first request."""

    reset: float  # epoch seconds, to the microsecond
    count: int = 0


@dataclass
class FakeLunary:
    api_key: str | None = None  # None: any UUID key is a project
    response_delay: float = 0.0  # after the events are stored: a slow (or killed) client
    orphan_delay: float = 5.0  # how long an `end` waits for its start, as Lunary does
    rate_limit: int | None = 150  # requests a minute per client; None: unlimited
    clock: Callable[[], float] = time.time  # the rate limit's; a test moves it past a minute
    runs: dict[str, Run] = field(default_factory=dict)
    orphans: list[dict[str, Any]] = field(default_factory=list)  # answered success, not stored
    requests: list[Received] = field(default_factory=list)
    duplicate_starts: int = 0
    _failures: FailureScript = field(default_factory=FailureScript)
    _event_failures: int = 0
    # Runs whose start always fails (a row Lunary can never store): `fail_starts_of`.
    _failing_starts: set[str] = field(default_factory=set)
    _windows: dict[str, _Window] = field(default_factory=dict)
    _generation: int = 0  # reset() moves it on
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        self.api_key = None
        self.response_delay = 0.0
        self.orphan_delay = 5.0
        self.rate_limit = 150
        self.clock = time.time
        self.runs.clear()
        self.orphans.clear()
        self.requests.clear()
        self.duplicate_starts = 0
        self._failures.clear()
        self._event_failures = 0
        self._failing_starts.clear()
        self._windows.clear()
        self._generation += 1

    def fail_next(
        self, count: int, status: int, *, retry_after: str | None = None,
        rate_limit_reset: str | None = None,
    ) -> None:  # fmt: skip
        """Answer the next `count` requests with `status` (and these headers) unread."""
        self._failures.add(
            count, status, {"Retry-After": retry_after, "Rate-Limit-Reset": rate_limit_reset}
        )

    def fail_events_next(self, count: int) -> None:
        """Fail the next `count` events inside a 200, as Lunary does when it cannot store one."""
        self._event_failures += count

    def fail_starts_of(self, run_ids: set[str]) -> None:
        """Fail every `start` of these runs inside a 200, however often it is sent (their ends
        then wait for a start that never comes, as in Lunary)."""
        self._failing_starts |= run_ids

    def stop_failing(self) -> None:
        """Forget the failures still scripted."""
        self._failures.clear()
        self._event_failures = 0
        self._failing_starts.clear()

    def completed_runs(self) -> dict[str, Run]:
        return {run_id: run for run_id, run in self.runs.items() if run.end is not None}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(INGEST_PATH, self._ingest)
        self._stopping = asyncio.Event()
        app.on_shutdown.append(self._stop_pausing)
        return app

    async def _ingest(self, request: web.Request) -> web.Response:
        received = Received(time.monotonic(), {k.lower(): v for k, v in request.headers.items()},
                            await request.read())  # fmt: skip
        self.requests.append(received)
        response = await self._answer(request, received.body)
        received.status = response.status
        return response

    async def _answer(self, request: web.Request, raw: bytes) -> web.Response:
        failure = self._failures.next()
        if failure is not None:
            body = {"error": "Fake failure", "message": f"told to answer {failure.status}"}
            return web.json_response(body, status=failure.status, headers=failure.headers)
        limit_headers: dict[str, str] = {}
        try:  # Lunary's middlewares in order: auth, rate limit, body parser, then the route
            key = self._authenticate(request.headers)
            limit_headers = self._count(_client(request))
            events = _events(key, _parse_body(request.content_type, raw))
        except _Refusal as refusal:
            refusal.response.headers.update(limit_headers)
            return refusal.response
        try:
            results = await self._register_all(events)
            await self._pause(self.response_delay)
        except _Stale:
            return _message(503, "The fake was reset while this request waited")
        return web.json_response({"results": results}, headers=limit_headers)

    def _authenticate(self, headers: Mapping[str, str]) -> str | None:
        """The key presented, if any; a refusal for one Lunary does not take."""
        words = headers.get("Authorization", "").split(" ")  # the scheme is never looked at
        bearer = words[1] if len(words) > 1 else ""
        key = bearer or headers.get("X-Api-Key", "")
        if not key:
            return None  # an ingestion route is public: the route answers 402
        if _UUID.fullmatch(key):
            if self.api_key is not None and key != self.api_key:
                raise _Refusal(_message(401, "Invalid API key"))
            return key
        if bearer:  # taken for a dashboard session token, which it is not
            raise _Refusal(_message(401, "Invalid access token"))
        raise _Refusal(_message(404, "Not Found"))

    def _count(self, client: str) -> dict[str, str]:
        """Count the request against the client's minute: the headers to answer with, or a 429."""
        if self.rate_limit is None:
            return {}
        now = self.clock()
        window = self._windows.get(client)
        if window is None or window.reset < now:
            window = self._windows[client] = _Window(round(now + 60.0, 6))
        window.count += 1
        headers = {"Rate-Limit-Remaining": str(max(self.rate_limit - window.count, 0)),
                   "Rate-Limit-Reset": f"{window.reset:.6f}".rstrip("0").rstrip("."),
                   "Rate-Limit-Total": str(self.rate_limit)}  # fmt: skip
        if window.count > self.rate_limit:
            headers["Retry-After"] = str(int(window.reset - now))
            raise _Refusal(web.Response(status=429, text=_SLOW_DOWN, headers=headers))
        return headers

    async def _register_all(self, events: list[Any]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for sent in sorted(events, key=_sort_key):  # stable, as Lunary's Array.sort
            event = sent[0] if isinstance(sent, list) and len(sent) == 1 else sent  # [event]
            result = {"id": event["runId"]} if isinstance(event, dict) and "runId" in event else {}
            try:
                if self._event_failures > 0:
                    self._event_failures -= 1
                    raise _EventError("Fake failure: could not store the event")
                await self._register(event)
            except _EventError as exc:
                results.append({**result, "success": False, "error": str(exc)})
            else:
                results.append({**result, "success": True})
        return results

    async def _register(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise _EventError("Event must be an object")
        event = _clean(event)
        name, kind = event.get("event"), event.get("type")
        if not isinstance(name, str) or not isinstance(kind, str):
            raise _EventError("Event is missing 'type' or 'event'")
        run_id = _run_id(event.get("runId"))
        at = _timestamp(event.get("timestamp"))
        if name == "start":
            self._start(run_id, event)
        elif name in ("end", "error"):
            await self._finish(run_id, at, event)
        else:
            raise _EventError(f"Unsupported event {name!r} (fake)")

    def _start(self, run_id: str, event: dict[str, Any]) -> None:
        if run_id in self._failing_starts:
            raise _EventError("Fake failure: could not store the run")
        user = event.get("userId")
        if isinstance(user, str):  # the user is upserted before the run is looked at
            _refuse_nul([(user, _TEXT_NUL), (event.get("userProps"), _JSONB_NUL)])
        if run_id in self.runs:
            self.duplicate_starts += 1
            raise _EventError("Run with this ID already exists in the database.")
        tags = event.get("tags", [])
        if not (isinstance(tags, list) and all(isinstance(tag, str) for tag in tags)):
            raise _EventError("tags must be a list of strings")
        _refuse_nul([(event.get("type"), _TEXT_NUL), (tags, _TEXT_NUL),
                     (event.get("name"), _TEXT_NUL),
                     (event.get("params") or event.get("extra"), _JSONB_NUL),
                     (event.get("metadata"), _JSONB_NUL), (event.get("input"), _JSONB_NUL),
                     (event.get("runtime"), _TEXT_NUL)])  # fmt: skip
        self.runs[run_id] = Run(run_id, {**event, "runId": run_id})

    async def _finish(self, run_id: str, at: datetime, event: dict[str, Any]) -> None:
        if event["event"] == "error":  # the update is refused even when it matches no run
            _refuse_nul([(event.get("error"), _JSONB_NUL)])
        elif run_id not in self.runs and event["type"] == "llm":
            await self._pause(self.orphan_delay)  # for a start still on its way, as Lunary
        run = self.runs.get(run_id)
        if run is None:
            self.orphans.append({**event, "runId": run_id})
            return
        if at < _timestamp(run.start["timestamp"]):
            raise _EventError("The run's start timestamp is after its end")
        _refuse_nul((event.get(column), _JSONB_NUL) for column in ("output", "metadata", "input"))
        usage = event.get("tokensUsage")
        if usage is not None and not (
            isinstance(usage, dict) and all(isinstance(v, int | float) for v in usage.values())
        ):
            raise _EventError("tokensUsage must hold numbers")
        run.end = {**event, "runId": run_id}
        run.ends_received += 1
        if event["event"] == "error":
            run.status, run.error = "error", event.get("error")
        else:
            run.status = "success"
            run.tokens_usage = usage if usage is not None else run.tokens_usage

    async def _pause(self, seconds: float) -> None:
        """Wait without holding up other requests, or the app's shutdown."""
        if seconds <= 0:
            return
        generation = self._generation
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        if self._generation != generation:
            raise _Stale

    async def _stop_pausing(self, _app: web.Application) -> None:
        self._stopping.set()


def _client(request: web.Request) -> str:
    """The address Koa (behind a proxy) takes for the client's."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    return forwarded.split(",")[0].strip() or request.remote or ""


def _parse_body(content_type: str, raw: bytes) -> Any:
    """As koa-bodyparser: JSON read only for a JSON content type; anything else is `{}`."""
    if content_type.lower() not in _JSON_TYPES:
        return {}
    if len(raw) > _BODY_LIMIT:
        raise _Refusal(_message(413, "request entity too large"))
    if not raw:
        return {}
    if not raw.lstrip(b" \t\r\n").startswith((b"{", b"[")):
        raise _Refusal(_message(400, "invalid JSON, only supports object and array"))
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _Refusal(_message(400, "invalid JSON body")) from None


def _events(key: str | None, body: Any) -> list[Any]:
    """The route's checks: a project, then an `events` JavaScript holds true."""
    if key is None:
        raise _Refusal(_message(402, "Incorrect project id format"))
    events = body.get("events") if isinstance(body, dict) else None
    if events is None or events == "" or (isinstance(events, int | float) and not events):
        raise _Refusal(_message(500, "Missing events payload."))
    return events if isinstance(events, list) else [events]


def _message(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def _clean(event: dict[str, Any]) -> dict[str, Any]:
    """What Lunary's cleanEvent makes of an event before it looks at it."""
    cleaned: dict[str, Any] = _camel_keys(event)
    cleaned["metadata"] = _clean_metadata(cleaned.get("metadata"))
    if isinstance(cleaned.get("name"), str):
        cleaned["name"] = cleaned["name"].replace("models/", "", 1)
    return cleaned


def _camel_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel(key): _camel_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_camel_keys(item) for item in value]
    return value


def _camel(key: str) -> str:
    return re.sub(r"[-_]([a-zA-Z])", lambda m: m.group(1).upper(), key)


def _clean_metadata(metadata: Any) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        return {}
    return {key: value for key, value in metadata.items()
            if key == "enrichment" or _scalar_or_scalars(value)}  # fmt: skip


def _scalar_or_scalars(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(item, _SCALARS) for item in value)
    return isinstance(value, _SCALARS)


def _run_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _EventError("Event is missing 'runId'")
    if len(value.encode("utf-16-le")) // 2 != 36:  # JavaScript's length: UTF-16 code units
        digest = hashlib.sha256(value.encode()).hexdigest()  # Lunary's uuidFromSeed
        return f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-a{digest[17:20]}-{digest[20:32]}"
    if not _UUID.fullmatch(value):
        raise _EventError(f'invalid input syntax for type uuid: "{value}"')
    return value


def _timestamp(value: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise _EventError(f"Invalid timestamp {value!r}") from None
    if moment.tzinfo is None:
        raise _EventError(f"Timestamp without a time zone {value!r}")
    return moment


def _sort_key(event: Any) -> float:
    try:
        return _timestamp(event.get("timestamp")).timestamp()
    except (_EventError, AttributeError):
        return 0.0


def _refuse_nul(columns: Iterable[tuple[Any, str]]) -> None:
    """Fail as PostgreSQL does on the first bound value holding a NUL, with its message."""
    for value, message in columns:
        if _holds_nul(value):
            raise _EventError(message)


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a fake Lunary ingestion API.")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--api-key", default=None, help="the only project key accepted")
    args = parser.parse_args()
    web.run_app(FakeLunary(api_key=args.api_key).app(), host="127.0.0.1", port=args.port,
                access_log=None, print=None)  # fmt: skip


if __name__ == "__main__":
    main()
