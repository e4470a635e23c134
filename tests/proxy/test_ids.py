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


def test_every_pair_is_fresh_bytes_from_the_os_random_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A generator seeded once (Mersenne Twister) is predictable from its outputs; each id must
    # be bytes of os.urandom's, used once: 4 KiB drawn at a time, 16 bytes per pair, in order,
    # and a new draw when they are used up.
    draws = [os.urandom(4096), os.urandom(4096)]
    calls = iter(draws)
    source = IdSource()
    monkeypatch.setattr(os, "urandom", lambda n: next(calls))
    pairs = [source.pair() for _ in range(257)]
    assert [request_id for request_id, _ in pairs[:256]] == [
        draws[0][i : i + 16].hex() for i in range(0, 4096, 16)
    ]
    assert pairs[256][0] == draws[1][:16].hex()
    assert all(uuid.UUID(event_id).version == 4 for _, event_id in pairs)
