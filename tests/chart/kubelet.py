"""What a kubelet makes of a rendered container: its environment (envFrom ConfigMaps, then `env`
in order, with `$(VAR)` expansion, Secret and field references), its Secret and ConfigMap volumes
and its probe ports. Tests use it to run our console scripts exactly as the Deployments would."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.chart.rendering import NAMESPACE, Rendered

SecretValues = Mapping[tuple[str, str], str]  # (Secret name, key) -> value

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, defined: Mapping[str, str]) -> str:
    """Kubernetes' dependent-variable expansion: `$(NAME)` becomes NAME's value when NAME was
    defined before; `$$` is a literal `$`; a reference to an undefined name is left as is."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return defined.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, value)


def container_env(
    rendered: Rendered, container: Mapping[str, Any], *, pod_name: str, secrets: SecretValues
) -> dict[str, str]:
    """The environment the container's process gets (HOSTNAME is the pod name, as in a pod)."""
    env: dict[str, str] = {"HOSTNAME": pod_name}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data = rendered.get("ConfigMap", source["configMapRef"]["name"]).get("data", {})
            env.update({source.get("prefix", "") + k: v for k, v in data.items()})
        else:
            raise AssertionError(f"unsupported envFrom source {source}")
    for variable in container.get("env", []):
        name = variable["name"]
        if "value" in variable:
            env[name] = expand(variable["value"], env)
        else:
            env[name] = _value_from(rendered, variable["valueFrom"], pod_name, secrets)
    return env


def _value_from(
    rendered: Rendered, source: Mapping[str, Any], pod_name: str, secrets: SecretValues
) -> str:
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        try:
            return secrets[(ref["name"], ref["key"])]
        except KeyError:
            raise AssertionError(f"the test gave no value for Secret {ref}") from None
    if "configMapKeyRef" in source:
        ref = source["configMapKeyRef"]
        value: str = rendered.get("ConfigMap", ref["name"])["data"][ref["key"]]
        return value
    if "fieldRef" in source:
        fields = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}
        return fields[source["fieldRef"]["fieldPath"]]
    raise AssertionError(f"unsupported valueFrom {source}")


def mount_volumes(
    rendered: Rendered, component: str, env: dict[str, str], secrets: SecretValues, root: Path
) -> None:
    """The container's volumes (but /tmp) on this machine: each a directory under `root` holding
    the files a kubelet would project into it (a Secret's keys, from the test's values, or a
    rendered ConfigMap's), and every variable of `env` that holds a path under a mount moved
    there, which is what mounting the volume at that path does in the pod."""
    volumes = {v["name"]: v for v in rendered.pod_spec(component)["volumes"]}
    for mount in rendered.container(component).get("volumeMounts", []):
        if mount["mountPath"] == "/tmp":
            continue
        local = root / "volumes" / mount["name"]
        local.mkdir(parents=True)
        volume = volumes[mount["name"]]
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            files = {key: value for (secret, key), value in secrets.items() if secret == name}
            _project(volume["secret"], files, local, f"the test's Secret {name}")
        elif "configMap" in volume:
            name = volume["configMap"]["name"]
            files = rendered.get("ConfigMap", name).get("data", {})
            _project(volume["configMap"], files, local, f"the rendered ConfigMap {name}")
        prefix = mount["mountPath"].rstrip("/") + "/"
        for variable, value in env.items():
            if value.startswith(prefix):
                env[variable] = str(local / value[len(prefix) :])


def _project(
    source: Mapping[str, Any], files: Mapping[str, str], directory: Path, what: str
) -> None:
    """Write a Secret or ConfigMap volume's files as the kubelet does: each listed item's key at
    its path (every key when no items are listed), with the volume's file mode."""
    items = source.get("items") or [{"key": key, "path": key} for key in files]
    for item in items:
        if item["key"] not in files:
            raise AssertionError(f"{what} holds no key {item['key']!r}")
        path = directory / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[item["key"]])
        path.chmod(item.get("mode", source.get("defaultMode", 0o644)))


def named_port(container: Mapping[str, Any], port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            number: int = declared["containerPort"]
            return number
    raise AssertionError(f"the container declares no port named {port!r}")


def http_probes(container: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """{"readinessProbe": ("/ready", 8080), ...} for the container's HTTP probes."""
    probes: dict[str, tuple[str, int]] = {}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        http_get = container.get(kind, {}).get("httpGet")
        if http_get is not None:
            probes[kind] = (http_get["path"], named_port(container, http_get["port"]))
    return probes


def secret_references(container: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """{"DATABASE_URL": ("ledger-db", "database-url"), ...}: variables taken from Secrets."""
    return {
        variable["name"]: (ref["name"], ref["key"])
        for variable in container.get("env", [])
        if (ref := variable.get("valueFrom", {}).get("secretKeyRef")) is not None
    }
