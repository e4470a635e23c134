"""Failures a test scripts into a fake sink: "answer the next N requests with this status"."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class ScriptedFailure:
    status: int
    headers: dict[str, str]


class FailureScript:
    """A queue of failures to answer with, one per request, before behaving normally again."""

    def __init__(self) -> None:
        self._pending: deque[ScriptedFailure] = deque()

    def add(self, count: int, status: int, headers: dict[str, str | None]) -> None:
        """Answer the next `count` requests with `status` and the headers that are set."""
        kept = {name: value for name, value in headers.items() if value is not None}
        self._pending.extend([ScriptedFailure(status, kept)] * count)

    def clear(self) -> None:
        self._pending.clear()

    def next(self) -> ScriptedFailure | None:
        """The failure to answer this request with, if one is still scripted."""
        return self._pending.popleft() if self._pending else None
