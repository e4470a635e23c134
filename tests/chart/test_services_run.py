"""The rendered Deployments, run: each container's command, environment (ConfigMap, Secret
references resolved from values this test controls, `$(VAR)` expansion, the pod name) and probe
ports come from the manifests; the processes are our console scripts, started here; every probe
must answer 200. So the chart cannot drift from the variables the services read, their names,
their formats or their ports.

Redis and Postgres are real local servers; the Secrets' contents are the test's (a Secret
volume, such as the keys file, becomes a directory holding the test's file). The only stand-in
for the cluster: the development Redis Service's name is resolved to the local redis-server
started with that Deployment's own arguments.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.chart.conftest import RenderChart
from tests.chart.pods import BIN, LocalPod, RedisServer, http_status, running
from tests.chart.rendering import Rendered, Values, merged
from tests.chart.scenarios import SCENARIOS
from tests.support.postgres import postgres_dsn
from tests.support.servers import free_port

REDIS_PASSWORD = "pw-" + uuid.uuid4().hex
LUNARY_KEY = str(uuid.uuid4())
MANAGEMENT_TOKEN = "mt-" + uuid.uuid4().hex
# The management token Secret of the scenarios (scenarios.MANAGEMENT_TOKEN), with its value.
MANAGEMENT_SECRET = {("gateway-manage", "management-token"): MANAGEMENT_TOKEN}
# A keys file as kept in Git: records holding only each key's SHA-256, never the key.
GATEWAY_KEY = "gw-" + uuid.uuid4().hex
KEY_RECORD = {"id": "key_chart", "name": "chart-test", "tenant": "team-a",
              "key_hash": hashlib.sha256(GATEWAY_KEY.encode()).hexdigest()}  # fmt: skip
KEYS_JSON = json.dumps([KEY_RECORD])


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
                      "management": {"containerPort": free_port()},
                      "upstream": {"baseUrl": f"http://127.0.0.1:{free_port()}/v1"}},
            "collector": {"containerPort": free_port()},
            "dispatcher": {"containerPort": free_port()},
        },
        *layers,
    )  # fmt: skip


GatewayKey = Callable[[LocalPod], str]


def _assert_pods_answer(
    rendered: Rendered,
    secrets: dict[tuple[str, str], str],
    *,
    gateway_key: GatewayKey | None = None,
) -> None:
    """Every pod's probes answer 200 and SIGTERM ends it cleanly. With `gateway_key` (the key a
    client would get, given the running proxy pod), the proxy also accepts that key (its request
    reaches for the upstream, which nothing serves: 502) and refuses any other (401)."""
    pods = [LocalPod(rendered, component, secrets) for component in rendered.components()
            if component != "redis"]  # fmt: skip
    with running(*pods):
        for pod in pods:
            statuses = pod.probe_statuses()
            assert set(statuses.values()) == {200}, (
                f"{pod.component}: probes answered {statuses}; argv {pod.argv}\n{pod.output()}"
            )
        if gateway_key is not None:
            (proxy,) = [pod for pod in pods if pod.component == "proxy"]
            port = proxy.container["ports"][0]["containerPort"]
            assert _models_status(port, gateway_key(proxy)) == 502, proxy.output()
            assert _models_status(port, "gw-not-a-key") == 401, proxy.output()
        for pod in pods:
            assert pod.terminate() == 0, f"{pod.component} on SIGTERM:\n{pod.output()}"


def _models_status(port: int, key: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models",
                                     headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    return http_status(request)


def _create_key_as_notes_say(proxy: LocalPod) -> str:
    """`kubectl exec deploy/<proxy> -- llm-gateway-proxy keys create ...`, as NOTES.txt says:
    the container's command, in the container's environment."""
    created = subprocess.run(
        [*proxy.argv, "keys", "create", "--name", "team-a", "--tenant", "team-a"],
        env={"PATH": str(BIN), **proxy.env}, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key: str = json.loads(created.stdout)["key"]
    return key


def _create_key_with_the_api(proxy: LocalPod) -> str:
    """`POST /manage/keys` on the management port, with the management token the pod got from
    its Secret (the API port does not serve it)."""
    ports = {port["name"]: port["containerPort"] for port in proxy.container["ports"]}
    assert http_status(f"http://127.0.0.1:{ports['http']}/manage/keys") == 404
    port = ports["management"]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/manage/keys", method="POST",
        data=json.dumps({"name": "ci", "tenant": "ci"}).encode(),
        headers={"Authorization": f"Bearer {proxy.env['MANAGEMENT_TOKEN']}",
                 "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201
        key: str = json.load(response)["key"]
    return key


def test_the_minimal_install(render_chart: RenderChart, redis: RedisServer) -> None:
    rendered = render_chart(_local("minimal", {"redis": {"host": "127.0.0.1",
                                                         "port": redis.port}}))  # fmt: skip
    assert rendered.components() == ["collector", "proxy"]
    _assert_pods_answer(rendered, MANAGEMENT_SECRET, gateway_key=_create_key_as_notes_say)


def test_without_authentication(render_chart: RenderChart, redis: RedisServer) -> None:
    rendered = render_chart(_local("no-auth", {"redis": {"host": "127.0.0.1",
                                                         "port": redis.port}}))  # fmt: skip
    _assert_pods_answer(rendered, secrets={})


def test_values_ci(render_chart: RenderChart) -> None:
    """Development Redis and Secrets, the file dispatcher on its volume: all of values-ci.yaml;
    a key created through the management API with the development token is accepted."""
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
        _assert_pods_answer(rendered, secrets, gateway_key=_create_key_with_the_api)
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
            ("gateway-keys", "keys.json"): KEYS_JSON,
        }
        _assert_pods_answer(rendered, secrets, gateway_key=lambda _: GATEWAY_KEY)


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
        **MANAGEMENT_SECRET,
    }
    _assert_pods_answer(rendered, secrets)


def test_helicone_dispatcher(render_chart: RenderChart, redis: RedisServer) -> None:
    values = _local("dispatcher-helicone", {
        "redis": {"host": "127.0.0.1", "port": redis.port},
        "dispatcher": {"endpoint": f"http://127.0.0.1:{free_port()}/custom/v1/log"}})  # fmt: skip
    rendered = render_chart(values)
    _assert_pods_answer(
        rendered, {("helicone", "api-key"): "sk-helicone-test", **MANAGEMENT_SECRET}
    )


def test_several_providers(render_chart: RenderChart, redis: RedisServer) -> None:
    """values.yaml's model table: the proxy starts only if it accepts the rendered MODELS_FILE
    (from the ConfigMap volume) and finds every key variable set (from the provider Secrets)."""
    proxy = SCENARIOS["models"]["proxy"]
    providers = {name: {"base_url": f"http://127.0.0.1:{free_port()}/v1"}
                 for name in proxy["models"]["providers"]}  # fmt: skip
    values = _local("models", {"redis": {"host": "127.0.0.1", "port": redis.port},
                               "proxy": {"models": {"providers": providers}}})  # fmt: skip
    keys = {(ref["existingSecret"], ref["key"]): f"sk-test-{variable}"
            for variable, ref in proxy["providerKeys"].items()}  # fmt: skip
    _assert_pods_answer(render_chart(values), {**keys, **MANAGEMENT_SECRET})
