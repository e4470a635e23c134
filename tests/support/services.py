"""Our services under test, each run as a real process through its console script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from tests.support.servers import free_port, wait_for_port

BIN = Path(sys.executable).parent


class ServiceProcess:
    """A console script with the given environment, listening on `listen_var`; its stdout and
    stderr go to files a test can read."""

    def __init__(self, script: str, env: dict[str, str], *, listen_var: str) -> None:
        self.script = script
        self.port = free_port()
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            listen_var: f"127.0.0.1:{self.port}",
            "LOG_LEVEL": "info",
            **env,
        }
        self.stdout_path = Path(tempfile.mkstemp(prefix=f"{script}-", suffix=".out")[1])
        self.stderr_path = Path(tempfile.mkstemp(prefix=f"{script}-", suffix=".err")[1])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen([str(BIN / self.script)], env=self.env, stdout=out,
                                            stderr=err)  # fmt: skip
        wait_for_port(self.port)
        return self

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as when a node dies."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def log_text(self) -> str:
        """Everything the process printed (its log goes to stdout or stderr by service)."""
        return self.stdout_text() + self.stderr_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in self.log_text().splitlines() if line.startswith("{")]


class ProxyProcess(ServiceProcess):
    """The proxy: the data plane on `port` (`base_url`), management on `manage_port`
    (`manage_url`: `/manage`, `/health`)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.manage_port = free_port()
        super().__init__(
            "llm-gateway-proxy",
            {"MANAGEMENT_LISTEN_ADDR": f"127.0.0.1:{self.manage_port}", **env},
            listen_var="LISTEN_ADDR",
        )
        # Two free ports drawn one after the other can be the same one (nothing held the
        # first): the proxy then refuses to start. Draw the data plane's again until they differ.
        while self.port == self.manage_port and "LISTEN_ADDR" not in env:
            self.port = free_port()
            self.env["LISTEN_ADDR"] = f"127.0.0.1:{self.port}"

    @property
    def manage_url(self) -> str:
        return f"http://127.0.0.1:{self.manage_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ProxyProcess:
        super().start()
        wait_for_port(self.manage_port)
        return self


class CollectorProcess(ServiceProcess):
    def __init__(self, env: dict[str, str]) -> None:
        super().__init__("llm-gateway-collector", env, listen_var="COLLECTOR_LISTEN_ADDR")


class DispatcherProcess(ServiceProcess):
    def __init__(self, env: dict[str, str]) -> None:
        super().__init__("llm-gateway-dispatcher", env, listen_var="DISPATCHER_LISTEN_ADDR")
