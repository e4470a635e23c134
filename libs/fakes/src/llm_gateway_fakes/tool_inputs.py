"""The arguments the fakes call a tool with: what fits the top level of its JSON schema, so
that tests can predict them (a string is "fake", an integer 1, ...)."""

from __future__ import annotations

from typing import Any

_SAMPLES: dict[Any, Any] = {"string": "fake", "integer": 1, "number": 1.5, "boolean": True,
                            "array": [], "object": {}}  # fmt: skip


def sample_input(schema: Any) -> dict[str, Any]:
    """Arguments that fit the top level of a tool's input schema."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return {
        name: _SAMPLES.get(spec.get("type") if isinstance(spec, dict) else None)
        for name, spec in (properties if isinstance(properties, dict) else {}).items()
    }
