"""Typed reads of environment variables, failing fast with the variable's name.

Each service builds one frozen settings struct from an `Env` at startup; tests pass a plain dict
instead of `os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """A configuration variable is present but unusable; the message names it."""


class Env:
    """Typed access to a mapping of environment variables. Empty values count as unset."""

    def __init__(self, source: Mapping[str, str] | None = None) -> None:
        self._source: Mapping[str, str] = os.environ if source is None else source

    @property
    def environ(self) -> Mapping[str, str]:
        """The variables read (for files that name variables of their own, like MODELS_FILE)."""
        return self._source

    def _raw(self, name: str) -> str | None:
        value = self._source.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        value = self._raw(name)
        return default if value is None else value

    def optional_text(self, name: str) -> str | None:
        return self._raw(name)

    def integer(self, name: str, default: int, *, minimum: int | None = None) -> int:
        value = self._raw(name)
        if value is None:
            return default
        try:
            parsed = int(value)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
        if minimum is not None and parsed < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {parsed}")
        return parsed

    def number(self, name: str, default: float, *, minimum: float | None = None) -> float:
        value = self._raw(name)
        if value is None:
            return default
        try:
            parsed = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if minimum is not None and parsed < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {parsed}")
        return parsed

    def flag(self, name: str, default: bool) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")

    def csv(self, name: str) -> tuple[str, ...]:
        value = self._raw(name)
        if value is None:
            return ()
        return tuple(part.strip() for part in value.split(",") if part.strip())

    def listen_addr(self, name: str, default: str) -> tuple[str, int]:
        """A `host:port` (IPv6 as `[::]:8080`) split into its parts."""
        value = self.text(name, default)
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{name} must be host:port, got {value!r}")
        return host.strip("[]") or "0.0.0.0", int(port)
