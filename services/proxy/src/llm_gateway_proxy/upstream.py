"""The one pooled, keep-alive HTTP client to the provider, and the headers that cross it.

aiohttp's exceptions are translated here, at the boundary, into the gateway's own:
connect failures and dropped connections become UpstreamUnreachable (502), timeouts
UpstreamTimeout (504).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import aiohttp

from llm_gateway_proxy.errors import UpstreamTimeout, UpstreamUnreachable
from llm_gateway_proxy.settings import ProxySettings

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

# Never passed back to the client: hop-by-hop headers, framing the gateway redoes, and cookies.
_DROP_RESPONSE = frozenset(
    {
        "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
        "set-cookie", "server", "date", "alt-svc", "upgrade", "trailer", "proxy-authenticate",
    }
)  # fmt: skip


@contextmanager
def map_exceptions() -> Iterator[None]:
    """Translate aiohttp failures into gateway errors, chained with `from`."""
    try:
        yield
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout("The upstream provider did not answer in time.") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(
            f"The upstream provider could not be reached ({type(exc).__name__})."
        ) from exc


class Upstream:
    """The provider endpoint: its base URL, key, and a pooled aiohttp session."""

    def __init__(self, settings: ProxySettings) -> None:
        self.base_url = settings.upstream_base_url
        self._auth = f"Bearer {settings.upstream_api_key}" if settings.upstream_api_key else None
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )
        self._pool_size = settings.upstream_pool_size
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._pool_size, ttl_dns_cache=300, keepalive_timeout=30
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=True, trust_env=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, client_path: str, query: bytes) -> str:
        """`/v1/X?q` -> `<base>/X?q` (the base carries the version path, as in the OpenAI SDK)."""
        suffix = client_path[3:] if client_path.startswith("/v1/") else client_path
        url = self.base_url + suffix
        return f"{url}?{query.decode('latin-1')}" if query else url

    def headers(self, client_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        """The client's headers minus those never forwarded, plus the upstream key."""
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in client_headers
            if name not in _DROP_REQUEST and not name.startswith(b"x-llm-")
        }
        if self._auth is not None:
            headers["Authorization"] = self._auth
        return headers

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> aiohttp.ClientResponse:
        """Send one request and return once the response headers are in."""
        if self._session is None:
            raise UpstreamUnreachable("The upstream client is not started.")
        with map_exceptions():
            return await self._session.request(
                method, url, headers=headers, data=body or None, allow_redirects=False
            )


def response_headers(response: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    """The upstream's headers that the client should see."""
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.items()
        if name.lower() not in _DROP_RESPONSE
    ]


async def read_body(response: aiohttp.ClientResponse) -> bytes:
    with map_exceptions():
        return await response.read()


def is_event_stream(response: aiohttp.ClientResponse) -> bool:
    return response.content_type == "text/event-stream"
