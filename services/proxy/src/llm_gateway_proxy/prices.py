"""What a request cost: exact per-token rates per (provider, model), priced with plain arithmetic.

Where rates come from, first match wins:
  1. `PRICES_FILE` (YAML `prices:` list): `provider` is a provider's name in MODELS_FILE or a
     provider type, `model` an fnmatch pattern of the upstream model; source `override`.
  2. genai-prices (pinned; the one source of truth, upgraded by upgrading the package), asked
     once per (provider type, model) by a child process (`price_resolver`), so that the proxy
     never imports it: at start-up for every model MODELS_FILE names, later for a name first
     seen on a request (pattern routes pass client-chosen names). Source `genai-prices <v>`.
  3. Nothing: `cost_usd` None and source `none`, never a guess (a self-hosted model is $0 only
     when an override says so).

On the request path a known price is a dict lookup and four Decimal products (about 2 µs). A name
not resolved yet makes the event wait, off the request path, for its one resolution (bounded by
`resolve_timeout`), so that the first request of a new model is priced like the others.
"""

from __future__ import annotations

import asyncio
import fnmatch
import sys
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import NamedTuple

import msgspec
import structlog

from llm_gateway_common.config import ConfigError
from llm_gateway_proxy.modelconfig import ModelTable
from llm_gateway_proxy.providers.adapters import OTEL_NAMES
from llm_gateway_proxy.usage import Usage

log = structlog.get_logger("llm_gateway.proxy")

OVERRIDE = "override"
NO_PRICE = "none"
_MTOK = Decimal(1_000_000)
_NANO = Decimal(1_000_000_000)
# The event's provider (OpenTelemetry's name) -> genai-prices' provider id.
GENAI_PROVIDERS = {"openai": "openai", "azure.ai.openai": "azure", "anthropic": "anthropic"}


class Rates(NamedTuple):
    """US dollars per token, for requests whose input tokens exceed `above`."""

    above: int
    input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    output: Decimal


class Price(NamedTuple):
    regimes: tuple[Rates, ...]  # by `above`, ascending; the first has above -1
    source: str

    def cost(self, usage: Usage) -> Decimal:
        """The exact price of a request's tokens: `prompt` includes cache reads and writes."""
        rates = self.regimes[0]
        for regime in self.regimes[1:]:
            if usage.prompt > regime.above:
                rates = regime
        uncached = max(usage.prompt - usage.cached - usage.cache_write, 0)
        return (
            uncached * rates.input
            + usage.cached * rates.cache_read
            + usage.cache_write * rates.cache_write
            + usage.completion * rates.output
        )


def nano_usd(cost: Decimal) -> int:
    """A cost in integer billionths of a dollar, as Redis counters sum it (half to even)."""
    return int((cost * _NANO).to_integral_value(ROUND_HALF_EVEN))


class PriceOverride(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One PRICES_FILE entry, in US dollars per million tokens. Cache reads and writes priced
    at `input_per_mtok` unless given."""

    provider: str
    model: str = "*"
    input_per_mtok: Decimal = Decimal(0)
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    output_per_mtok: Decimal = Decimal(0)

    def price(self) -> Price:
        per_token = self.input_per_mtok / _MTOK
        read = self.cached_input_per_mtok
        write = self.cache_write_per_mtok
        return Price((Rates(-1, per_token,
                            per_token if read is None else read / _MTOK,
                            per_token if write is None else write / _MTOK,
                            self.output_per_mtok / _MTOK),), OVERRIDE)  # fmt: skip


class _PricesFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    prices: list[PriceOverride] = []


def load_prices_file(path: str) -> tuple[PriceOverride, ...]:
    try:
        entries = msgspec.yaml.decode(Path(path).read_bytes() or b"{}", type=_PricesFile).prices
    except (OSError, msgspec.DecodeError) as exc:
        raise ConfigError(f"PRICES_FILE {path}: {exc}") from exc
    for entry in entries:
        rates = (entry.input_per_mtok, entry.cached_input_per_mtok, entry.cache_write_per_mtok,
                 entry.output_per_mtok)  # fmt: skip
        if any(rate is not None and (rate < 0 or not rate.is_finite()) for rate in rates):
            raise ConfigError(f"PRICES_FILE {path}: {entry.provider}/{entry.model}: a price "
                              "must be a finite number >= 0")  # fmt: skip
    return tuple(entries)


def priced_targets(table: ModelTable) -> list[tuple[str, str, str]]:
    """(provider entry, its type's OpenTelemetry name, upstream model) of every target that
    names its model: resolved at start-up."""
    triples = {
        (target.provider, OTEL_NAMES[table.file.providers[target.provider].type], target.model)
        for route in table.file.models.values()
        for target in route.targets
        if target.model
    }
    return sorted(triples)


def provider_urls(table: ModelTable) -> dict[str, str]:
    """The base URL of each `openai`-type provider entry: genai-prices tells the vendor behind
    an OpenAI-compatible API (DeepSeek, Groq, Mistral, ...) by it."""
    return {name: p.base_url for name, p in table.file.providers.items() if p.type == "openai"}


# What genai-prices is asked for one price: (provider id, model, the provider's base URL or None).
_Key = tuple[str, str, str | None]


class _Pending:
    """A name whose genai-prices resolution is under way."""


PENDING = _Pending()
Quote = Price | None | _Pending


class PriceBook:
    def __init__(self, overrides: Sequence[PriceOverride] = (), *, resolve_timeout: float = 20.0,
                 urls: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self._overrides = tuple(overrides)
        self._timeout = resolve_timeout
        self._urls = dict(urls or {})  # openai-type provider entry -> base URL (provider_urls)
        self._quotes: dict[tuple[str | None, str, str], Price | None] = {}
        self._resolved: dict[_Key, Price | None] = {}
        self._waiting: dict[_Key, asyncio.Future[Price | None]] = {}
        self._queued: list[_Key] = []
        self._resolver: asyncio.Task[None] | None = None

    def quote(self, provider_name: str | None, provider: str, names: Iterable[str | None]) -> Quote:
        """The price of the first of `names` (upstream model, response model, public model) that
        has one; PENDING while one before it is being resolved. Never blocks."""
        for name in names:
            if not name:
                continue
            key = (provider_name, provider, name)
            if key in self._quotes:
                price = self._quotes[key]
            else:
                price = self._override(provider_name, provider, name)
                if price is None:
                    found = self._genai(self._key(provider_name, provider, name))
                    if isinstance(found, _Pending):
                        return PENDING
                    price = found
                self._quotes[key] = price
            if price is not None:
                return price
        return None

    async def settle(self, provider_name: str | None, provider: str,
                     names: Sequence[str | None]) -> Price | None:  # fmt: skip
        """`quote`, once the resolutions it waits for are done (or timed out: no price)."""
        while isinstance(quote := self.quote(provider_name, provider, names), _Pending):
            keys = [self._key(provider_name, provider, name) for name in names if name]
            waits = [self._waiting[key] for key in keys if key is not None and key in self._waiting]
            if not waits:
                continue
            await asyncio.wait(waits)
        return quote

    async def prime(self, targets: Iterable[tuple[str | None, str, str]]) -> None:
        """Resolve these (provider entry, provider, model) now: the models file's targets."""
        for provider_name, provider, model in targets:
            self._genai(self._key(provider_name, provider, model))
        waits = list(self._waiting.values())
        if waits:
            await asyncio.wait(waits)

    async def close(self) -> None:
        """Stop resolving; whatever still waits gets no price."""
        if self._resolver is not None and not self._resolver.done():
            self._resolver.cancel()
        for future in self._waiting.values():
            if not future.done():
                future.set_result(None)

    def _key(self, provider_name: str | None, provider: str, name: str) -> _Key | None:
        """What genai-prices is asked: its provider id, the model, and for an openai-type
        entry its base URL (which names the vendor when it is not OpenAI); None: not asked."""
        genai = GENAI_PROVIDERS.get(provider)
        if genai is None:
            return None
        url = self._urls.get(provider_name) if provider_name and genai == "openai" else None
        return (genai, name, url)

    def _override(self, provider_name: str | None, provider: str, name: str) -> Price | None:
        for entry in self._overrides:
            if entry.provider in (provider_name, provider, GENAI_PROVIDERS.get(provider)) and (
                fnmatch.fnmatchcase(name, entry.model)
            ):
                return entry.price()
        return None

    def _genai(self, key: _Key | None) -> Price | _Pending | None:
        if key is None:
            return None
        if key in self._resolved:
            return self._resolved[key]
        if key not in self._waiting:
            self._waiting[key] = asyncio.get_running_loop().create_future()
            self._queued.append(key)
            if self._resolver is None or self._resolver.done():
                self._resolver = asyncio.create_task(self._resolve_queued(), name="prices")
        return PENDING

    async def _resolve_queued(self) -> None:
        await asyncio.sleep(0.01)  # names first seen together go in one child process
        while self._queued:
            batch, self._queued = self._queued, []
            found = await self._run_resolver(batch)
            for key in batch:
                price = found.get(key)
                self._resolved[key] = price
                future = self._waiting.pop(key)
                if not future.done():
                    future.set_result(price)

    async def _run_resolver(self, batch: list[_Key]) -> dict[_Key, Price]:
        request = msgspec.json.encode({"models": batch})
        try:
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "llm_gateway_proxy.price_resolver",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            log.warning("prices_unavailable", error=str(exc), models=len(batch))
            return {}
        try:
            out, err = await asyncio.wait_for(child.communicate(request), self._timeout)
        except TimeoutError:
            child.kill()
            await child.wait()
            log.warning("prices_unavailable", error="resolver timed out", models=len(batch))
            return {}
        if child.returncode != 0:
            log.warning("prices_unavailable", error=err.decode(errors="replace")[-500:],
                        models=len(batch))  # fmt: skip
            return {}
        answer = msgspec.json.decode(out)
        source = str(answer["source"])
        prices: dict[_Key, Price] = {}
        for key, (_, _, regimes) in zip(batch, answer["prices"], strict=True):
            if regimes is not None:
                prices[key] = Price(
                    tuple(Rates(int(r[0]), *(Decimal(v) for v in r[1:])) for r in regimes),
                    source,
                )
        unpriced = [f"{key[0]}/{key[1]}" for key in batch if key not in prices]
        log.info("prices_resolved", source=source, priced=len(prices),
                 unpriced=unpriced[:20])  # fmt: skip
        return prices
