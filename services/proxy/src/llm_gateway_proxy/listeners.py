"""The proxy's two listeners, one Hypercorn server: the data plane (`LISTEN_ADDR`: the OpenAI
API, `/live`, `/ready`) and management (`MANAGEMENT_LISTEN_ADDR`: `/manage`, `/health`, and the
probes again).

Management has its own port so that it is never on the internet by accident: the chart's
Service gives it a port the Ingress does not route unless asked, and the data plane answers
`/manage` and `/health` with 404 like any unknown path. Both apps share the one lifespan (the
data plane's): Hypercorn copies its state into every request's scope, whichever port it came on.
"""

from __future__ import annotations

from llm_gateway_proxy.inflight import ASGIApp, Receive, Scope, Send


class Listeners:
    """ASGI app: requests that arrived on `management_port` go to `management`, everything else
    (including the lifespan) to `data_plane`."""

    def __init__(self, data_plane: ASGIApp, management: ASGIApp, *, management_port: int) -> None:
        self.data_plane = data_plane
        self.management = management
        self.management_port = management_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if server is not None and server[1] == self.management_port and scope["type"] != "lifespan":
            await self.management(scope, receive, send)
        else:
            await self.data_plane(scope, receive, send)
