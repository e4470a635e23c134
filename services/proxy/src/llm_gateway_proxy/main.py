"""`llm-gateway-proxy`: read the environment, serve on Hypercorn until SIGTERM, drain, flush."""

from __future__ import annotations

import asyncio
import signal
import sys
import warnings

import uvloop
from hypercorn.asyncio import serve

from llm_gateway_common.config import ConfigError
from llm_gateway_common.logs import LogOutput, configure_logging
from llm_gateway_proxy import cli, connections
from llm_gateway_proxy.app import create_app
from llm_gateway_proxy.connections import GatewayConfig
from llm_gateway_proxy.settings import ProxySettings


def main() -> None:
    if sys.argv[1:2] == ["keys"]:  # `llm-gateway-proxy keys ...`: the key management CLI
        raise SystemExit(cli.main(sys.argv[2:]))
    try:
        settings = ProxySettings.from_env()
    except ConfigError as exc:
        print(f"llm-gateway-proxy: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    log_output = configure_logging(settings.log_level, buffered=True)
    # aiohttp warns on any bytes body over 1 MB (vision requests); one in-memory write to the
    # transport does not block the loop, and the warning would only add noise to the logs.
    warnings.filterwarnings("ignore", "Sending a large body directly", ResourceWarning)
    try:
        uvloop.run(run(settings, log_output))
    finally:
        log_output.flush()


async def run(settings: ProxySettings, log_output: LogOutput) -> None:
    """Serve until SIGTERM/SIGINT; then stop accepting, let in-flight requests finish (up to
    SHUTDOWN_GRACE_SECONDS), and flush queued events before exiting."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    flusher = asyncio.create_task(log_output.flush_periodically(), name="log-flusher")
    app = create_app(settings, stopping=stopping, log_output=log_output)
    connections.install()
    try:
        await serve(app, hypercorn_config(settings), shutdown_trigger=stopping.wait)  # type: ignore[arg-type]
    finally:
        flusher.cancel()


def hypercorn_config(settings: ProxySettings) -> GatewayConfig:
    """One server, two binds: the data plane first, then management (`listeners.py`)."""
    config = GatewayConfig()
    config.bind = [
        _bind(settings.listen_host, settings.listen_port),
        _bind(settings.management_listen_host, settings.management_listen_port),
    ]
    config.graceful_timeout = settings.shutdown_grace
    config.backlog = 2048
    config.keep_alive_timeout = settings.client_keep_alive_timeout  # longer than the LB's
    config.header_timeout = settings.client_read_timeout  # from a request's first byte
    config.accesslog = None  # the gateway writes its own line per request
    config.errorlog = "-"
    config.loglevel = "WARNING"
    return config


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


if __name__ == "__main__":
    main()
