"""MODELS_FILE: decoded strictly; every mistake names its field; lookups by name, then pattern."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_gateway_common.config import ConfigError
from llm_gateway_proxy.modelconfig import Backoff, load_models_file

EXAMPLE = """
providers:
  openai:
    type: openai
    base_url: https://api.openai.com/v1
    api_key_env: OPENAI_API_KEY
  azure-eu:
    type: azure
    base_url: https://my-eu.openai.azure.com
    api_version: "2024-10-21"
    api_key_env: AZURE_EU_KEY
  anthropic:
    type: anthropic
    base_url: https://api.anthropic.com
    api_key_env: ANTHROPIC_API_KEY
  local-vllm:
    type: openai
    base_url: http://vllm.models.svc:8000/v1
    stream_usage: never
    headers: {X-Team: ml}
    timeouts: {connect: 5, read: 300, first_token: 30}
models:
  gpt-4o:
    targets:
      - {provider: openai, model: gpt-4o, weight: 3}
      - {provider: azure-eu, model: gpt-4o-eu}
    fallbacks: [claude-sonnet]
  claude-sonnet:
    targets:
      - {provider: anthropic, model: claude-sonnet-4-5}
    retries: 0
    backoff: {base: 0.5, max: 2}
  "llama-*":
    targets:
      - {provider: local-vllm}
routing:
  retries: 2
  backoff: {base: 0.2, max: 5}
  cooldown: {failures: 3, seconds: 30}
  deadline: 60
default_provider: openai
"""
ENV = {"OPENAI_API_KEY": "sk-o", "AZURE_EU_KEY": "az", "ANTHROPIC_API_KEY": "sk-ant"}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return str(path)


def test_the_documented_example_loads(tmp_path: Path) -> None:
    table = load_models_file(write(tmp_path, EXAMPLE), ENV)
    gpt = table.route("gpt-4o")
    assert gpt is not None and [t.weight for t in gpt.targets] == [3, 1.0]
    assert gpt.fallbacks == ["claude-sonnet"]
    llama = table.route("llama-3.1-70b")
    assert llama is not None and llama.targets[0].model is None  # the client's name passes
    assert table.route("mistral-large") is None
    assert table.api_keys == {"openai": "sk-o", "azure-eu": "az", "anthropic": "sk-ant",
                              "local-vllm": None}  # fmt: skip
    vllm = table.file.providers["local-vllm"]
    assert (vllm.stream_usage, vllm.headers, vllm.timeouts.first_token) == (
        "never", {"X-Team": "ml"}, 30)  # fmt: skip
    claude = table.route("claude-sonnet")
    assert claude is not None
    routing = table.routing(claude)
    assert (routing.retries, routing.backoff, routing.deadline) == (0, Backoff(0.5, 2), 60)
    assert table.routing(gpt).retries == 2


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (("weight: 3", "wieght: 3"), "wieght"),  # an unknown field
        (("weight: 3", "weight: heavy"), "targets[0].weight"),  # a wrong type
        (("type: anthropic", "type: bedrock"), "type"),
        (("provider: anthropic,", "provider: antropic,"), "targets[0].provider"),
        (("fallbacks: [claude-sonnet]", "fallbacks: [claude-opus]"), "fallbacks[0]"),
        (("fallbacks: [claude-sonnet]", "fallbacks: [gpt-4o]"), "fallbacks[0]"),
        (('    api_version: "2024-10-21"\n', ""), "api_version"),
        (("base_url: https://api.anthropic.com", "base_url: api.anthropic.com"), "base_url"),
        (("weight: 3", "weight: 0"), "weight"),
        (("retries: 0", "retries: -1"), "retries"),
        (("backoff: {base: 0.5, max: 2}", "backoff: {base: 5, max: 2}"), "backoff"),
        (("default_provider: openai", "default_provider: nobody"), "default_provider"),
        (("deadline: 60", "deadline: 0"), "deadline"),
        (("routing:", "routng:"), "routng"),
    ],
)
def test_every_mistake_names_its_field(tmp_path: Path, edit: tuple[str, str], named: str) -> None:
    old, new = edit
    assert old in EXAMPLE
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_models_file(write(tmp_path, EXAMPLE.replace(old, new, 1)), ENV)


def test_a_missing_key_variable_is_named_and_its_value_never_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AZURE_EU_KEY is not set") as caught:
        load_models_file(write(tmp_path, EXAMPLE), {**ENV, "AZURE_EU_KEY": " "})
    assert "sk-o" not in str(caught.value)


def test_a_file_that_is_not_yaml_or_not_there(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_models_file(write(tmp_path, "providers: [unclosed"), ENV)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_models_file(str(tmp_path / "absent.yaml"), ENV)


def test_the_proxy_does_not_start_on_a_bad_models_file(tmp_path: Path) -> None:
    """The process itself: exit 2, the field named on stderr, no key printed."""
    path = tmp_path / "models.yaml"
    path.write_text(EXAMPLE.replace("weight: 3", "wieght: 3"))
    env = {"PATH": os.environ.get("PATH", ""), "AUTH_MODE": "none", "MODELS_FILE": str(path),
           "OPENAI_API_KEY": "sk-secret-never-printed", "AZURE_EU_KEY": "k",
           "ANTHROPIC_API_KEY": "k"}  # fmt: skip
    binary = Path(sys.executable).parent / "llm-gateway-proxy"
    result = subprocess.run([str(binary)], env=env, capture_output=True, timeout=30, check=False)
    assert result.returncode == 2
    assert b"wieght" in result.stderr and b"$.models.gpt-4o.targets[0]" in result.stderr
    assert b"sk-secret" not in result.stderr + result.stdout


def test_the_default_provider_must_speak_the_openai_api(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(EXAMPLE.replace("default_provider: openai", "default_provider: anthropic"))
    with pytest.raises(ConfigError, match=r"default_provider.*anthropic"):
        load_models_file(str(path), ENV)
