"""The value combinations the chart is rendered with across tests/chart: what platform teams
install (an external Redis, gateway keys, secrets referenced), plus values-ci.yaml. Each one is
a working install: it renders, and every service accepts its environment."""

from __future__ import annotations

import yaml

from tests.chart.rendering import CHART_DIR, Values, chart_values_file, merged


def _commented_model_table() -> Values:
    """The worked example values.yaml shows above `proxy.models` (in comments, indented under
    `#   `), as values: what the docs show is what the tests install."""
    prefix = "  #   "
    lines = [line[len(prefix) :] for line in (CHART_DIR / "values.yaml").read_text().splitlines()
             if line.startswith(prefix)]  # fmt: skip
    example: Values = yaml.safe_load("\n".join(lines))
    assert set(example) == {"models", "providerKeys"}, "values.yaml's model table example moved"
    return {"proxy": example}


REDIS = {"redis": {"host": "redis-master.redis.svc"}}
# Gateway keys (proxy.auth.mode=keys, the default, needs one of the two or both).
MANAGEMENT_TOKEN = {"proxy": {"auth": {"managementToken": {"existingSecret": "gateway-manage"}}}}
KEYS_FILE = {"proxy": {"auth": {"keysFile": {"existingSecret": "gateway-keys"}}}}
NO_AUTH = {"proxy": {"auth": {"mode": "none"}}}
# The smallest install that works: an external Redis and a management token.
MINIMAL = merged(REDIS, MANAGEMENT_TOKEN)
UPSTREAM = {"proxy": {"upstream": {"existingSecret": "openai", "existingSecretKey": "api-key"}}}
POSTGRES_COLLECTOR = {
    "collector": {"sink": "postgres", "postgres": {"existingSecret": "ledger-db"}},
}
LUNARY = {"dispatcher": {"enabled": True, "sink": "lunary", "existingSecret": "lunary"}}
HELICONE = {"dispatcher": {"enabled": True, "sink": "helicone", "existingSecret": "helicone"}}
FILE_DISPATCHER = {"dispatcher": {"enabled": True, "sink": "file"}}
INGRESS = {
    "ingress": {
        "enabled": True, "className": "nginx", "hosts": ["llm.example.com"],
        "tls": [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}],
    },
}  # fmt: skip
HPA = {"proxy": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12,
                                 "targetMemoryUtilizationPercentage": 80}}}  # fmt: skip
REDIS_PASSWORD = {"redis": {"host": "redis-master.redis.svc", "existingSecret": "redis"}}
REDIS_URL_SECRET = {"redis": {"existingSecret": "redis-url", "existingSecretUrlKey": "url"}}
# Several providers (proxy.models, proxy.providerKeys): values.yaml's commented example.
MODELS = _commented_model_table()
# Price overrides (proxy.prices) of the model table's providers: an Azure discount, Anthropic's
# cache rates, and whatever else goes to `openai` at $0 (as a self-hosted server would be).
PRICES = {
    "proxy": {
        "prices": [
            {"provider": "azure-eu", "model": "gpt-4o-*", "input_per_mtok": 2.25,
             "cached_input_per_mtok": 1.125, "output_per_mtok": 9},
            {"provider": "anthropic", "model": "claude-sonnet-*", "input_per_mtok": 3,
             "cached_input_per_mtok": 0.3, "cache_write_per_mtok": 3.75, "output_per_mtok": 15},
            {"provider": "openai"},
        ],
    },
}  # fmt: skip


SCENARIOS: dict[str, Values] = {
    "minimal": MINIMAL,
    "ci": chart_values_file("values-ci.yaml"),
    # Keys kept in Git only (GitOps): no management API.
    "postgres-collector": merged(REDIS, KEYS_FILE, UPSTREAM, POSTGRES_COLLECTOR),
    "dispatcher-file": merged(MINIMAL, FILE_DISPATCHER),
    "dispatcher-lunary": merged(MINIMAL, LUNARY),
    "dispatcher-helicone": merged(MINIMAL, HELICONE),
    "ingress": merged(MINIMAL, INGRESS),
    "hpa": merged(MINIMAL, HPA),
    "no-auth": merged(REDIS, NO_AUTH),
    "redis-password": merged(REDIS_PASSWORD, MANAGEMENT_TOKEN, UPSTREAM),
    "redis-url-secret": merged(REDIS_URL_SECRET, MANAGEMENT_TOKEN, UPSTREAM),
    "models": merged(MINIMAL, MODELS),
    "prices": merged(MINIMAL, MODELS, PRICES),
    "everything": merged(
        REDIS_PASSWORD,
        MANAGEMENT_TOKEN,
        KEYS_FILE,
        UPSTREAM,
        POSTGRES_COLLECTOR,
        HELICONE,
        INGRESS,
        HPA,
        MODELS,
        {
            "networkPolicy": {
                "enabled": True,
                "proxyIngressFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}],
                "managementIngressFrom": [
                    {"namespaceSelector": {"matchLabels": {"team": "platform"}}}
                ],
            },
            "ingress": {"management": {"enabled": True}},
            "proxy": {
                "service": {"type": "LoadBalancer"},
                "management": {"containerPort": 9090, "service": {"port": 9091}},
                "maxInFlight": 2048,
                "clientReadTimeout": 120,
                "passthroughPaths": ["models", "models/*", "files/*"],
                "forwardAccountHeaders": ["openai-organization"],
                "corsAllowOrigins": ["https://a.example"],
                "auth": {"keyCacheTtl": 5, "requestRedisTimeout": 0.25, "rateLimitFailOpen": False},
            },
            "serviceAccount": {"annotations": {"iam.example.com/role": "gateway"}},
            "imagePullSecrets": [{"name": "regcred"}],
            "commonLabels": {"team": "platform"},
        },
    ),
}
