"""Which targets a request may go to: the plan the router follows (router.py).

A plan is the steps of one request: the model's own targets, then each of its fallbacks, each
step with its routing settings. Plans are built from the model table once per (API, model name)
and cached: every name the file lists, and up to `PATTERN_PLANS` names patterns matched (names
are at most 256 characters), so clients cannot fill memory with names they make up.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from llm_gateway_proxy.apis import Api
from llm_gateway_proxy.errors import ModelNotFound, NotFound, UnsupportedByProvider
from llm_gateway_proxy.modelconfig import NO_DEADLINE, ModelRoute, ModelTable, Routing
from llm_gateway_proxy.modellist import MODELS_PATHS
from llm_gateway_proxy.providers.adapters import Adapter, adapter_for

PATTERN_PLANS = 4096
_HEADER_SAFE = "/:@._-+~*=!$&'()[],;"


@dataclass(frozen=True, slots=True)
class Choice:
    """One target of a step: a provider entry and the model name sent to it."""

    adapter: Adapter
    model: str | None  # None: the client's own model name (pass-through)
    weight: float
    id: str  # `<provider>/<model>`: cooldowns and X-LLM-Route
    route: bytes  # the X-LLM-Route value (`id`, made safe for a header)


@dataclass(frozen=True, slots=True)
class Step:
    name: str  # the public model name (the client's, or a fallback's)
    choices: tuple[Choice, ...]
    routing: Routing
    cumulative: tuple[float, ...] = ()  # running sums of the weights, for the usual choice


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[Step, ...]
    retrying: bool  # whether the gateway may make more than one attempt


class Planner:
    """The model table's routes as plans, with one adapter per provider entry."""

    def __init__(self, table: ModelTable, forward_account: Sequence[bytes] = ()) -> None:
        self.table = table
        self.adapters = {
            name: adapter_for(name, provider, table.api_keys[name], forward_account)
            for name, provider in table.file.providers.items()
        }
        default = table.file.default_provider
        self._default = None if default is None else self._passthrough_step(default)
        # What an event names as its provider before any attempt (a refused request).
        self.default_provider = "none" if default is None else self.adapters[default].otel_name
        self._plans: dict[tuple[str, str], Plan] = {}

    @property
    def has_default(self) -> bool:
        return self._default is not None

    def lists_models(self, method: str, pattern: str) -> bool:
        """Whether the gateway answers this models request itself (it has a model table)."""
        return method == "GET" and pattern in MODELS_PATHS and not self.table.single

    def plan(self, api: Api | None, model: str | None) -> Plan:
        """The steps for a request: 404 for an unknown model, 400 when no target can serve the
        API; a pass-through path (api None) goes to the default provider, once."""
        if api is None:
            if self._default is None:
                raise NotFound("This gateway routes no other /v1 path (no default_provider).")
            return Plan((self._default,), retrying=False)
        assert model is not None
        plan = self._plans.get((api.path, model))
        if plan is None:
            plan = self._plan(api, model)
            if model in self.table.file.models or len(self._plans) < PATTERN_PLANS:
                self._plans[(api.path, model)] = plan
        return plan

    def _plan(self, api: Api, model: str) -> Plan:
        named = self.table.named_route(model)
        if named is None:
            raise ModelNotFound(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
            )
        entry, route = named
        steps = [self._step(model, entry, route, api)]
        models = self.table.file.models
        steps += [self._step(name, name, models[name], api) for name in route.fallbacks]
        served = tuple(step for step in steps if step.choices)
        if not served:
            raise UnsupportedByProvider(
                f"The model `{model}` is served by providers that cannot answer {api.path}.",
                param="model",
            )
        retrying = len(served) > 1 or served[0].routing.retries > 0
        return Plan(served, retrying=retrying and not self.table.single)

    def _step(self, name: str, entry: str, route: ModelRoute, api: Api) -> Step:
        """`name`: the model name asked for; `entry`: the file's name for it (a pattern's, for
        a name it matched), which names the target in cooldowns: a bounded set of targets."""
        choices = []
        for target in route.targets:
            adapter = self.adapters[target.provider]
            if adapter.serves(api):
                model = target.model or name
                target_id = f"{target.provider}/{target.model or entry}"
                header = route_header(target.provider, model)
                choices.append(Choice(adapter, model, target.weight, target_id, header))
        weights = tuple(itertools.accumulate(c.weight for c in choices))
        return Step(name, tuple(choices), self.table.routing(route), weights)

    def _passthrough_step(self, provider: str) -> Step:
        choice = Choice(self.adapters[provider], None, 1.0, f"{provider}/*", b"")
        return Step("*", (choice,), Routing(retries=0, deadline=NO_DEADLINE), (1.0,))


def route_header(provider: str, model: str) -> bytes:
    """The X-LLM-Route value. The model may be the client's (a pattern route passes its name
    through): anything but printable ASCII is percent-encoded, never sent raw."""
    return quote(f"{provider}/{model}", safe=_HEADER_SAFE).encode("ascii")
