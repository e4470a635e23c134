"""Request and event ids: unique, unguessable enough for tracing, and cheap.

`uuid.uuid4()` costs a `getrandom` system call per id; the proxy makes two ids per request, so it
draws them from a per-process generator seeded once from the OS instead. One 128-bit draw serves
both: the request id is its hex form, the event id the same bits as an RFC 4122 version-4 UUID.
"""

from __future__ import annotations

import os
import random

_VERSION_4 = (0x4 << 76) | (0x2 << 62)
_CLEAR_VERSION = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)


class IdSource:
    def __init__(self) -> None:
        self._random = random.Random(os.urandom(32))

    def pair(self) -> tuple[str, str]:
        """(request id: 32 hex digits, event id: a version-4 UUID string)."""
        bits = self._random.getrandbits(128)
        request_id = f"{bits:032x}"
        uuid_hex = f"{(bits & _CLEAR_VERSION) | _VERSION_4:032x}"
        event_id = (
            f"{uuid_hex[:8]}-{uuid_hex[8:12]}-{uuid_hex[12:16]}-{uuid_hex[16:20]}-{uuid_hex[20:]}"
        )
        return request_id, event_id
