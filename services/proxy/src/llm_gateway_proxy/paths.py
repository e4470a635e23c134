"""Client paths: one canonical form, decided once, before anything routes on it.

    raw path bytes ──▶ refuse every spelling with two readings (400 invalid_path)
                   ──▶ decoded path (= the canonical form: nothing left to normalise)
                   ──▶ `/v1/<rest>`: an API we meter, an allowed pass-through, or 404

Refused outright, so no later component (Starlette's router, aiohttp, the provider's server) can
read a path differently from the gateway: percent-encoded `/ \\ ? # % .` and control bytes; raw
bytes that are not printable ASCII (or a backslash); empty segments (`//`, a trailing `/`); dot
segments (`.`, `..`); decoded text that is not UTF-8. What remains decodes to a path whose
segments carry no separator of any kind, so a path can never climb out of a provider's base path.

Matching is exact and case-sensitive (`/v1/Chat/Completions` is not chat completions, and is not
forwarded either: it is 404 like any path nobody allowed). The pass-through forwards only the
paths an operator allows (`PASSTHROUGH_PATHS`, `*` = one segment); everything is authenticated and
admitted by the same checks as the metered APIs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from llm_gateway_proxy.apis import (
    CHAT,
    COMPLETIONS,
    COUNT_TOKENS,
    EMBEDDINGS,
    MESSAGES,
    RESPONSES,
    Api,
)
from llm_gateway_proxy.downstream import refuse
from llm_gateway_proxy.errors import GatewayError, InvalidPath

API_PREFIX = "/v1/"

_METERED: dict[str, Api] = {
    api.path[len(API_PREFIX) :]: api
    for api in (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, MESSAGES, COUNT_TOKENS)
}
# Pass-through POSTs that run no model. Everything else may (images, audio, batches, and any
# path an operator adds), so a key limited to some models must name an allowed one there; a batch
# names its models inside an uploaded file the gateway does not read, so such keys cannot
# create batches.
_MODEL_FREE = frozenset(
    API_PREFIX + path for path in (
        "files", "uploads", "uploads/*/parts", "uploads/*/complete", "uploads/*/cancel",
        "batches/*/cancel", "chat/completions/*", "responses/*/cancel",
    )
)  # fmt: skip
# Raw bytes allowed in a path: RFC 3986 pchar and `/`, with `%` only as the start of an escape.
_RAW_OK = re.compile(rb"^(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*$")
# Escapes that would decode into a separator, an escape, a dot or a control byte.
_BAD_ESCAPE = re.compile(rb"%(?:2[fFeE5]|5[cC]|3[fF]|23|[01][0-9A-Fa-f]|7[fF])")
_QUERY_OK = re.compile(rb"^[\x21-\x22\x24-\x7e]*$")  # printable ASCII but `#`; no space
# Bytes quote() may leave as they are in a segment (its default `safe` would keep `/`).
_SEGMENT_SAFE = "-._~!$&'()*+,;=:@"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a `/v1/...` request goes: a metered API, or the pass-through (`api` None) with the
    path to append to the provider's base URL (`forward_path`, canonical and re-encoded)."""

    api: Api | None
    forward_path: str
    endpoint: str  # the event's `endpoint`: the API's path, or the canonical path
    pattern: str  # what allowed it: the API's path, or `/v1/<pass-through pattern>`

    def runs_a_model(self, method: str) -> bool:
        """Whether this request may run a model (so a key limited to some models must name one
        it may use): any POST but those known to run none (uploads, cancels, metadata edits)."""
        return method == "POST" and self.pattern not in _MODEL_FREE


_METERED_TARGETS = {rest: Target(api, "/" + rest, api.path, api.path)
                    for rest, api in _METERED.items()}  # fmt: skip
_KNOWN_PATHS = 1024  # raw paths whose canonical form CanonicalPaths remembers
_KNOWN_PATH_BYTES = 256  # ... when no longer than this: at most 256 KiB for the table


class PathTable:
    """The `/v1` paths the gateway answers: the metered APIs, then the allowed pass-through."""

    def __init__(self, passthrough: Iterable[str]) -> None:
        # Indexed by (first segment, length), so a lookup tries only the patterns that may match.
        self._patterns: dict[tuple[str, int], list[tuple[str, ...]]] = {}
        for text in passthrough:
            pattern = tuple(text.strip("/").split("/"))
            if pattern[0] == "*":
                raise ValueError(f"a pass-through pattern must start with a name: {text!r}")
            self._patterns.setdefault((pattern[0], len(pattern)), []).append(pattern)

    def resolve(self, method: str, path: str) -> Target | None:
        """The target of a canonical path (see `check_path`), or None when nobody allowed it."""
        if not path.startswith(API_PREFIX):
            return None
        rest = path[len(API_PREFIX) :]
        if method == "POST":
            metered = _METERED_TARGETS.get(rest)
            if metered is not None:
                return metered
        segments = rest.split("/")
        for pattern in self._patterns.get((segments[0], len(segments)), ()):
            if _matches(pattern, segments):
                encoded = "/".join(quote(segment, safe=_SEGMENT_SAFE) for segment in segments)
                return Target(None, "/" + encoded, path, API_PREFIX + "/".join(pattern))
        return None


def check_path(raw_path: bytes) -> str:
    """The canonical (decoded) path of a raw request path; InvalidPath if it has two readings."""
    if not raw_path.startswith(b"/") or not _RAW_OK.match(raw_path):
        raise InvalidPath("The request path contains characters that are not allowed.")
    if b"%" in raw_path and _BAD_ESCAPE.search(raw_path):
        raise InvalidPath("The request path contains an encoded separator, dot or control byte.")
    for segment in raw_path[1:].split(b"/"):
        if segment in (b"", b".", b".."):
            raise InvalidPath("The request path contains an empty or dot segment.")
    try:
        return unquote_to_bytes(raw_path).decode("utf-8") if b"%" in raw_path else raw_path.decode()
    except UnicodeDecodeError as exc:
        raise InvalidPath("The request path is not valid UTF-8 once decoded.") from exc


def check_query(query: bytes) -> None:
    """A query string is forwarded as sent; refuse bytes some parser would read differently."""
    if query and not _QUERY_OK.match(query):
        raise InvalidPath("The query string contains characters that are not allowed.")


class CanonicalPaths:
    """ASGI middleware: every HTTP request's path is checked before any routing; a path with two
    readings is answered 400 here, so nothing behind it ever sees one."""

    def __init__(self, app: Any) -> None:
        self.app = app
        # Raw paths already checked, and their canonical form: the few an API's clients use
        # are checked once. Bounded: once full, the rest are checked every time.
        self._known: dict[bytes, str] = {}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
        try:
            path = self._known.get(raw)
            if path is None:
                path = check_path(raw)
                if len(self._known) < _KNOWN_PATHS and len(raw) <= _KNOWN_PATH_BYTES:
                    self._known[raw] = path
            check_query(scope.get("query_string", b""))
        except GatewayError as err:
            await refuse(send, err, scope)
            return
        scope["path"] = path
        await self.app(scope, receive, send)


def _matches(pattern: tuple[str, ...], segments: list[str]) -> bool:
    return all(p in ("*", s) for p, s in zip(pattern, segments, strict=True))
