"""A fake Helicone custom logging API (`POST /custom/v1/log`) that checks what it receives as
Helicone does, records the requests it logged, and fails on command.

As Helicone: `Authorization: Bearer <key>` is required (401); `Helicone-Request-Id`, when sent,
must be a UUID; the body must hold `providerRequest{url: "custom-model-nopath", json, meta}`,
`providerResponse{json, status, headers}` (`json` always present) and
`timing{startTime, endTime}` each `{seconds, milliseconds 0-999}`, the start not after the end;
bodies over 10 MB are refused; all of that is a 400. Success is `200 ok` with a `helicone-id`
header. It can also be told to fail the way Helicone does when its storage is down: a 200 whose
JSON body holds `error`. A request id logged again replaces the earlier log (counted in
`duplicates`), so `logs` holds each request once.

Run standalone: `python -m llm_gateway_fakes.helicone --port 9200 [--api-key KEY]`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from llm_gateway_fakes.scripted import FailureScript

LOG_PATH = "/custom/v1/log"
MAX_BODY_BYTES = 10 * 1024 * 1024


class _Invalid(Exception):
    pass


@dataclass
class Received:
    at: float  # time.monotonic() on arrival
    headers: dict[str, str]  # names lower-cased
    body: bytes
    status: int = 0  # what the fake answered
    errored: bool = False  # answered 200 with an error body


@dataclass
class Logged:
    request_id: str
    headers: dict[str, str]  # names lower-cased, without the key
    body: dict[str, Any]


@dataclass
class FakeHelicone:
    api_key: str | None = None
    response_delay: float = 0.0  # after the log is stored: a slow (or killed) client
    logs: dict[str, Logged] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    duplicates: int = 0
    _failures: FailureScript = field(default_factory=FailureScript)

    def reset(self) -> None:
        self.api_key = None
        self.response_delay = 0.0
        self.logs.clear()
        self.requests.clear()
        self.duplicates = 0
        self._failures.clear()

    def fail_next(self, count: int, status: int, *, retry_after: str | None = None) -> None:
        """Answer the next `count` requests with `status`, unread; 200 means Helicone's
        "200 with an error" (a downstream failure)."""
        self._failures.add(count, status, {"Retry-After": retry_after})

    def stop_failing(self) -> None:
        """Forget the failures still scripted."""
        self._failures.clear()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(LOG_PATH, self._log)
        return app

    async def _log(self, request: web.Request) -> web.Response:
        received = Received(time.monotonic(), {k.lower(): v for k, v in request.headers.items()},
                            await request.read())  # fmt: skip
        self.requests.append(received)
        response = await self._answer(received)
        received.status = response.status
        return response

    async def _answer(self, received: Received) -> web.Response:
        failure = self._failures.next()
        if failure is not None:
            received.errored = failure.status == 200
            error = {"error": f"Fake failure: told to answer {failure.status}"}
            return web.json_response(error, status=failure.status, headers=failure.headers)
        scheme, _, key = received.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key or (self.api_key and key != self.api_key):
            return web.json_response({"error": "Authentication failed"}, status=401)
        request_id = received.headers.get("helicone-request-id") or str(uuid.uuid4())
        try:
            _check_uuid(request_id)
            body = _checked_body(received.body)
        except _Invalid as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self._store(request_id, received.headers, body)
        if self.response_delay:
            await asyncio.sleep(self.response_delay)
        return web.Response(text="ok", headers={"helicone-id": request_id})

    def _store(self, request_id: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        if request_id in self.logs:
            self.duplicates += 1
        kept = {k: v for k, v in headers.items() if k != "authorization"}
        self.logs[request_id] = Logged(request_id, kept, body)


def _check_uuid(value: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise _Invalid("Helicone-Request-Id must be a valid UUID") from None
    if len(value) != 36:
        raise _Invalid("Helicone-Request-Id must be a valid UUID")


def _checked_body(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_BODY_BYTES:
        raise _Invalid("Request body too large")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _Invalid("Invalid JSON body") from None
    request = _object(body, "body")
    provider_request = _object(request.get("providerRequest"), "providerRequest")
    if provider_request.get("url") != "custom-model-nopath":  # the only value its docs allow
        raise _Invalid('providerRequest.url must be "custom-model-nopath"')
    _object(provider_request.get("json"), "providerRequest.json")
    meta = _object(provider_request.get("meta"), "providerRequest.meta")
    if not all(isinstance(v, str) for v in meta.values()):
        raise _Invalid("providerRequest.meta values must be strings")
    provider_response = _object(request.get("providerResponse"), "providerResponse")
    _object(provider_response.get("json"), "providerResponse.json")
    if not isinstance(provider_response.get("status"), int):
        raise _Invalid("providerResponse.status must be an integer")
    _object(provider_response.get("headers"), "providerResponse.headers")
    timing = _object(request.get("timing"), "timing")
    start = _moment(timing.get("startTime"), "timing.startTime")
    end = _moment(timing.get("endTime"), "timing.endTime")
    if start > end:
        raise _Invalid("timing.startTime is after timing.endTime")
    ttft = timing.get("timeToFirstToken")
    if ttft is not None and not (isinstance(ttft, int | float) and ttft >= 0):
        raise _Invalid("timing.timeToFirstToken must be a non-negative number")
    return request


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"{where} must be an object")
    return value


def _moment(value: Any, where: str) -> int:
    moment = _object(value, where)
    seconds, millis = moment.get("seconds"), moment.get("milliseconds")
    if not isinstance(seconds, int) or not isinstance(millis, int) or not 0 <= millis <= 999:
        raise _Invalid(f"{where} must be {{seconds: int, milliseconds: 0-999}}")
    return seconds * 1000 + millis


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a fake Helicone custom logging API.")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--api-key", default=None, help="the only key accepted")
    args = parser.parse_args()
    web.run_app(FakeHelicone(api_key=args.api_key).app(), host="127.0.0.1", port=args.port,
                access_log=None, print=None)  # fmt: skip


if __name__ == "__main__":
    main()
