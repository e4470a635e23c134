from __future__ import annotations

import uuid

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
