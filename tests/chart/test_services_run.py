"""The rendered Deployments, run: each container's command, environment (ConfigMap, Secret
references resolved from values this test controls, `$(VAR)` expansion, the pod name) and probe
ports come from the manifests; the processes are our console scripts, started here; every probe
must answer 200. So the chart cannot drift from the variables the services read, their names,
their formats or their ports.

Redis and Postgres are real local servers; the Secrets' contents are the test's. The only
stand-in for the cluster: the development Redis Service's name is resolved to the local
redis-server started with that Deployment's own arguments.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.chart.conftest import RenderChart
from tests.chart.pods import LocalPod, RedisServer, running
from tests.chart.rendering import Rendered, Values, merged
from tests.chart.scenarios import SCENARIOS
from tests.support.postgres import postgres_dsn
from tests.support.servers import free_port

REDIS_PASSWORD = "pw-" + uuid.uuid4().hex
LUNARY_KEY = str(uuid.uuid4())


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[RedisServer]:
    server = RedisServer(("--save", "", "--appendonly", "no", "--requirepass", REDIS_PASSWORD))
    yield server.start()
    server.stop()


def _local(scenario: str, *layers: Values) -> Values:
    """The scenario, listening on free loopback ports, on its own stream, with upstreams that
    are never contacted (no request is sent; they are loopback addresses all the same)."""
    return merged(
        SCENARIOS[scenario],
        {
            "listenHost": "127.0.0.1",
            "events": {"stream": f"chart-test:{scenario}:{uuid.uuid4().hex[:8]}"},
            "proxy": {"containerPort": free_port(),
                      "upstream": {"baseUrl": f"http://127.0.0.1:{free_port()}/v1"}},
            "collector": {"containerPort": free_port()},
            "dispatcher": {"containerPort": free_port()},
        },
        *layers,
    )  # fmt: skip


def _assert_pods_answer(rendered: Rendered, secrets: dict[tuple[str, str], str]) -> None:
    pods = [LocalPod(rendered, component, secrets) for component in rendered.components()
            if component != "redis"]  # fmt: skip
    with running(*pods):
        for pod in pods:
            statuses = pod.probe_statuses()
            assert set(statuses.values()) == {200}, (
                f"{pod.component}: probes answered {statuses}; argv {pod.argv}\n{pod.output()}"
            )
        for pod in pods:
            assert pod.terminate() == 0, f"{pod.component} on SIGTERM:\n{pod.output()}"


def test_the_minimal_install(render_chart: RenderChart, redis: RedisServer) -> None:
    rendered = render_chart(_local("minimal", {"redis": {"host": "127.0.0.1",
                                                         "port": redis.port}}))  # fmt: skip
    assert rendered.components() == ["collector", "proxy"]
    _assert_pods_answer(rendered, secrets={})


def test_values_ci(render_chart: RenderChart) -> None:
    """Development Redis and Secrets, the file dispatcher on its volume: all of values-ci.yaml."""
    rendered = render_chart(_local("ci"))
    assert rendered.components() == ["collector", "dispatcher", "proxy", "redis"]
    redis_args = rendered.container("redis")["args"]
    assert redis_args[0] == "redis-server"
    dev_redis = RedisServer(redis_args[1:]).start()
    try:
        service = rendered.one("Service", "redis")["metadata"]["name"]
        for manifest in rendered.of_kind("Deployment"):  # the cluster's DNS, for this test
            for variable in manifest["spec"]["template"]["spec"]["containers"][0].get("env", []):
                if variable["name"] == "REDIS_URL":
                    variable["value"] = variable["value"].replace(
                        f"{service}:6379", f"127.0.0.1:{dev_redis.port}"
                    )
        (secret,) = rendered.of_kind("Secret")
        name = secret["metadata"]["name"]
        secrets = {(name, key): value for key, value in rendered.secret_data(name).items()}
        _assert_pods_answer(rendered, secrets)
    finally:
        dev_redis.stop()


def test_postgres_collector_with_a_redis_password(
    render_chart: RenderChart, redis_with_password: RedisServer
) -> None:
    redis = {"host": "127.0.0.1", "port": redis_with_password.port, "existingSecret": "redis"}
    values = _local("postgres-collector", {"redis": redis})
    rendered = render_chart(values)
    with postgres_dsn() as dsn:
        secrets = {
            ("redis", "redis-password"): REDIS_PASSWORD,
            ("openai", "api-key"): "sk-test-not-sent-anywhere",
            ("ledger-db", "database-url"): dsn,
        }
        _assert_pods_answer(rendered, secrets)


def test_lunary_dispatcher_with_a_redis_url_secret(
    render_chart: RenderChart, redis_with_password: RedisServer
) -> None:
    values = _local("dispatcher-lunary", {
        "redis": {"existingSecret": "redis-url", "existingSecretUrlKey": "url", "host": ""},
        "dispatcher": {"endpoint": f"http://127.0.0.1:{free_port()}/v1/runs/ingest"}})  # fmt: skip
    rendered = render_chart(values)
    secrets = {
        ("redis-url", "url"): f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_with_password.port}/0",
        ("lunary", "api-key"): LUNARY_KEY,
    }
    _assert_pods_answer(rendered, secrets)


def test_helicone_dispatcher(render_chart: RenderChart, redis: RedisServer) -> None:
    values = _local("dispatcher-helicone", {
        "redis": {"host": "127.0.0.1", "port": redis.port},
        "dispatcher": {"endpoint": f"http://127.0.0.1:{free_port()}/custom/v1/log"}})  # fmt: skip
    rendered = render_chart(values)
    _assert_pods_answer(rendered, {("helicone", "api-key"): "sk-helicone-test"})
