"""The value combinations the chart is rendered with across tests/chart: what platform teams
install (an external Redis, secrets referenced), plus values-ci.yaml."""

from __future__ import annotations

from tests.chart.rendering import Values, chart_values_file, merged

REDIS = {"redis": {"host": "redis-master.redis.svc"}}
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


SCENARIOS: dict[str, Values] = {
    "minimal": REDIS,
    "ci": chart_values_file("values-ci.yaml"),
    "postgres-collector": merged(REDIS, UPSTREAM, POSTGRES_COLLECTOR),
    "dispatcher-file": merged(REDIS, FILE_DISPATCHER),
    "dispatcher-lunary": merged(REDIS, LUNARY),
    "dispatcher-helicone": merged(REDIS, HELICONE),
    "ingress": merged(REDIS, INGRESS),
    "hpa": merged(REDIS, HPA),
    "redis-password": merged(REDIS_PASSWORD, UPSTREAM),
    "redis-url-secret": merged(REDIS_URL_SECRET, UPSTREAM),
    "everything": merged(
        REDIS_PASSWORD,
        UPSTREAM,
        POSTGRES_COLLECTOR,
        HELICONE,
        INGRESS,
        HPA,
        {
            "networkPolicy": {
                "enabled": True,
                "proxyIngressFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}],
            },
            "proxy": {
                "service": {"type": "LoadBalancer"},
                "corsAllowOrigins": ["https://a.example"],
            },
            "serviceAccount": {"annotations": {"iam.example.com/role": "gateway"}},
            "imagePullSecrets": [{"name": "regcred"}],
            "commonLabels": {"team": "platform"},
        },
    ),
}
