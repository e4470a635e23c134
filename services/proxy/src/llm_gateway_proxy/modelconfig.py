"""The model table (`MODELS_FILE`): providers, the public model names clients send, and how each
is routed. Decoded strictly into typed structs; anything unknown or mistyped is a ConfigError
that names the field, so start-up stops (exit 2) instead of routing on a guess.

    ModelsFile
    ├── providers: name -> Provider      one upstream account/endpoint (type openai|azure|anthropic)
    ├── models: public name -> ModelRoute   targets (weighted), fallbacks, routing overrides
    ├── routing: Routing                 defaults (retries, backoff, cooldown, deadline)
    └── default_provider                 where other /v1 pass-through goes

Provider keys never come from the file: `api_key_env` names the environment variable holding
one, read once here. Without MODELS_FILE, `single_provider` builds the table the proxy always had:
one `openai` provider from UPSTREAM_OPENAI_*, every model passed through, no retries.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from llm_gateway_common.config import ConfigError

ProviderType = Literal["openai", "azure", "anthropic"]
StreamUsage = Literal["inject", "never"]


class Timeouts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Seconds: to connect, for the provider to stay silent, and to the first token."""

    connect: float = 10.0
    read: float = 600.0
    first_token: float | None = None


class Provider(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: ProviderType
    base_url: str
    api_key_env: str | None = None
    api_version: str | None = None  # azure: "2024-10-21" (deployments paths) or "v1"
    stream_usage: StreamUsage = "inject"
    headers: dict[str, str] = {}
    timeouts: Timeouts = Timeouts()
    max_tokens: int = 4096  # anthropic: the max_tokens sent when the client sets none
    # anthropic: the `anthropic-beta` flags forwarded from Messages clients (None: all of them;
    # a list: only those, for servers that refuse flags they do not know); others are dropped
    betas: list[str] | None = None


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    provider: str
    model: str | None = None  # None: the client's model name, passed through
    weight: float = 1.0


class Backoff(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    base: float = 0.2
    max: float = 5.0


class Cooldown(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    failures: int = 3
    seconds: float = 30.0


class Routing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    retries: int = 2
    backoff: Backoff = Backoff()
    cooldown: Cooldown = Cooldown()
    deadline: float = 60.0


class RouteCache(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A model's answers cached (cache.py): for `ttl` seconds, per tenant or for everyone."""

    ttl: Annotated[int, msgspec.Meta(gt=0, le=365 * 86_400)]
    scope: Literal["tenant", "global"] = "tenant"


class ModelRoute(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One public model name (or fnmatch pattern): its targets, fallbacks, any routing setting
    it overrides (None: the file's `routing` default), and its response cache (None: off)."""

    targets: list[Target]
    fallbacks: list[str] = []
    retries: int | None = None
    backoff: Backoff | None = None
    cooldown: Cooldown | None = None
    deadline: float | None = None
    cache: RouteCache | None = None


class ModelsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    providers: dict[str, Provider]
    models: dict[str, ModelRoute]
    routing: Routing = Routing()
    default_provider: str | None = None


class ModelTable:
    """The checked file, with provider keys read and lookups by public name."""

    def __init__(
        self, file: ModelsFile, api_keys: dict[str, str | None], *, single: bool = False
    ) -> None:
        self.file = file
        self.api_keys = api_keys  # provider name -> key (None: the provider takes none)
        # No MODELS_FILE: the one upstream's answers, errors included, pass through as they are.
        self.single = single
        self._patterns = [(name, route) for name, route in file.models.items() if _is_pattern(name)]

    @property
    def public_names(self) -> list[str]:
        """The model names clients may send as they are (patterns excluded)."""
        return [name for name in self.file.models if not _is_pattern(name)]

    @property
    def has_patterns(self) -> bool:
        return bool(self._patterns)

    def route(self, model: str) -> ModelRoute | None:
        """The route of a public model name: the exact name first, then patterns in file order."""
        named = self.named_route(model)
        return None if named is None else named[1]

    def named_route(self, model: str) -> tuple[str, ModelRoute] | None:
        """(the entry's name: `model` itself or the pattern it matched, its route), or None."""
        exact = self.file.models.get(model)
        if exact is not None and not _is_pattern(model):
            return model, exact
        for pattern, route in self._patterns:
            if fnmatch.fnmatchcase(model, pattern):
                return pattern, route
        return None

    def routing(self, route: ModelRoute) -> Routing:
        """The route's effective routing settings: its overrides over the file's defaults."""
        base = self.file.routing
        return Routing(
            retries=base.retries if route.retries is None else route.retries,
            backoff=route.backoff or base.backoff,
            cooldown=route.cooldown or base.cooldown,
            deadline=base.deadline if route.deadline is None else route.deadline,
        )


def load_models_file(path: str, environ: Mapping[str, str] | None = None) -> ModelTable:
    """Read and check `MODELS_FILE`; ConfigError naming the field (or variable) otherwise."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"MODELS_FILE {path!r} cannot be read: {exc.strerror}") from exc
    try:
        file = msgspec.yaml.decode(raw, type=ModelsFile)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"MODELS_FILE {path!r}: {_located(raw, exc)}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"MODELS_FILE {path!r} is not valid YAML: {exc}") from exc
    _check(file)
    return ModelTable(file, _api_keys(file, os.environ if environ is None else environ))


def single_provider(base_url: str, api_key: str | None, timeouts: Timeouts) -> ModelTable:
    """The table of a proxy without MODELS_FILE: one `openai` provider, every model name passed
    through to it, one attempt."""
    provider = Provider(type="openai", base_url=base_url, timeouts=timeouts)
    file = ModelsFile(
        providers={SINGLE_PROVIDER: provider},
        models={"*": ModelRoute(targets=[Target(provider=SINGLE_PROVIDER)])},
        routing=Routing(retries=0, deadline=NO_DEADLINE),
        default_provider=SINGLE_PROVIDER,
    )
    return ModelTable(file, {SINGLE_PROVIDER: api_key}, single=True)


SINGLE_PROVIDER = "openai"
NO_DEADLINE = 365 * 24 * 3600.0  # no deadline: the provider's own timeouts bound the wait


def _check(file: ModelsFile) -> None:
    """What types cannot say: references resolve, numbers are in range, URLs are URLs."""
    for name, provider in file.providers.items():
        at = f"$.providers.{name}"
        if not provider.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"MODELS_FILE {at}.base_url: must be an http(s) URL")
        if provider.type == "azure" and not provider.api_version:
            raise ConfigError(f"MODELS_FILE {at}.api_version: required for type azure")
        if provider.max_tokens < 1:
            raise ConfigError(f"MODELS_FILE {at}.max_tokens: must be >= 1")
        for field in ("connect", "read", "first_token"):
            value = getattr(provider.timeouts, field)
            if value is not None and value <= 0:
                raise ConfigError(f"MODELS_FILE {at}.timeouts.{field}: must be > 0")
    _check_routing(file.routing, "$.routing")
    for name, route in file.models.items():
        at = f"$.models.{name}"
        if not route.targets:
            raise ConfigError(f"MODELS_FILE {at}.targets: at least one target")
        for i, target in enumerate(route.targets):
            if target.provider not in file.providers:
                raise ConfigError(
                    f"MODELS_FILE {at}.targets[{i}].provider: no provider {target.provider!r}"
                )
            if target.weight <= 0:
                raise ConfigError(f"MODELS_FILE {at}.targets[{i}].weight: must be > 0")
        for i, fallback in enumerate(route.fallbacks):
            if fallback == name or fallback not in file.models or _is_pattern(fallback):
                raise ConfigError(
                    f"MODELS_FILE {at}.fallbacks[{i}]: {fallback!r} is not another model name"
                )
        overrides = Routing(
            retries=route.retries if route.retries is not None else 0,
            backoff=route.backoff or Backoff(),
            cooldown=route.cooldown or Cooldown(),
            deadline=route.deadline if route.deadline is not None else 1.0,
        )
        _check_routing(overrides, at)
    default = file.default_provider
    if default is not None and default not in file.providers:
        raise ConfigError(f"MODELS_FILE $.default_provider: no provider {default!r}")
    if default is not None and file.providers[default].type == "anthropic":
        raise ConfigError(
            "MODELS_FILE $.default_provider: OpenAI API pass-through needs an openai or azure "
            f"provider; {default!r} is anthropic"
        )


def _located(raw: bytes, error: msgspec.ValidationError) -> str:
    """msgspec says `$.models[...]` for a mistake inside a mapping entry: find the entry, so
    the message names it (`$.models.gpt-4o.targets[0]`)."""
    message = str(error)
    document = msgspec.yaml.decode(raw)
    for section, kind in (("providers", Provider), ("models", ModelRoute)):
        entries = document.get(section) if isinstance(document, dict) else None
        if f"$.{section}[...]" not in message or not isinstance(entries, dict):
            continue
        for name, value in entries.items():
            try:
                msgspec.convert(value, type=kind)
            except msgspec.ValidationError as inner:
                return str(inner).replace("`$", f"`$.{section}.{name}")
    return message


def _check_routing(routing: Routing, at: str) -> None:
    if routing.retries < 0:
        raise ConfigError(f"MODELS_FILE {at}.retries: must be >= 0")
    if not 0 < routing.backoff.base <= routing.backoff.max:
        raise ConfigError(f"MODELS_FILE {at}.backoff: need 0 < base <= max")
    if routing.cooldown.failures < 1 or routing.cooldown.seconds < 0:
        raise ConfigError(f"MODELS_FILE {at}.cooldown: need failures >= 1 and seconds >= 0")
    if routing.deadline <= 0:
        raise ConfigError(f"MODELS_FILE {at}.deadline: must be > 0")


def _api_keys(file: ModelsFile, environ: Mapping[str, str]) -> dict[str, str | None]:
    keys: dict[str, str | None] = {}
    for name, provider in file.providers.items():
        if provider.api_key_env is None:
            keys[name] = None
            continue
        value = environ.get(provider.api_key_env, "").strip()
        if not value:
            raise ConfigError(
                f"MODELS_FILE $.providers.{name}.api_key_env: {provider.api_key_env} is not set"
            )
        keys[name] = value
    return keys


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")
