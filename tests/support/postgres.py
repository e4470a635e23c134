"""A real PostgreSQL for tests: a container when a Docker engine runs, else the local server
binaries (Debian's `postgresql` package, installed by `make test`), run as the `postgres` user
when the tests run as root (Postgres refuses to run as root)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.servers import docker_available, free_port, wait_for_port


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(
            "PostgreSQL server binaries not found: run `make test` (it installs them)"
        )
    return Path(initdb).parent


class LocalPostgres:
    """A throwaway cluster on a free port; `stop`/`start` simulate an outage."""

    def __init__(self, *, durable: bool = False) -> None:
        self._bin = _bindir()
        self.port = free_port()
        self._root = Path(tempfile.mkdtemp(prefix="llm-gw-pg-"))
        self._data = self._root / "data"
        self._durable = durable
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self._root, "postgres", "postgres")
        self._run("initdb", "-D", str(self._data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")  # fmt: skip

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> LocalPostgres:
        options = f"-p {self.port} -k {self._root} -c listen_addresses=127.0.0.1"
        if not self._durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self._data), "-o", options, "-l",
                  str(self._root / "server.log"), "-w", "start")  # fmt: skip
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self._bin / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def postgres_dsn() -> Iterator[str]:
    if docker_available():
        from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    server = LocalPostgres().start()
    try:
        yield server.dsn
    finally:
        server.destroy()
