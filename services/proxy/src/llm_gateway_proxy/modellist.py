"""`GET /v1/models[/{model}]` with a model table: the public names the gateway routes, in
OpenAI's list shape, narrowed to what the caller's key may use. A table with a pattern route
(`llama-*`) also lists what the default provider lists (the names it would pass through),
when it has one; without MODELS_FILE the provider's own answer passes through as before (but to
Anthropic clients, who get every list in Anthropic's shape)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

MODELS_PATHS = frozenset({"/v1/models", "/v1/models/*"})
OWNER = "llm-gateway"


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": OWNER}


def listing(
    names: Iterable[str],
    upstream: bytes | None,
    allowed: Callable[[str], bool],
    routable: Callable[[str], bool],
) -> bytes:
    """The list body: configured names first, then the provider's (`upstream`, its answer's
    body, if any) that are not among them and that a route would take; each only if
    `allowed`."""
    seen: set[str] = set()
    data: list[dict[str, Any]] = []
    for name in names:
        if name not in seen and allowed(name):
            seen.add(name)
            data.append(model_object(name))
    for item in _provider_models(upstream):
        name = item["id"]
        if name not in seen and allowed(name) and routable(name):
            seen.add(name)
            data.append(item)
    return orjson.dumps({"object": "list", "data": data})


def _provider_models(body: bytes | None) -> list[dict[str, Any]]:
    """The provider's list entries that have a string id (anything else is not repeated)."""
    if not body:
        return []
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return []
    return [item for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)]


def anthropic_models(body: bytes) -> bytes:
    """An OpenAI model list (or model object) of `listing`/`model_object` in Anthropic's shape,
    for clients that send `anthropic-version` (Claude Code, the anthropic SDKs)."""
    payload = orjson.loads(body)
    if payload.get("object") != "list":
        return orjson.dumps(_anthropic_model(payload))
    data = [_anthropic_model(item) for item in payload["data"]]
    first = data[0]["id"] if data else None
    last = data[-1]["id"] if data else None
    return orjson.dumps({"data": data, "has_more": False, "first_id": first, "last_id": last})


def _anthropic_model(item: dict[str, Any]) -> dict[str, Any]:
    created = item.get("created")
    stamp = created if isinstance(created, int) and 0 <= created < 2**33 else 0
    when = datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    name = item["id"]
    return {"type": "model", "id": name, "display_name": name, "created_at": when}
