"""The images, without a Docker engine: docker/Dockerfile is checked against the chart and the
services' console scripts, and each service is installed the way its image target installs it
(the same build context, the same docker/install-service.sh, into a fresh virtualenv), then
started from that virtualenv alone until its probes answer.

What this cannot show: that the base image pulls, that the layers build, that the image runs
under the pod's security context. Those need a Docker engine (docs/deploy.md has the commands).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart.conftest import RenderChart
from tests.chart.pods import RedisServer, http_status
from tests.chart.rendering import merged
from tests.chart.scenarios import FILE_DISPATCHER, MINIMAL
from tests.support.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "docker" / "Dockerfile.dockerignore"
SERVICES = ("proxy", "collector", "dispatcher")
LISTEN_VARS = {
    "proxy": "LISTEN_ADDR",
    "collector": "COLLECTOR_LISTEN_ADDR",
    "dispatcher": "DISPATCHER_LISTEN_ADDR",
}
INSTALL_TIMEOUT = 100  # below the suite's 120 s per test


def _stages() -> dict[str, list[str]]:
    """The Dockerfile's instructions by stage name (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(1), [line])
        else:
            current.append(line)
    return stages


def _instruction(stage: list[str], keyword: str) -> list[str]:
    return [line.split(None, 1)[1] for line in stage if line.split(None, 1)[0] == keyword]


def test_one_target_per_service_starting_the_charts_command(render_chart: RenderChart) -> None:
    stages = _stages()
    rendered = render_chart(merged(MINIMAL, FILE_DISPATCHER))
    for service in SERVICES:
        scripts = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())[
            "project"
        ]["scripts"]
        command = rendered.container(service)["command"]
        assert command[0] in scripts
        assert _instruction(stages[service], "ENTRYPOINT") == [f'["{command[0]}"]']
        ports = [str(port["containerPort"]) for port in rendered.container(service)["ports"]]
        assert _instruction(stages[service], "EXPOSE") == [" ".join(ports)]
        assert _instruction(stages[f"build-{service}"], "RUN") == [
            f"sh docker/install-service.sh {service} /app"
        ]


def test_the_runtime_user_is_the_pods_user(render_chart: RenderChart) -> None:
    (user,) = _instruction(_stages()["runtime"], "USER")
    uid, gid = (int(part) for part in user.split(":"))  # numeric: runAsNonRoot can check it
    context = render_chart(MINIMAL).pod_spec("proxy")["securityContext"]
    assert (uid, gid) == (context["runAsUser"], context["runAsGroup"])
    assert uid != 0


def _build_context(destination: Path) -> Path:
    """What the build stage COPYs, filtered by the Dockerfile's .dockerignore, under WORKDIR."""
    ignored = [
        line.strip().removeprefix("**/") for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip().startswith("**/")
    ]  # fmt: skip

    def ignore(_: str, names: list[str]) -> set[str]:
        return {n for n in names if any(fnmatch.fnmatch(n, pattern) for pattern in ignored)}

    for copy in _instruction(_stages()["build"], "COPY"):
        *sources, target = copy.split()
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, destination / target, ignore=ignore, dirs_exist_ok=True)
            else:
                placed = destination / target
                if target.endswith("/"):
                    placed = placed / origin.name
                placed.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, placed)
    return destination


def _build_env() -> dict[str, str]:
    """The build stage's ENV over this machine's environment (its certificates and proxies
    reach the registry), with the machine's uv and Python. The image builds without a uv cache
    (UV_NO_CACHE); here the cache is kept so the same locked wheels install quickly."""
    env = {name: value for name, value in os.environ.items()
           if name not in {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH"}}  # fmt: skip
    for assignment in _instruction(_stages()["build"], "ENV"):
        for name, value in re.findall(r"(\w+)=(\S+)", assignment):
            env[name] = value
    env.pop("UV_NO_CACHE", None)
    uv = os.environ.get("UV") or shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    env["UV"] = uv
    env["UV_PYTHON"] = sys.executable
    return env


@pytest.fixture(scope="module")
def context() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="llm-gw-image-"))
    yield _build_context(root / "src")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def image_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def _installed(python: Path, module: str) -> bool:
    found = subprocess.run(
        [str(python), "-c", f"import importlib.util as u; print(bool(u.find_spec({module!r})))"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return found.stdout.strip() == "True"


@pytest.mark.image_install
@pytest.mark.parametrize("service", SERVICES)
def test_the_image_install_runs_the_service(
    context: Path, image_redis: RedisServer, service: str
) -> None:
    venv = context.parent / f"app-{service}"
    install = subprocess.run(
        ["sh", str(context / "docker" / "install-service.sh"), service, str(venv)],
        env=_build_env(), cwd=context, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
        check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr

    # only this service, libs/common and their dependencies
    python = venv / "bin" / "python"
    assert _installed(python, f"llm_gateway_{service}")
    assert _installed(python, "llm_gateway_common")
    for absent in {f"llm_gateway_{s}" for s in SERVICES} - {f"llm_gateway_{service}"}:
        assert not _installed(python, absent), absent
    for absent in ("llm_gateway_fakes", "pytest", "ruff"):
        assert not _installed(python, absent), absent

    port = free_port()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        LISTEN_VARS[service]: f"127.0.0.1:{port}",
        "REDIS_URL": f"redis://127.0.0.1:{image_redis.port}/0",
        "DISPATCHER_ENDPOINT": str(context.parent / f"{service}-events.jsonl"),
        "MANAGEMENT_TOKEN": "mt-image-test",  # the proxy needs gateway keys (AUTH_MODE=keys)
        "MANAGEMENT_LISTEN_ADDR": f"127.0.0.1:{free_port()}",  # the proxy's second listener
    }
    log = context.parent / f"{service}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(venv / "bin" / f"llm-gateway-{service}")], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for_port(port, timeout=30)
        assert http_status(f"http://127.0.0.1:{port}/live") == 200
        assert http_status(f"http://127.0.0.1:{port}/ready") == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert "Traceback" not in log.read_text(errors="replace")
