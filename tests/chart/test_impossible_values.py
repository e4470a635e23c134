"""Values that cannot work stop the install with a message naming what to change (`fail` in
templates/_validate.tpl), instead of pods that crash-loop or silently lose events."""

from __future__ import annotations

import re

import helm_python as helm
import pytest

from tests.chart.conftest import RenderChart
from tests.chart.rendering import Values, merged
from tests.chart.scenarios import KEYS_FILE, MANAGEMENT_TOKEN, MINIMAL, MODELS, NO_AUTH, REDIS

NO_REDIS = "no Redis configured"
NO_GATEWAY_KEYS = "proxy.auth.mode=keys needs gateway keys"
A_SECRET = {"existingSecret": "s", "key": "k"}


def _provider_keys(**changes: Values | None) -> Values:
    """scenarios.MODELS with some of proxy.providerKeys changed (None removes one)."""
    values = merged(MINIMAL, MODELS)
    keys = values["proxy"]["providerKeys"]
    for name, secret in changes.items():
        if secret is None:
            del keys[name]
        else:
            keys[name] = secret
    return values


def _openai_key_env(variable: str) -> Values:
    return {"proxy": {"models": {"providers": {"openai": {"api_key_env": variable}}}}}


CASES: dict[str, tuple[Values, str]] = {
    "one port for both proxy listeners": (
        merged(MINIMAL, {"proxy": {"containerPort": 8090}}),
        "proxy.containerPort and proxy.management.containerPort are both 8090",
    ),
    "nothing configured": (
        {},
        f"{NO_REDIS} (the proxy writes usage events to it and the "
        "collector reads them). Set redis.host",
    ),
    "dispatcher without Redis": (
        {"dispatcher": {"enabled": True}},
        f"{NO_REDIS} (the proxy writes usage events to it and the collector and the "
        "dispatcher read them)",
    ),
    "postgres sink without a database secret": (
        merged(MINIMAL, {"collector": {"sink": "postgres"}}),
        "collector.sink=postgres needs DATABASE_URL: set collector.postgres.existingSecret",
    ),
    "lunary without an API key": (
        merged(MINIMAL, {"dispatcher": {"enabled": True, "sink": "lunary"}}),
        "dispatcher.sink=lunary needs an API key: set dispatcher.existingSecret",
    ),
    "helicone without an API key": (
        merged(MINIMAL, {"dispatcher": {"enabled": True, "sink": "helicone"}}),
        "dispatcher.sink=helicone needs an API key: set dispatcher.existingSecret",
    ),
    "development Redis and an external one": (
        merged(MINIMAL, {"redis": {"dev": {"enabled": True}}}),
        "redis.dev.enabled=true runs a Redis without a password",
    ),
    "development Redis with a password": (
        {"redis": {"dev": {"enabled": True}, "existingSecret": "redis"}},
        "leave redis.host and redis.existingSecret empty",
    ),
    "URL key without a Secret": (
        {"redis": {"existingSecretUrlKey": "url"}},
        "redis.existingSecretUrlKey names a key in redis.existingSecret",
    ),
    "URL key and a host": (
        merged(MINIMAL, {"redis": {"existingSecret": "r", "existingSecretUrlKey": "url"}}),
        "redis.existingSecretUrlKey provides the whole Redis URL",
    ),
    "password Secret without a key": (
        merged(MINIMAL, {"redis": {"existingSecret": "r", "existingSecretPasswordKey": ""}}),
        "redis.existingSecret needs redis.existingSecretPasswordKey",
    ),
    "gateway keys without a token or a keys file": (
        REDIS,
        f"{NO_GATEWAY_KEYS} to check requests against, or the proxy refuses to start: set "
        "proxy.auth.managementToken.existingSecret",
    ),
    "gateway keys with only the name of a key in a Secret": (
        merged(REDIS, {"proxy": {"auth": {"managementToken": {"key": "token"}}}}),
        "proxy.auth.managementToken.key (token) holds the management API token",
    ),
    "a development management token without createSecrets": (
        merged(MINIMAL, {"dev": {"secrets": {"managementToken": "t0ken"}}}),
        "dev.secrets are only used with dev.createSecrets=true",
    ),
    "dev secrets without createSecrets": (
        merged(MINIMAL, {"dev": {"secrets": {"upstreamApiKey": "sk-live"}}}),
        "dev.secrets are only used with dev.createSecrets=true",
    ),
    "grace period shorter than the shutdown": (
        merged(MINIMAL, {"proxy": {"terminationGracePeriodSeconds": 30}}),
        "proxy.terminationGracePeriodSeconds (30) must exceed proxy.preStopSleepSeconds + "
        "proxy.shutdownGraceSeconds (35)",
    ),
    "autoscaling minimum above maximum": (
        merged(
            MINIMAL,
            {"proxy": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}}},
        ),
        "proxy.autoscaling.minReplicas (5) is above proxy.autoscaling.maxReplicas (3)",
    ),
    "autoscaling without a target": (
        merged(
            MINIMAL,
            {"proxy": {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}}},
        ),
        "proxy.autoscaling.enabled=true needs a target",
    ),
    "disruption budget with both bounds": (
        merged(MINIMAL, {"proxy": {"podDisruptionBudget": {"minAvailable": 1}}}),
        "set only one of proxy.podDisruptionBudget.minAvailable and",
    ),
    "collector and dispatcher in one group": (
        merged(MINIMAL, {"dispatcher": {"enabled": True, "group": "collector"}}),
        'collector.group and dispatcher.group are both "collector"',
    ),
    "several writers of one file": (
        merged(MINIMAL, {"dispatcher": {"enabled": True, "replicaCount": 2}}),
        "dispatcher.sink=file appends to one file on one volume",
    ),
    "file outside the volume": (
        merged(MINIMAL, {"dispatcher": {"enabled": True, "endpoint": "/var/log/events.jsonl"}}),
        "dispatcher.endpoint (/var/log/events.jsonl) must be a file under "
        "dispatcher.persistence.mountPath (/data)",
    ),
    "a provider's key variable without its Secret": (
        _provider_keys(ANTHROPIC_API_KEY=None),
        "proxy.models.providers.anthropic.api_key_env is ANTHROPIC_API_KEY, but "
        "proxy.providerKeys has no ANTHROPIC_API_KEY: the proxy refuses to start without it",
    ),
    "a provider key no provider reads": (
        merged(MINIMAL, {"proxy": {"providerKeys": {"OPENAI_API_KEY": A_SECRET}}}),
        "proxy.providerKeys.OPENAI_API_KEY is read by no provider",
    ),
    "a provider key in a variable the chart sets": (
        merged(
            _provider_keys(OPENAI_API_KEY=None, UPSTREAM_OPENAI_API_KEY=A_SECRET),
            _openai_key_env("UPSTREAM_OPENAI_API_KEY"),
        ),
        "proxy.providerKeys.UPSTREAM_OPENAI_API_KEY: the chart sets UPSTREAM_OPENAI_API_KEY itself",
    ),
    "a provider key that is no variable name": (
        merged(MINIMAL, {"proxy": {"providerKeys": {"openai-key": A_SECRET}}}),
        "proxy.providerKeys.openai-key: not an environment variable name",
    ),
    "backoff range upside down": (
        merged(MINIMAL, {"dispatcher": {"enabled": True, "backoffMin": 10, "backoffMax": 5}}),
        "dispatcher.backoffMax (5) must be at least dispatcher.backoffMin (10)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_impossible_combination_fails_with_its_message(
    render_chart: RenderChart, case: str
) -> None:
    values, message = CASES[case]
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)) as failure:
        render_chart(values)
    assert "VALUES VALIDATION" in str(failure.value)


def test_every_problem_is_reported_at_once(render_chart: RenderChart) -> None:
    values = {"collector": {"sink": "postgres"}, "dispatcher": {"enabled": True, "sink": "lunary"}}
    with pytest.raises(helm.HelmRenderError) as failure:
        render_chart(values)
    text = str(failure.value)
    assert NO_REDIS in text
    assert "collector.sink=postgres needs DATABASE_URL" in text
    assert "dispatcher.sink=lunary needs an API key" in text
    assert NO_GATEWAY_KEYS in text


@pytest.mark.parametrize(
    "values",
    [
        merged(MINIMAL, {"collector": {"sink": "postgres"},
                       "dev": {"createSecrets": True, "secrets": {"databaseUrl": "postgresql://x"}}}),
        merged(MINIMAL, {"collector": {"enabled": False}, "dispatcher": {"enabled": True,
                                                                        "group": "collector"}}),
        merged(MINIMAL, {"dispatcher": {"enabled": True, "endpoint": "/data/usage/e.jsonl"}}),
        merged({"redis": {"existingSecret": "r", "existingSecretUrlKey": "url"}},
               MANAGEMENT_TOKEN),
        merged(REDIS, KEYS_FILE),
        merged(REDIS, NO_AUTH),
        merged(REDIS, {"dev": {"createSecrets": True,
                               "secrets": {"managementToken": "t0ken"}}}),
        merged(MINIMAL, {"proxy": {"models": {
            "providers": {"vllm": {"type": "openai", "base_url": "http://vllm.ml:8000/v1"}},
            "models": {"*": {"targets": [{"provider": "vllm"}]}}}}}),
    ],
    ids=["dev database secret", "collector off", "file under the volume", "url secret",
         "keys file only", "no authentication", "dev management token", "providers without keys"],
)  # fmt: skip
def test_the_neighbours_of_impossible_combinations_render(
    render_chart: RenderChart, values: Values
) -> None:
    assert render_chart(values).manifests
