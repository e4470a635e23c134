"""Prices: the rates genai-prices gives, priced by our arithmetic, against hand-computed figures
and against genai-prices' own `calc_price`; PRICES_FILE overrides; and priced events from a
real proxy (a price known, a model without one)."""

from __future__ import annotations

import asyncio
import itertools
from decimal import Decimal
from pathlib import Path

import aiohttp
import genai_prices
import pytest
import redis.asyncio as aioredis
import yaml

from llm_gateway_common.config import ConfigError
from llm_gateway_fakes.openai import FakeOpenAI
from llm_gateway_proxy.price_resolver import resolve
from llm_gateway_proxy.prices import (
    OVERRIDE,
    PENDING,
    Price,
    PriceBook,
    Rates,
    load_prices_file,
    nano_usd,
)
from llm_gateway_proxy.usage import Usage
from tests.conftest import UPSTREAM_KEY, ProxyFactory
from tests.support.events import event_for

SOURCE = f"genai-prices {genai_prices.__version__}"
M = Decimal(1_000_000)


def resolved(provider: str, model: str) -> Price:
    answer = resolve([(provider, model)])
    ((_, _, regimes),) = answer["prices"]
    assert regimes is not None, (provider, model)
    return Price(tuple(Rates(int(r[0]), *(Decimal(v) for v in r[1:])) for r in regimes),
                 answer["source"])  # fmt: skip


def test_openai_with_cache_reads_by_hand() -> None:
    """gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per million tokens."""
    price = resolved("openai", "gpt-4o-mini")
    assert price.source == SOURCE
    usage = Usage(prompt=12_000, completion=700, total=12_700, cached=2_000)
    expected = 10_000 * Decimal("0.15") / M + 2_000 * Decimal("0.075") / M + 700 * Decimal(
        "0.60"
    ) / M  # fmt: skip
    assert price.cost(usage) == expected == Decimal("0.00207")


def test_azure_is_priced_by_the_model_that_answered() -> None:
    """Azure's gpt-4o (a dated snapshot, as Azure reports it): $2.50 / $1.25 / $10."""
    price = resolved("azure", "gpt-4o-2024-08-06")
    usage = Usage(prompt=1_000, completion=100, total=1_100, cached=400)
    assert price.cost(usage) == Decimal("0.0015") + Decimal("0.0005") + Decimal("0.001")


def test_anthropic_cache_writes_and_the_200k_cliff_by_hand() -> None:
    """claude-sonnet-4-5: $3 input, $0.30 cache read, $3.75 cache write, $15 output; past 200k
    input tokens every token at $6 / $0.60 / $7.50 / $22.50."""
    price = resolved("anthropic", "claude-sonnet-4-5")
    below = Usage(prompt=150_000, completion=1_000, total=151_000, cached=100_000,
                  cache_write=20_000)  # fmt: skip
    assert price.cost(below) == (
        30_000 * Decimal(3) + 100_000 * Decimal("0.30") + 20_000 * Decimal("3.75")
        + 1_000 * Decimal(15)
    ) / M  # fmt: skip
    assert price.cost(below) == Decimal("0.21")
    at_the_edge = Usage(prompt=200_000, completion=10, total=200_010)
    assert price.cost(at_the_edge) == Decimal("0.60015")
    above = Usage(prompt=300_000, completion=10, total=300_010, cached=100_000,
                  cache_write=50_000)  # fmt: skip
    assert price.cost(above) == (
        150_000 * Decimal(6) + 100_000 * Decimal("0.60") + 50_000 * Decimal("7.50")
        + 10 * Decimal("22.50")
    ) / M == Decimal("1.335225")  # fmt: skip


@pytest.mark.parametrize(("provider", "model"), [
    ("openai", "gpt-4o-mini"), ("openai", "gpt-4.1"), ("azure", "gpt-4o-2024-08-06"),
    ("anthropic", "claude-sonnet-4-5"), ("anthropic", "claude-3-5-haiku-latest"),
])  # fmt: skip
def test_our_arithmetic_gives_what_calc_price_gives(provider: str, model: str) -> None:
    """The rates are measured through calc_price; priced back, they agree with it exactly on a
    grid of usages, tiers included."""
    price = resolved(provider, model)
    for prompt, cached, written, completion in itertools.product(
        (0, 1, 999, 150_000, 200_000, 200_001, 450_000), (0, 7, 50_000), (0, 3, 40_000),
        (0, 1, 4_321),
    ):  # fmt: skip
        if cached + written > prompt:
            continue
        theirs = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=prompt, cache_read_tokens=cached,
                               cache_write_tokens=written, output_tokens=completion),
            model, provider_id=provider,
        ).total_price  # fmt: skip
        ours = price.cost(Usage(prompt, completion, prompt + completion, cached, 0, written))
        assert ours == theirs, (model, prompt, cached, written, completion)


def test_a_model_genai_prices_does_not_know_has_no_price() -> None:
    assert resolve([("openai", "llama-3-70b-local")])["prices"] == [
        ["openai", "llama-3-70b-local", None]
    ]


def test_nano_dollars_round_half_to_even() -> None:
    assert nano_usd(Decimal("0.0000000015")) == 2
    assert nano_usd(Decimal("0.0000000025")) == 2
    assert nano_usd(Decimal("12.345678901")) == 12_345_678_901


def write_prices(tmp_path: Path, entries: list[dict[str, object]]) -> str:
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump({"prices": entries}))
    return str(path)


async def test_overrides_match_first_by_provider_name_or_type_and_model_pattern(
    tmp_path: Path,
) -> None:
    path = write_prices(tmp_path, [
        {"provider": "local-vllm", "model": "llama-*", "input_per_mtok": 0.10,
         "cached_input_per_mtok": 0.01, "cache_write_per_mtok": 0.125, "output_per_mtok": 0.20},
        {"provider": "local-vllm", "model": "*", "input_per_mtok": 0, "output_per_mtok": 0},
        {"provider": "openai", "model": "gpt-4o-mini", "input_per_mtok": 0.12,
         "output_per_mtok": 0.48},
    ])  # fmt: skip
    book = PriceBook(load_prices_file(path))
    llama = book.quote("local-vllm", "openai", ["llama-3-70b"])
    assert isinstance(llama, Price) and llama.source == OVERRIDE
    usage = Usage(prompt=1_000_000, completion=1_000_000, total=2_000_000, cached=200_000,
                  cache_write=100_000)  # fmt: skip
    assert llama.cost(usage) == Decimal("0.07") + Decimal("0.002") + Decimal("0.0125") + Decimal(
        "0.20"
    )  # fmt: skip
    free = book.quote("local-vllm", "openai", ["mistral-7b"])
    assert isinstance(free, Price) and free.cost(usage) == 0
    negotiated = book.quote("openai-us", "openai", ["gpt-4o-mini"])  # by type
    assert isinstance(negotiated, Price) and negotiated.source == OVERRIDE
    cache_at_input_rate = Usage(prompt=1_000_000, completion=0, total=1_000_000, cached=500_000)
    assert negotiated.cost(cache_at_input_rate) == Decimal("0.12")
    await book.close()


async def test_names_not_overridden_wait_for_one_resolution(tmp_path: Path) -> None:
    book = PriceBook()
    assert book.quote("openai", "openai", ["gpt-4o-mini"]) is PENDING
    assert book.quote("openai", "openai", ["gpt-4o-mini"]) is PENDING  # one resolution
    price = await asyncio.wait_for(book.settle("openai", "openai", ["gpt-4o-mini"]), 30)
    assert isinstance(price, Price) and price.source == SOURCE
    assert book.quote("openai", "openai", ["gpt-4o-mini"]) == price  # now a dict lookup
    # The first name with a price wins: an Azure deployment name, then the model that answered.
    await book.prime([("azure-eu", "azure.ai.openai", "prod-deployment"),
                      ("azure-eu", "azure.ai.openai", "gpt-4o")])  # fmt: skip
    azure = book.quote("azure-eu", "azure.ai.openai", ["prod-deployment", "gpt-4o"])
    assert isinstance(azure, Price) and azure.regimes[0].output == Decimal(10) / M
    assert book.quote("x", "some.other.provider", ["gpt-4o"]) is None  # no prices for it
    await book.close()


async def test_openai_compatible_vendors_are_priced_by_their_base_url() -> None:
    """DeepSeek's and Groq's list prices (USD per million tokens: deepseek-chat 0.27 input,
    0.07 cache hit, 1.10 output; llama-3.1-8b-instant 0.05 input, 0.08 output), found because
    the entry's base URL names the vendor; a URL no vendor has (a self-hosted server) falls back
    to the type's, and without a URL a vendor's model is not OpenAI's."""
    book = PriceBook(urls={"deepseek": "https://api.deepseek.com/v1",
                           "groq": "https://api.groq.com/openai/v1",
                           "vllm": "http://vllm.models.svc:8000/v1"})  # fmt: skip
    usage = Usage(prompt=1_000_000, completion=100_000, total=1_100_000, cached=200_000)
    deepseek = await asyncio.wait_for(book.settle("deepseek", "openai", ["deepseek-chat"]), 30)
    assert isinstance(deepseek, Price) and deepseek.source == SOURCE
    assert deepseek.cost(usage) == Decimal("0.216") + Decimal("0.014") + Decimal("0.11")
    groq = await asyncio.wait_for(book.settle("groq", "openai", ["llama-3.1-8b-instant"]), 30)
    assert isinstance(groq, Price)
    assert groq.cost(usage) == Decimal("0.05") + Decimal("0.008")  # Groq prices no cache hits
    mini = await asyncio.wait_for(book.settle("vllm", "openai", ["gpt-4o-mini"]), 30)
    assert isinstance(mini, Price) and mini.regimes[0].output == Decimal("0.60") / M
    unnamed = await asyncio.wait_for(book.settle("other", "openai", ["deepseek-chat"]), 30)
    assert unnamed is None
    await book.close()


def test_a_bad_prices_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a finite number >= 0"):
        load_prices_file(write_prices(tmp_path, [{"provider": "x", "input_per_mtok": -1}]))
    with pytest.raises(ConfigError, match="PRICES_FILE"):
        load_prices_file(write_prices(tmp_path, [{"provider": "x", "input_mtok": 1}]))


async def test_events_carry_the_price_and_a_model_without_one_is_null(
    proxy_factory: ProxyFactory, upstream: FakeOpenAI, http: aiohttp.ClientSession,
    redis: aioredis.Redis, tmp_path: Path,
) -> None:  # fmt: skip
    prices = write_prices(tmp_path, [{"provider": "openai", "model": "house-*",
                                      "input_per_mtok": 1, "output_per_mtok": 2}])  # fmt: skip
    proxy = proxy_factory(PRICES_FILE=prices)
    upstream.behaviour.cached_tokens = 2
    url = f"{proxy.base_url}/v1/chat/completions"
    messages = [{"role": "user", "content": "one two three four five"}]
    seen = {}
    for model in ("gpt-4o-mini", "house-model", "llama-3-70b-local"):
        async with http.post(url, json={"model": model, "messages": messages}) as response:
            assert response.status == 200
            seen[model] = await event_for(redis, response.headers["x-llm-request-id"],
                                          deadline=30)  # fmt: skip
    usage = upstream.usages[0]
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    mini = seen["gpt-4o-mini"]
    assert (mini.prompt_tokens, mini.cached_tokens) == (prompt, 2)
    assert mini.cost_usd == ((prompt - 2) * Decimal("0.15") + 2 * Decimal("0.075")
                             + completion * Decimal("0.60")) / M  # fmt: skip
    assert mini.price_source == SOURCE
    house = seen["house-model"]
    assert house.cost_usd == (house.prompt_tokens * 1 + house.completion_tokens * 2) / M
    assert house.price_source == OVERRIDE
    unknown = seen["llama-3-70b-local"]
    assert (unknown.cost_usd, unknown.price_source) == (None, "none")
    assert unknown.total_tokens > 0  # counted, not priced at zero
    assert UPSTREAM_KEY not in proxy.log_text()
