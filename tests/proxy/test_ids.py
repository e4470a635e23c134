from __future__ import annotations

import os
import uuid

import pytest

from llm_gateway_proxy.ids import IdSource


def test_ids_are_unique_and_event_ids_are_version_4_uuids() -> None:
    source = IdSource()
    pairs = [source.pair() for _ in range(10_000)]
    assert len({request_id for request_id, _ in pairs}) == 10_000
    for request_id, event_id in pairs[:100]:
        assert len(request_id) == 32 and int(request_id, 16) >= 0
        parsed = uuid.UUID(event_id)
        assert str(parsed) == event_id
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_two_sources_do_not_repeat_each_other() -> None:
    assert IdSource().pair() != IdSource().pair()


def test_every_pair_is_a_fresh_draw_from_the_os_random_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A generator seeded once (Mersenne Twister) is predictable from its outputs; each id must
    # come from os.urandom itself, so two draws we control must show up as the two request ids.
    draws = iter([bytes(range(16)), bytes(range(16, 32))])
    source = IdSource()
    monkeypatch.setattr(os, "urandom", lambda n: next(draws))
    first, second = source.pair(), source.pair()
    assert first[0] == bytes(range(16)).hex()
    assert second[0] == bytes(range(16, 32)).hex()
    assert uuid.UUID(first[1]).version == 4
