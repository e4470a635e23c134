"""The one pooled, keep-alive HTTP client to the provider, and the headers that cross it.

aiohttp's exceptions are translated here, at the boundary, into the gateway's own:
connect failures and dropped connections become UpstreamUnreachable (502), a body cut off
mid-way UpstreamIncomplete (502), timeouts UpstreamTimeout (504).

URLs are the base URL plus a canonical path from `paths.py` (segments that hold no separator of
any kind), passed to aiohttp already encoded so nothing re-normalises them; the result is checked
to stay under the base path all the same. Headers are forwarded only when their bytes mean the
same to every parser (no control bytes, valid UTF-8), else the request is refused (400).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import aiohttp
from yarl import URL

from llm_gateway_proxy.errors import (
    GatewayError,
    HeaderNotAllowed,
    InvalidPath,
    UpstreamIncomplete,
    UpstreamTimeout,
    UpstreamUnreachable,
)

# Never forwarded upstream: hop-by-hop headers, the client's credentials (the upstream key is set
# here), the gateway's own routing headers, and what aiohttp sets itself.
_DROP_REQUEST = frozenset(
    {
        b"host", b"connection", b"keep-alive", b"proxy-authorization", b"proxy-connection",
        b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length",
        b"accept-encoding", b"authorization", b"api-key", b"x-api-key", b"cookie",
        b"x-llm-tenant", b"x-tenant", b"forwarded", b"x-forwarded-for", b"x-forwarded-host",
        b"x-forwarded-proto", b"x-real-ip",
    }
)  # fmt: skip
# Headers that pick another account or project at the provider than the gateway's key belongs
# to: dropped unless FORWARD_ACCOUNT_HEADERS names them.
ACCOUNT_HEADERS = frozenset({b"openai-organization", b"openai-project"})
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEADER_NAME_OK = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9a-z]+$")

# Never passed back to the client: hop-by-hop headers, framing the gateway redoes, and cookies.
_DROP_RESPONSE = frozenset(
    {
        b"connection", b"keep-alive", b"transfer-encoding", b"content-length",
        b"content-encoding", b"set-cookie", b"server", b"date", b"alt-svc", b"upgrade",
        b"trailer", b"proxy-authenticate",
    }
)  # fmt: skip


@contextmanager
def map_exceptions() -> Iterator[None]:
    """Translate aiohttp failures into gateway errors, chained with `from`."""
    try:
        yield
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _mapped(exc) from exc


def _mapped(exc: aiohttp.ClientError | TimeoutError) -> GatewayError:
    """The gateway's error for an aiohttp failure."""
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamIncomplete("The upstream provider's response was cut off.")
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout("The upstream provider did not answer in time.")
    return UpstreamUnreachable(
        f"The upstream provider could not be reached ({type(exc).__name__})."
    )


class Upstream:
    """The pooled, keep-alive aiohttp session every provider is reached through. Each request
    brings its own URL, headers and timeouts (`providers/`)."""

    def __init__(self, pool_size: int) -> None:
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._pool_size, ttl_dns_cache=300, keepalive_timeout=30
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, trust_env=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(
        self,
        method: str,
        url: URL,
        headers: dict[str, str],
        body: bytes,
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        """Send one request and return once the response headers are in."""
        if self._session is None:
            raise UpstreamUnreachable("The upstream client is not started.")
        try:  # map_exceptions, spelt out: a context manager per request costs a generator
            return await self._session.request(
                method, url, headers=headers, data=body or None, allow_redirects=False,
                timeout=timeout,
            )  # fmt: skip
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc) from exc


def client_timeout(connect: float, read: float) -> aiohttp.ClientTimeout:
    """No total: a stream may last as long as it keeps talking; `read` bounds each silence."""
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=read)


def url_under(base: URL, path: str, query: bytes = b"") -> URL:
    """`<base><path>?<query>`; `path` is canonical and encoded (paths.py). The result is checked
    to stay under the base path all the same."""
    base_path = base.raw_path.rstrip("/")
    url = base.with_path(base_path + path, encoded=True)
    if not url.raw_path.startswith(base_path + "/"):
        raise InvalidPath("The request path leaves the provider's base path.")
    return URL(f"{url}?{query.decode('ascii')}", encoded=True) if query else url


def dropped_headers(forward_account: Sequence[bytes]) -> frozenset[bytes]:
    """The client headers never forwarded, given the account headers FORWARD_ACCOUNT_HEADERS
    lets through."""
    return _DROP_REQUEST | (ACCOUNT_HEADERS - set(forward_account))


def forwarded_headers(
    client_headers: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> dict[str, str]:
    """The client's headers minus `drop` and the gateway's own (the adapter adds the
    provider's key); a header whose bytes are not plain (control bytes, invalid UTF-8) is
    refused, not forwarded."""
    headers = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in client_headers
        if name not in drop and not name.startswith(b"x-llm-")
    }
    # One check over every value for the usual case (printable ASCII); else each header's.
    joined = "".join(headers.values())
    if not (joined.isascii() and joined.isprintable()):
        kept = [(n, v) for n, v in client_headers if n not in drop and not n.startswith(b"x-llm-")]
        headers = _checked(kept)
    return headers


def response_headers(response: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    """The upstream's headers that the client should see (not the gateway's own `X-LLM-*`,
    which an upstream gateway may have set: this one's are the client's); names lowercased,
    bytes as received (h11 validates every header before it is sent to the client)."""
    kept = []
    for name, value in response.raw_headers:
        lower = name.lower()
        if lower not in _DROP_RESPONSE and not lower.startswith(b"x-llm-"):
            kept.append((lower, value))
    return kept


async def read_body(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _mapped(exc) from exc


def is_event_stream(response: aiohttp.ClientResponse) -> bool:
    return response.content_type == "text/event-stream"


def _checked(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Headers with non-ASCII or control bytes somewhere: each checked, UTF-8 kept as such."""
    checked = {}
    for name, value in headers:
        if not _HEADER_NAME_OK.match(name) or _CONTROL.search(value):
            raise HeaderNotAllowed(f"Header {_shown(name)} has a value that is not allowed.")
        try:
            checked[name.decode("ascii")] = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HeaderNotAllowed(f"Header {_shown(name)} is not valid UTF-8.") from exc
    return checked


def _shown(name: bytes) -> str:
    """A header name as it may appear in an error message (hostile bytes made inert)."""
    return repr(name[:64].decode("ascii", "replace"))
