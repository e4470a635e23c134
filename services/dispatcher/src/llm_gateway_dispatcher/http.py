"""POSTing to a hosted sink: one aiohttp session, every call bounded, every failure classified.

Transport errors and HTTP statuses become outcomes here, at the boundary, so the sinks only read
successful answers:

    connection error, timeout, 408, 425, 429, 5xx  -> unavailable (with the sink's Retry-After)
    any other 4xx (400, 401, 402, 403, 413, ...)   -> refused
    1xx, 3xx                                        -> rejected (not an answer we expect)

The API key only ever travels in the `Authorization` header; text quoted from an answer into a
reason (which ends up in logs and the dead-letter stream) is scrubbed of it all the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from llm_gateway_dispatcher.backoff import retry_hint
from llm_gateway_dispatcher.outcomes import Outcome, refused, rejected, unavailable

_EXCERPT_BYTES = 300
_TRANSIENT_STATUSES = frozenset({408, 425, 429})


class SinkFailed(Exception):
    """The POST did not succeed; `outcome` says how (for every event the request carried).
    `splittable`: it timed out or failed with a 5xx, which one event of the request may have
    caused (a sink that splits batches tries the events again in smaller requests)."""

    def __init__(self, outcome: Outcome, *, splittable: bool = False) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome
        self.splittable = splittable


@dataclass(frozen=True, slots=True)
class Reply:
    """A 2xx answer, read whole."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON, or None when it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


class SinkClient:
    """The HTTP side of one hosted sink."""

    def __init__(
        self, name: str, endpoint: str, api_key: str, *, timeout: float, connections: int
    ) -> None:
        self.name = name
        self._endpoint = endpoint
        self._api_key = api_key
        self._timeout = timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self.reachable = True  # the last call got an answer; read by /ready

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            connector=aiohttp.TCPConnector(limit=self._connections),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def ready(self) -> bool:
        return self._session is not None and not self._session.closed and self.reachable

    async def post(self, body: bytes, headers: Mapping[str, str] | None = None) -> Reply:
        """POST a JSON body; the 2xx answer, or SinkFailed. Bounded by `timeout` in all."""
        assert self._session is not None, "start() first"
        request_headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
            **(headers or {}),
        }
        try:
            async with self._session.post(
                self._endpoint, data=body, headers=request_headers, allow_redirects=False
            ) as response:
                reply = Reply(response.status, response.headers, await response.read())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.reachable = False
            timed_out = isinstance(exc, TimeoutError)
            raise SinkFailed(unavailable(f"{self.name}: {_describe(exc)}"),
                             splittable=timed_out) from exc  # fmt: skip
        self.reachable = True
        failure = self._status_outcome(reply)
        if failure is not None:
            if failure.kind == "unavailable":
                self.reachable = False
            raise SinkFailed(failure, splittable=reply.status >= 500)
        return reply

    def _status_outcome(self, reply: Reply) -> Outcome | None:
        status = reply.status
        if 200 <= status < 300:
            return None
        reason = f"{self.name} answered {status}: {self.excerpt(reply.body)}"
        if status in _TRANSIENT_STATUSES or status >= 500:
            return unavailable(reason, retry_hint(reply.headers))
        if 400 <= status < 500:
            return refused(reason)
        return rejected(reason)

    def excerpt(self, text: bytes | str) -> str:
        """A short, single-line, key-free quote of what the sink said, for a reason."""
        if isinstance(text, bytes):
            text = text[:_EXCERPT_BYTES].decode("utf-8", errors="replace")
        text = " ".join(text[:_EXCERPT_BYTES].split())
        return text.replace(self._api_key, "<redacted>") if self._api_key else text


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    return type(exc).__name__
