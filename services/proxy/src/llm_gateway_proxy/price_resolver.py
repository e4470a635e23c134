"""`python -m llm_gateway_proxy.price_resolver`: per-token rates from genai-prices, in a process
of its own (the proxy never imports genai-prices: ~41 MB and ~175 µs a price).

Reads `{"models": [[genai-prices provider id, model name, base URL or null], ...]}` on stdin and
writes `{"source": "genai-prices <version>", "prices": [[provider, model, regimes or null], ...]}`
on stdout, in the same order. A base URL (an openai-type provider's) is matched first against
genai-prices' providers' API patterns, so that `deepseek-chat` at https://api.deepseek.com is
DeepSeek's price; a URL no pattern matches (a self-hosted server, a test's fake) falls back to
the provider id. `regimes` are `[[above, input, cache_read, cache_write, output], ...]`: the US
dollars per token (decimal strings, exact) that apply when the request's input tokens (cached ones
included) exceed `above` (the first regime has `above` -1: every request); a request is priced
by the last regime it exceeds, as genai-prices prices its >200k tiers (a cliff: every token of
the request at the tier's rates).

The rates are not read from genai-prices' data structures but measured through its own
`calc_price`, inside each regime: the cost of a base request, and what adding `_PROBE` tokens of
each kind adds to it. Prices are linear within a regime, so `prices.Rates.cost` then gives what
`calc_price` would, with plain arithmetic (tests/proxy/test_prices.py checks that on a grid).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

_PROBE = 1000  # tokens added per probe: small next to the gap between tiers (200k)


def resolve(
    models: list[tuple[str, str]] | list[tuple[str, str, str | None]], now: datetime | None = None
) -> dict[str, Any]:
    import genai_prices  # noqa: PLC0415  (only here: this process exists to import it)
    from genai_prices import data_snapshot  # noqa: PLC0415

    moment = now or datetime.now(UTC)
    snapshot = data_snapshot.get_snapshot()
    prices: list[list[Any]] = []
    for provider, model, *rest in models:
        url = rest[0] if rest else None
        found_pair = _find(snapshot, provider, model, url)
        if found_pair is None:
            prices.append([provider, model, None])
            continue
        found, info = found_pair

        def cost(info: Any = info, found: Any = found, **usage: int) -> Decimal:
            result = info.calc_price(genai_prices.Usage(**usage), found,
                                     genai_request_timestamp=moment)  # fmt: skip
            return Decimal(result.total_price)

        starts = sorted(_tier_starts(info.get_prices(moment)))
        regimes = []
        for above in [-1, *starts]:
            base = above + 1 if above >= 0 else _PROBE
            zero = cost(input_tokens=base)
            rate_in = (cost(input_tokens=base + _PROBE) - zero) / _PROBE
            more = base + _PROBE
            read = (cost(input_tokens=more, cache_read_tokens=_PROBE) - zero) / _PROBE
            write = (cost(input_tokens=more, cache_write_tokens=_PROBE) - zero) / _PROBE
            out = (cost(input_tokens=base, output_tokens=_PROBE) - zero) / _PROBE
            regimes.append([above, *(str(rate.normalize()) for rate in (rate_in, read, write,
                                                                          out))])  # fmt: skip
        prices.append([provider, model, regimes])
    return {"source": f"genai-prices {genai_prices.__version__}", "prices": prices}


def _find(snapshot: Any, provider: str, model: str, url: str | None) -> tuple[Any, Any] | None:
    """genai-prices' (provider, model): by the base URL's vendor first, then by the id."""
    for provider_id, api_url in ((None, url), (provider, None)):
        if provider_id is None and api_url is None:
            continue
        try:
            found: tuple[Any, Any] = snapshot.find_provider_model(model, None, provider_id, api_url)
        except LookupError:
            continue
        return found
    return None


def _tier_starts(model_price: Any) -> set[int]:
    """The input-token thresholds of every tiered price of the model (its >200k tiers)."""
    starts: set[int] = set()
    for name in ("input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok"):
        value = getattr(model_price, name, None)
        for tier in getattr(value, "tiers", None) or ():
            starts.add(int(tier.start))
    return starts


def main() -> None:
    request = msgspec.json.decode(sys.stdin.buffer.read())
    models = [(str(entry[0]), str(entry[1]), None if len(entry) < 3 or entry[2] is None
               else str(entry[2])) for entry in request["models"]]  # fmt: skip
    sys.stdout.buffer.write(msgspec.json.encode(resolve(models)))


if __name__ == "__main__":
    main()
