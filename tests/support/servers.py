"""Real servers for tests: Redis from a Docker container when an engine runs, else the local
`redis-server` binary (installed by `make test` from Debian's packages)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from llm_gateway_fakes.localnet import free_port, wait_for_port

__all__ = ["LocalRedis", "free_port", "redis_url", "wait_for_port"]


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    return result.returncode == 0


class LocalRedis:
    """A redis-server process on a fixed port that a test may stop and start again."""

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run `make test` (it installs it)")
        self.binary = binary
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="llm-gw-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> LocalRedis:
        self._process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self._dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port)
        return self

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its port and accepts connections (the kernel queues them)
        but answers nothing, as a hung Redis does. `thaw` resumes it, and it then runs whatever
        commands were sent meanwhile, as a Redis back from a long stall does."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self._process is not None:
            self.thaw()
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """A Redis for the test session: a container when Docker runs, else a local server."""
    if docker_available():
        from testcontainers.redis import RedisContainer  # noqa: PLC0415

        with RedisContainer("redis:7-alpine") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
        return
    server = LocalRedis().start()
    try:
        yield server.url
    finally:
        server.stop()
