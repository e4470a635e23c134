"""Request and event ids: unique, unguessable, and cheap.

Each request takes 128 bits from the OS's random source (`os.urandom`), read 4 KiB at a time
(one `getrandom` system call per 256 requests rather than one per request): the ids are not
predictable from earlier ones, as a seeded Mersenne Twister's are (624 outputs give away its
state), since every byte is the kernel's CSPRNG output, used once. One draw serves both ids: the
request id is its hex form, the event id the same bits as an RFC 4122 version-4 UUID.
"""

from __future__ import annotations

import os

_VERSION_4 = (0x4 << 76) | (0x2 << 62)
_CLEAR_VERSION = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)


_DRAW = 4096  # bytes read from the OS at once: 256 pairs


class IdSource:
    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def pair(self) -> tuple[str, str]:
        """(request id: 32 hex digits, event id: a version-4 UUID string)."""
        at = self._at
        if at + 16 > len(self._pool):
            self._pool = os.urandom(_DRAW)
            at = 0
        self._at = at + 16
        bits = int.from_bytes(self._pool[at : at + 16])
        request_id = f"{bits:032x}"
        uuid_hex = f"{(bits & _CLEAR_VERSION) | _VERSION_4:032x}"
        event_id = (
            f"{uuid_hex[:8]}-{uuid_hex[8:12]}-{uuid_hex[12:16]}-{uuid_hex[16:20]}-{uuid_hex[20:]}"
        )
        return request_id, event_id
