"""`llm-gateway-proxy keys ...`: the same key operations as the management API, on Redis."""

from __future__ import annotations

import asyncio
import io
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal

import msgspec
import pytest
import redis.asyncio as aioredis

from llm_gateway_proxy import cli
from llm_gateway_proxy.keys import hash_key
from llm_gateway_proxy.keystore import KeyStore
from llm_gateway_proxy.ratelimit import RateLimiter
from tests.support.servers import free_port
from tests.support.services import BIN

Run = tuple[int, str, str]  # exit code, stdout, stderr
KeysCli = Callable[..., Awaitable[Run]]


@pytest.fixture
def keys(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> KeysCli:
    """`await keys(*argv)`: the CLI on the test Redis (on a thread: it runs its own loop)."""
    monkeypatch.setenv("REDIS_URL", redis_url)

    async def run(*argv: str) -> Run:
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def tenant() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


async def test_create_list_get_revoke_rotate(keys: KeysCli, redis: aioredis.Redis) -> None:
    team = tenant()
    code, out, err = await keys(
        "create", "--name", "batch", "--tenant", team, "--model", "gpt-4o*", "--model", "o3",
        "--rpm", "60", "--tpm", "1000", "--budget", "50000", "--budget-period", "daily",
        "--expires-in-days", "30",
    )  # fmt: skip
    assert (code, err) == (0, "")
    created = msgspec.json.decode(out)
    key = created["key"]
    assert out.count(key) == 1 and "key_hash" not in created
    assert (created["tenant"], created["models"]) == (team, ["gpt-4o*", "o3"])
    assert created["limits"] == {"requests_per_minute": 60, "tokens_per_minute": 1000,
                                 "budget_tokens": 50000, "budget_period": "daily"}  # fmt: skip
    assert created["expires_at"] == pytest.approx(time.time() + 30 * 86_400, abs=60)
    record = await KeyStore(redis, cache_ttl=0, timeout=2).lookup(hash_key(key))
    assert record is not None and record.id == created["id"] and record.usable()

    shown = {k: v for k, v in created.items() if k != "key"}
    code, out, _ = await keys("list", "--tenant", team)
    assert (code, msgspec.json.decode(out)) == (0, {"object": "list", "data": [shown]})
    code, out, _ = await keys("get", created["id"])
    assert (code, msgspec.json.decode(out)) == (0, shown)
    assert key not in out

    code, out, _ = await keys("rotate", created["id"])
    rotated = msgspec.json.decode(out)
    assert code == 0 and rotated["id"] == created["id"] and rotated["key"] != key
    store = KeyStore(redis, cache_ttl=0, timeout=2)
    assert await store.lookup(hash_key(key)) is None
    assert await store.lookup(hash_key(rotated["key"])) is not None

    code, out, _ = await keys("revoke", created["id"])
    assert (code, msgspec.json.decode(out)["active"]) == (0, False)
    record = await store.lookup(hash_key(rotated["key"]))
    assert record is not None and not record.usable()


async def test_hash_prints_what_a_static_keys_file_needs(
    keys: KeysCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "gw-static-example-0123456789"
    code, out, _ = await keys("hash", key)
    assert code == 0
    assert msgspec.json.decode(out) == {"key_hash": hash_key(key), "display": "gw-stat...6789"}
    monkeypatch.setattr("sys.stdin", io.StringIO(key + "\n"))  # keeps it out of `ps` and history
    code, out_from_stdin, _ = await keys("hash")
    assert (code, out_from_stdin) == (0, out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create", "--name", "n", "--tenant", "t", "--rpm", "-1"], "limits.requests_per_minute"),
        (["create", "--name", "", "--tenant", "t"], "'name'"),
        (["create", "--name", "n", "--tenant", "not a tenant"], "'tenant'"),
        (["create", "--name", "n", "--tenant", "t", "--model", ""], "'models[0]'"),
        (["create", "--name", "n", "--tenant", "t", "--expires-in-days", "inf"], "positive"),
        (["create", "--name", "n", "--tenant", "t", "--budget-period", "weekly"], "invalid choice"),
        (["create", "--tenant", "t"], "--name"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)  # fmt: skip
async def test_bad_arguments_exit_2_with_the_reason(
    keys: KeysCli, argv: list[str], message: str
) -> None:
    code, out, err = await keys(*argv)
    assert (code, out) == (2, "")
    assert message in err


async def test_unknown_ids_and_unreachable_redis_exit_1(
    keys: KeysCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    for command in ("get", "revoke", "rotate"):
        code, out, err = await keys(command, "key_nope")
        assert (code, out) == (1, "")
        assert "No key with id 'key_nope'" in err
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("REDIS_TIMEOUT", "0.5")
    started = time.monotonic()
    code, out, err = await keys("list")
    assert (code, out) == (1, "") and "Redis failed" in err
    assert time.monotonic() - started < 5


def test_the_console_script_runs_the_key_commands(redis_url: str) -> None:
    env = {"REDIS_URL": redis_url, "PATH": ""}
    team = tenant()
    made = subprocess.run([str(BIN / "llm-gateway-proxy"), "keys", "create", "--name", "n",
                           "--tenant", team], env=env, capture_output=True, timeout=30,
                          check=True)  # fmt: skip
    created = msgspec.json.decode(made.stdout)
    listed = subprocess.run([str(BIN / "llm-gateway-proxy"), "keys", "list", "--tenant", team],
                            env=env, capture_output=True, timeout=30, check=True)  # fmt: skip
    assert [k["id"] for k in msgspec.json.decode(listed.stdout)["data"]] == [created["id"]]


async def test_dollar_budgets_and_spend_in_the_current_period(
    keys: KeysCli, redis: aioredis.Redis
) -> None:
    team = tenant()
    code, out, err = await keys("create", "--name", "team budget", "--tenant", team,
                                "--budget-usd", "2000", "--soft-limit-percent", "75")  # fmt: skip
    assert (code, err) == (0, "")
    created = msgspec.json.decode(out)
    assert created["limits"] == {"budget_usd": 2000.0, "budget_soft_limit_percent": 75.0}
    store = KeyStore(redis, cache_ttl=0, timeout=2)
    record = await store.get(created["id"])
    assert record is not None
    limiter = RateLimiter(redis, timeout=2, fail_open=False)
    for charge in limiter.charges(record, None, 10, Decimal("1500.000000001")):
        await redis.incrby(charge.key, charge.amount)
    code, out, err = await keys("usage", created["id"])
    assert (code, err) == (0, "")
    usage = msgspec.json.decode(out)
    assert (usage["spend_nano_usd"], usage["spend_usd"]) == (1_500_000_000_001, 1500.000000001)
    assert usage["budget_usd_remaining"] == pytest.approx(499.999999999)
    assert usage["budget_soft_limit_reached"] is True  # 75 % of $2,000 is $1,500
    code, out, err = await keys("usage", "--tenant", team)
    assert code == 0 and msgspec.json.decode(out)["total"]["spend_nano_usd"] == 1_500_000_000_001
    code, _, err = await keys("create", "--name", "x", "--tenant", team, "--budget-usd", "-1")
    assert code == 2 and "budget_usd" in err
