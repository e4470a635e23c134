"""The benchmark's child processes: started pinned to a core, waited on until they listen, and
always stopped (SIGTERM, then SIGKILL) when the `Children` context that owns them exits.

Each child gets its own session, so a Ctrl-C reaches only the benchmark, which then stops them in
order. Commands are run through `taskset`, which execs them: the child's PID is the server's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

_STOP_GRACE = 10.0


class StartFailed(Exception):
    """A child exited or did not listen in time."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Child:
    """One started server: its process, the port it listens on, and the file its stderr goes to."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.name = name
        self.process = process
        self.port = port
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM, wait up to `_STOP_GRACE` seconds, then SIGKILL."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(_STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(_STOP_GRACE)


class Children:
    """Owns child processes; stops them in reverse start order on exit, whatever the exit."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._children: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None and issubclass(exc_type, Exception):
            for child in self._children:
                _print_tail(child.log)
        self.stop_all()

    def stop_all(self) -> None:
        while self._children:
            self._children.pop().stop()

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        cpu: int,
        port: int,
        env: Mapping[str, str] | None = None,
        stdout: Path | None = None,
        timeout: float = 20.0,
    ) -> Child:
        """Start `argv` pinned to `cpu`; return once it accepts connections on `port`."""
        log = self._log_dir / f"{name}.log"
        with open(log, "ab") as stderr, _open_stdout(stdout) as out:
            process = subprocess.Popen(
                ["taskset", "-c", str(cpu), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=stderr,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        child = Child(name, process, port, log)
        self._children.append(child)
        _wait_listening(child, timeout)
        return child


def _open_stdout(path: Path | None) -> IO[bytes]:
    return open(path if path is not None else os.devnull, "ab")


def _wait_listening(child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise StartFailed(f"{child.name} exited ({child.process.returncode}); see {child.log}")
        try:
            with socket.create_connection(("127.0.0.1", child.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise StartFailed(
        f"{child.name} did not listen on {child.port} in {timeout:g}s; see {child.log}"
    )


def _print_tail(log: Path, lines: int = 20) -> None:
    """What a child wrote to stderr, for the failure report (its log dir is about to go)."""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    print(f"--- {log.name} (last {lines} lines) ---", *tail, sep="\n", file=sys.stderr)
