"""The usage event: one per gateway request, the only thing that crosses services.

Schema evolution follows msgspec's rules: new fields always get a default, existing fields never
change type or meaning, and `schema_version` is bumped when fields are added. Consumers decode
with `decode_event`, which ignores fields it does not know, so an older consumer can read a newer
producer's events.

Open vocabularies (`outcome`, `usage_source`) are plain strings on the wire and in the Struct, so
that a value added by a newer producer (say an outcome `fallback`, a usage source `cache`)
decodes everywhere instead of failing validation and being dead-lettered by every consumer not
yet upgraded. `Outcome` and `UsageSource` are the values this version produces (for producers to
type-check against); consumers must handle any other string, and `UsageEvent.failed` says how.

Schema 2 (routing across providers) added `provider_name`, `upstream_model`, `attempts` and
`failed_targets`, and settled what `provider` holds: the provider's type as OpenTelemetry's
`gen_ai.provider.name` names it (`openai`, `azure.ai.openai`, `anthropic`), which is what schema
1's `openai` already was. A schema 1 event decodes with the new fields at their defaults: no
provider entry or upstream model known, no attempt recorded, no target failed.

Schema 3 (traces) added `trace_id`: the W3C trace id (32 lowercase hex) of the request's span
when the proxy traces, else of the client's own `traceparent` when it sent a valid one, else
None. A schema 2 event decodes with it None.

Schema 4 (cost) added `cache_write_tokens` (prompt tokens written to a provider's prompt cache:
Anthropic's cache creation, Bedrock's cache writes; part of `prompt_tokens`, as `cached_tokens`,
the cache reads, are), `cost_usd` (the request's price in US dollars, a JSON number carried as a
`Decimal` so that it is exact; None when no price is known, never a guess) and `price_source`
(`genai-prices <version>`, `override` for a PRICES_FILE entry, `none`). A schema 3 event decodes
unpriced: no cache writes, cost None, source `none`.

Schema 5 (coding sessions) added `session_id`: the client's coding-agent session id, as Claude
Code sends it in `X-Claude-Code-Session-Id` on every request of a session, cut to 256
characters; None when the client sent none. A schema 4 event decodes with it None.

Schema 6 (the response cache) added `cache_status`: `hit` (answered from the cache: no provider
called, `usage_source` `cache`, the original answer's tokens, `cost_usd` 0), `miss` (looked up,
not found, forwarded, not stored), `stored` (a miss whose answer was stored), `bypass` (the
request's Cache-Control kept it from the cache), or None (no cache for this request); and
`saved_cost_usd`, what a hit would have cost (the original answer's `cost_usd`; None otherwise).
A schema 5 event decodes with both None.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal, get_args

import msgspec

SCHEMA_VERSION = 6

# What this version produces. The event fields are `str`: never decode against these.
Outcome = Literal["ok", "upstream_error", "gateway_error", "client_disconnected"]
UsageSource = Literal["provider", "estimated", "cache", "none"]
CacheStatus = Literal["hit", "miss", "stored", "bypass"]
KNOWN_OUTCOMES: frozenset[str] = frozenset(get_args(Outcome))
KNOWN_USAGE_SOURCES: frozenset[str] = frozenset(get_args(UsageSource))
FAILED_OUTCOMES: frozenset[str] = KNOWN_OUTCOMES - {"ok"}


class UsageEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=False):
    """One gateway request, as metered. Token counts follow OpenAI's meaning:
    `prompt_tokens` includes `cached_tokens`, `completion_tokens` includes `reasoning_tokens`."""

    event_id: str
    schema_version: int = SCHEMA_VERSION
    request_id: str
    client_request_id: str | None = None
    trace_id: str | None = None  # W3C trace id, 32 hex (schema 3)
    session_id: str | None = None  # X-Claude-Code-Session-Id, <= 256 chars (schema 5)
    upstream_request_id: str | None = None
    tenant: str
    key_id: str | None = None
    user: str | None = None
    endpoint: str
    method: str = "POST"
    provider: str  # the type, as `gen_ai.provider.name`: openai, azure.ai.openai, anthropic
    provider_name: str | None = None  # its entry in the models file, e.g. `azure-eu`
    model: str | None = None  # as the client asked
    upstream_model: str | None = None  # as sent to the provider (for Azure, the deployment)
    response_model: str | None = None  # as the provider answered (e.g. a dated snapshot)
    attempts: int = 0  # upstream attempts made; 0: refused before any (or a schema 1 event)
    failed_targets: tuple[str, ...] = ()  # provider_name of each failed attempt, in order
    stream: bool = False
    status_code: int
    outcome: str  # open vocabulary: KNOWN_OUTCOMES, and whatever a newer producer adds
    error_type: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0  # schema 4: part of prompt_tokens, like cached_tokens
    cost_usd: Decimal | None = None  # schema 4: exact; None when no price is known
    price_source: str = "none"  # schema 4: "genai-prices <version>" | "override" | "none"
    usage_source: str = "none"  # open vocabulary: KNOWN_USAGE_SOURCES, and newer ones
    cache_status: str | None = None  # schema 6: hit | miss | stored | bypass; None: no cache
    saved_cost_usd: Decimal | None = None  # schema 6: a hit's original cost
    started_at: datetime
    finished_at: datetime
    latency_ms: float
    ttfb_ms: float | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    captured_request: str | None = None
    captured_request_truncated: bool = False
    captured_response: str | None = None
    captured_response_truncated: bool = False

    @property
    def failed(self) -> bool:
        """Whether the request failed: a known failing outcome, or, for an outcome this version
        does not know, an HTTP error status (a newer `fallback` that answered 200 succeeded)."""
        if self.outcome in KNOWN_OUTCOMES:
            return self.outcome in FAILED_OUTCOMES
        return self.status_code >= 400


_encoder = msgspec.json.Encoder(decimal_format="number")  # cost_usd a JSON number, exact
_decoder = msgspec.json.Decoder(UsageEvent)


def encode_event(event: UsageEvent) -> bytes:
    """The event as compact JSON, field names as declared."""
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> UsageEvent:
    """Parse and validate one event; raises msgspec.ValidationError/DecodeError if malformed."""
    return _decoder.decode(data)
