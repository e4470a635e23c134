"""A real Prometheus (Debian's `prometheus`) on loopback, scraping the services every second;
tests read it through its HTTP API, as Grafana and alerting do."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

import yaml

from tests.support.servers import free_port

SCRAPE_INTERVAL = 1.0


class LocalPrometheus:
    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        """`targets`: job name -> `host:port` whose `/metrics` is scraped."""
        binary = shutil.which("prometheus")
        assert binary is not None, "Debian's prometheus is needed (make deps installs it)"
        self.binary = binary
        self.workdir = workdir
        self.targets = targets
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalPrometheus:
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL:g}s",
                       "scrape_timeout": f"{SCRAPE_INTERVAL:g}s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in self.targets.items()
            ],
        }  # fmt: skip
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = log = (self.workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={path}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        # Ready is not scraping: the scrape manager takes its targets on a ~5 s tick. Wait for a
        # first scrape of every job (up or not), so that what a test sends next is seen.
        while time.monotonic() < deadline:
            try:
                if set(self.targets_up()) == set(self.targets):
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        log_text = (self.workdir / "prometheus.log").read_text()
        raise RuntimeError(f"prometheus did not start: {log_text}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (a vector's samples); raises on a query Prometheus
        refuses."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{expr}: {exc.read().decode()}") from exc
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float:
        """The single value of a query that must have exactly one sample."""
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def targets_up(self) -> dict[str, bool]:
        return {s["metric"]["job"]: s["value"][1] == "1" for s in self.query("up")}
