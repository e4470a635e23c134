"""Rendered pods run on this machine: each container's command, from the project's virtualenv,
with the environment a kubelet would give it; its HTTP probes asked as a kubelet would ask them.
Also a redis-server started with the arguments of the chart's development Redis."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.chart.kubelet import SecretValues, container_env, http_probes, mount_volumes
from tests.chart.rendering import Rendered
from tests.support.servers import free_port, wait_for_port

BIN = Path(sys.executable).parent
PROBE_DEADLINE = 30.0


class LocalPod:
    """One component's single container, started like its Deployment's pod would start it.

    Volume mounts other than /tmp become temporary directories (kubelet.mount_volumes): paths
    under a mount in the environment (e.g. DISPATCHER_ENDPOINT=/data/events.jsonl) are moved
    there. A Secret or ConfigMap volume's directory holds the files the kubelet would project
    into it (e.g. KEYS_FILE from the test's Secret values, MODELS_FILE from the rendered
    ConfigMap).
    """

    def __init__(self, rendered: Rendered, component: str, secrets: SecretValues) -> None:
        self.component = component
        deployment = rendered.deployment(component)
        self.container: dict[str, Any] = rendered.container(component)
        pod_name = f"{deployment['metadata']['name']}-7d9c5b8f6-x2k4p"
        self.env = container_env(rendered, self.container, pod_name=pod_name, secrets=secrets)
        self._root = Path(tempfile.mkdtemp(prefix=f"llm-gw-pod-{component}-"))
        mount_volumes(rendered, component, self.env, secrets, self._root)
        self._out = self._root / "stdout"
        self._err = self._root / "stderr"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        """The container's command and args; the command is a console script on the PATH."""
        command = [*self.container["command"], *self.container.get("args", [])]
        return [str(BIN / command[0]), *command[1:]]

    def start(self) -> LocalPod:
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self.process = subprocess.Popen(self.argv, env={"PATH": str(BIN), **self.env},
                                            stdout=out, stderr=err)  # fmt: skip
        return self

    def probe_statuses(self, deadline: float = PROBE_DEADLINE) -> dict[str, int]:
        """Each HTTP probe's answer, asked until all answer 200 or `deadline` seconds pass."""
        probes = http_probes(self.container)
        assert probes, f"{self.component} has no HTTP probes"
        statuses: dict[str, int] = {}
        give_up = time.monotonic() + deadline
        while True:
            statuses = {kind: http_status(f"http://127.0.0.1:{port}{path}")
                        for kind, (path, port) in probes.items()}  # fmt: skip
            if set(statuses.values()) == {200} or time.monotonic() > give_up:
                return statuses
            assert self.process is not None
            if self.process.poll() is not None:
                return statuses
            time.sleep(0.1)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, as the kubelet sends it, and the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self._root, ignore_errors=True)

    def output(self) -> str:
        text = self._out.read_text(errors="replace") + self._err.read_text(errors="replace")
        return text[-4000:]


def http_status(request: str | urllib.request.Request) -> int:
    """The status of a request (a URL is a GET); 0 when nothing answers."""
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class RedisServer:
    """redis-server with the given arguments, moved to a free loopback port and a temporary
    directory (later arguments win in redis-server's command line)."""

    def __init__(self, args: Sequence[str] = ("--save", "", "--appendonly", "no")) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run `make test` (it installs it)")
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="llm-gw-chart-redis-"))
        self._argv = [binary, *args, "--port", str(self.port), "--bind", "127.0.0.1",
                      "--dir", str(self._dir)]  # fmt: skip
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self._process = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def running(*pods: LocalPod) -> Iterator[tuple[LocalPod, ...]]:
    """Start the pods; stop them all however the block ends."""
    try:
        for pod in pods:
            pod.start()
        yield pods
    finally:
        for pod in pods:
            pod.stop()
