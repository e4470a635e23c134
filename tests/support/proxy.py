"""The proxy under test, run as a real process through its console script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from tests.support.servers import free_port, wait_for_port

PROXY_BIN = Path(sys.executable).parent / "llm-gateway-proxy"


class ProxyProcess:
    """`llm-gateway-proxy` with the given environment; its stdout (the JSON log) goes to a file."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "LISTEN_ADDR": f"127.0.0.1:{self.port}",
            "LOG_LEVEL": "info",
            **env,
        }
        self.log_path = Path(tempfile.mkstemp(prefix="llm-gw-proxy-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ProxyProcess:
        self.process = subprocess.Popen(
            [str(PROXY_BIN)], env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        wait_for_port(self.port)
        return self

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, object]]:
        lines = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                lines.append(orjson.loads(line))
        return lines
