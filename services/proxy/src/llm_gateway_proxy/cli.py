"""`llm-gateway-proxy keys ...`: manage gateway keys straight in Redis, without a running proxy.

    llm-gateway-proxy keys create --name N --tenant T [--model PATTERN ...] [--rpm N] [--tpm N]
                                  [--budget N [--budget-period daily|monthly|total]]
                                  [--expires-in-days D]
    llm-gateway-proxy keys list [--tenant T]
    llm-gateway-proxy keys get|revoke|rotate ID
    llm-gateway-proxy keys hash [KEY]      (the SHA-256 for KEYS_FILE; reads stdin without KEY)

Every command prints JSON, the same objects the management API answers with; `create` and
`rotate` print the key, once. Redis is `REDIS_URL` (every call bounded by `REDIS_TIMEOUT`).
Exit status: 0 done, 1 failed (unknown id, Redis unreachable), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from typing import Any

import msgspec

from llm_gateway_common.config import ConfigError, Env
from llm_gateway_common.streams import DEFAULT_REDIS_URL, connect_redis
from llm_gateway_proxy.errors import GatewayError, InvalidRequest
from llm_gateway_proxy.keys import display_form, hash_key
from llm_gateway_proxy.keystore import KeyStore
from llm_gateway_proxy.manage import (
    create_key,
    get_key,
    key_usage,
    list_keys,
    parse_body,
    revoke_key,
    rotate_key,
    tenant_usage,
)
from llm_gateway_proxy.manage_models import CreateKey
from llm_gateway_proxy.ratelimit import RateLimiter
from llm_gateway_proxy.redisgate import RedisUnavailable

PROG = "llm-gateway-proxy"


def main(argv: list[str]) -> int:
    """Run one key command; `argv` is what follows `llm-gateway-proxy keys`."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or bad arguments (2): argparse printed why
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "hash":
            key = args.key if args.key is not None else sys.stdin.readline().strip()
            if not key:
                raise InvalidRequest("No key given (as an argument or on stdin).")
            _print({"key_hash": hash_key(key), "display": display_form(key)})
            return 0
        env = Env()
        redis_url = env.text("REDIS_URL", DEFAULT_REDIS_URL)
        timeout = env.number("REDIS_TIMEOUT", 2.0, minimum=0.001)
        _print(asyncio.run(_run(args, redis_url, timeout)))
    except (ConfigError, InvalidRequest) as exc:
        print(f"{PROG} keys {args.command}: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"{PROG} keys {args.command}: {exc}", file=sys.stderr)
        return 1
    except RedisUnavailable as exc:
        print(f"{PROG} keys {args.command}: Redis failed: {exc}", file=sys.stderr)
        return 1
    return 0


async def _run(args: argparse.Namespace, redis_url: str, timeout: float) -> Any:
    redis = connect_redis(redis_url, timeout=timeout)
    store = KeyStore(redis, cache_ttl=0, timeout=timeout)
    try:
        if args.command == "create":
            record, key = await create_key(store, _create_spec(args))
            return {**record.public(), "key": key}
        if args.command == "list":
            records = await list_keys(store, args.tenant)
            return {"object": "list", "data": [record.public() for record in records]}
        if args.command == "get":
            return (await get_key(store, args.id)).public()
        if args.command == "revoke":
            return (await revoke_key(store, args.id)).public()
        if args.command == "usage":
            limiter = RateLimiter(redis, timeout=timeout, fail_open=False, gate=store.gate)
            if args.tenant:
                return await tenant_usage(store, limiter, args.tenant)
            if not args.id:
                raise InvalidRequest("give a key id, or --tenant")
            return await key_usage(limiter, await get_key(store, args.id))
        record, key = await rotate_key(store, args.id)
        return {**record.public(), "key": key}
    finally:
        await redis.aclose()


def _create_spec(args: argparse.Namespace) -> CreateKey:
    """The same validation as `POST /manage/keys`, on the same body."""
    given = {"requests_per_minute": args.rpm, "tokens_per_minute": args.tpm,
             "budget_tokens": args.budget, "budget_period": args.budget_period,
             "budget_usd": args.budget_usd,
             "budget_soft_limit_percent": args.soft_limit_percent}  # fmt: skip
    limits = {name: value for name, value in given.items() if value is not None}
    body: dict[str, Any] = {"name": args.name, "tenant": args.tenant, "limits": limits}
    if args.model:
        body["models"] = args.model
    if args.expires_in_days is not None:
        body["expires_at"] = time.time() + args.expires_in_days * 86_400
    return parse_body(msgspec.json.encode(body), msgspec.json.Decoder(CreateKey))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{PROG} keys", description="Manage gateway keys "
                                     "in Redis (REDIS_URL).")  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)

    create = commands.add_parser("create", help="create a key (printed once)")
    create.add_argument("--name", required=True)
    create.add_argument("--tenant", required=True)
    create.add_argument(
        "--model",
        action="append",
        metavar="PATTERN",
        help="a model the key may use (fnmatch pattern; repeat; default: all)",
    )
    create.add_argument("--rpm", type=int, help="requests per minute (0: unlimited)")
    create.add_argument("--tpm", type=int, help="tokens per minute (0: unlimited)")
    create.add_argument("--budget", type=int, help="tokens per budget period (0: unlimited)")
    create.add_argument("--budget-period", choices=["daily", "monthly", "total"])
    create.add_argument("--budget-usd", type=float, metavar="USD",
                        help="US dollars per budget period (0: unlimited)")  # fmt: skip
    create.add_argument("--soft-limit-percent", type=float, metavar="P",
                        help="of --budget-usd, past which usage says so (default 80)")  # fmt: skip
    create.add_argument("--expires-in-days", type=_positive, metavar="D")

    listing = commands.add_parser("list", help="list keys")
    listing.add_argument("--tenant", help="only this tenant's keys")
    for name, text in (
        ("get", "show a key"),
        ("revoke", "deactivate a key"),
        ("rotate", "replace a key, keeping its id and settings (printed once)"),
    ):
        commands.add_parser(name, help=text).add_argument("id", help="the key id (key_...)")
    usage = commands.add_parser("usage", help="a key's (or a tenant's) usage and spend in the "
                                "current period")  # fmt: skip
    usage.add_argument("id", nargs="?", help="the key id (key_...)")
    usage.add_argument("--tenant", help="every key of this tenant, and their total")
    hashing = commands.add_parser("hash", help="the SHA-256 of a key, for KEYS_FILE")
    hashing.add_argument("key", nargs="?", help="the key (default: read a line from stdin)")
    return parser


def _positive(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of days, got {text}")
    return value


def _print(payload: object) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(payload), indent=2).decode() + "\n")
