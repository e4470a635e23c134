"""A fake Lunary ingestion API (`POST /v1/runs/ingest`) that checks what it receives as Lunary
does, records the runs it accepted, and fails on command.

As Lunary: the key is `Authorization: Bearer <project public key>` (401 without one or for an
unknown project, 402 when it is not a UUID); the body must be `{"events": [...]}` (or one event),
anything else is a 500 "Missing events payload."; events are processed sorted by timestamp and
answered 200 `{"results": [{"id", "success", "error"?}]}` in that order; a repeated `start` fails
("Run with this ID already exists in the database.") and a repeated `end` updates the run; a
runId that is not 36 characters is replaced by a UUID derived from it; metadata keeps only flat
scalars, its keys in camelCase. Stricter than Lunary, so tests catch what Lunary would store
wrongly: an `end`/`error` for a run with no `start` fails, as does one stamped before its start.

Run standalone: `python -m llm_gateway_fakes.lunary --port 9100 [--api-key <uuid>]`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from llm_gateway_fakes.scripted import FailureScript

INGEST_PATH = "/v1/runs/ingest"
_DERIVED_RUN_IDS = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")  # uuid.NAMESPACE_URL
_FLAT = (str, int, float, bool)


class _EventError(Exception):
    pass


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


@dataclass
class FakeLunary:
    api_key: str | None = None
    response_delay: float = 0.0  # after the events are stored: a slow (or killed) client
    runs: dict[str, Run] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    duplicate_starts: int = 0
    _failures: FailureScript = field(default_factory=FailureScript)
    _event_failures: int = 0

    def reset(self) -> None:
        self.api_key = None
        self.response_delay = 0.0
        self.runs.clear()
        self.requests.clear()
        self.duplicate_starts = 0
        self._failures.clear()
        self._event_failures = 0

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

    def stop_failing(self) -> None:
        """Forget the failures still scripted."""
        self._failures.clear()
        self._event_failures = 0

    def completed_runs(self) -> dict[str, Run]:
        return {run_id: run for run_id, run in self.runs.items() if run.end is not None}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(INGEST_PATH, self._ingest)
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
        denied = self._authenticate(request.headers.get("Authorization", ""))
        if denied is not None:
            return denied
        if len(raw) > 20 * 1024 * 1024:
            return web.json_response({"message": "request entity too large"}, status=413)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return web.json_response({"message": "invalid JSON body"}, status=400)
        events = body.get("events") if isinstance(body, dict) else None
        if not events:
            missing = {"error": "Internal Server Error", "message": "Missing events payload."}
            return web.json_response(missing, status=500)
        results = self._register_all(events if isinstance(events, list) else [events])
        if self.response_delay:
            await asyncio.sleep(self.response_delay)
        return web.json_response({"results": results})

    def _authenticate(self, authorization: str) -> web.Response | None:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key:
            return web.json_response({"message": "Missing API key"}, status=401)
        if not _is_uuid(key):
            return web.json_response({"message": "Incorrect project id format"}, status=402)
        if self.api_key is not None and key != self.api_key:
            return web.json_response({"message": "This project does not exist"}, status=401)
        return None

    def _register_all(self, events: list[Any]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for event in sorted(events, key=_sort_key):  # stable, as Lunary's Array.sort
            run_id = event.get("runId") if isinstance(event, dict) else None
            try:
                if self._event_failures > 0:
                    self._event_failures -= 1
                    raise _EventError("Fake failure: could not store the event")
                self._register(event)
            except _EventError as exc:
                results.append({"id": run_id, "success": False, "error": str(exc)})
            else:
                results.append({"id": run_id, "success": True})
        return results

    def _register(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise _EventError("Event must be an object")
        name, kind = event.get("event"), event.get("type")
        if not isinstance(name, str) or not isinstance(kind, str):
            raise _EventError("Event is missing 'type' or 'event'")
        run_id = _run_id(event.get("runId"))
        at = _timestamp(event.get("timestamp"))
        if name == "start":
            self._start(run_id, event)
        elif name in ("end", "error"):
            self._finish(run_id, at, event)
        else:
            raise _EventError(f"Unsupported event {name!r} (fake)")

    def _start(self, run_id: str, event: dict[str, Any]) -> None:
        if run_id in self.runs:
            self.duplicate_starts += 1
            raise _EventError("Run with this ID already exists in the database.")
        tags = event.get("tags", [])
        if not (isinstance(tags, list) and all(isinstance(tag, str) for tag in tags)):
            raise _EventError("tags must be a list of strings")
        stored = {**event, "runId": run_id, "metadata": _clean_metadata(event.get("metadata"))}
        self.runs[run_id] = Run(run_id, stored)

    def _finish(self, run_id: str, at: datetime, event: dict[str, Any]) -> None:
        run = self.runs.get(run_id)
        if run is None:
            raise _EventError(f"No run {run_id} to {event['event']} (no start received)")
        if at < _timestamp(run.start["timestamp"]):
            raise _EventError("The run's start timestamp is after its end")
        usage = event.get("tokensUsage")
        if usage is not None and not (
            isinstance(usage, dict) and all(isinstance(v, int | float) for v in usage.values())
        ):
            raise _EventError("tokensUsage must hold numbers")
        run.end = {**event, "runId": run_id}
        run.ends_received += 1


def _run_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _EventError("Event is missing 'runId'")
    if len(value) != 36:  # as Lunary: replaced by a UUID derived from it
        return str(uuid.uuid5(_DERIVED_RUN_IDS, value))
    if not _is_uuid(value):
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


def _clean_metadata(metadata: Any) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        return {}
    return {_camel(k): v for k, v in metadata.items() if isinstance(v, _FLAT)}


def _camel(key: str) -> str:
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a fake Lunary ingestion API.")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--api-key", default=None, help="the only project key accepted")
    args = parser.parse_args()
    web.run_app(FakeLunary(api_key=args.api_key).app(), host="127.0.0.1", port=args.port,
                access_log=None, print=None)  # fmt: skip


if __name__ == "__main__":
    main()
