"""Garbage-collector settings for long-running services.

After start-up, a service's heap is mostly objects that live as long as the process (modules,
clients, pools). CPython's full collections would walk all of them again and again; measured on
the proxy, the collector's passes cost about 40 µs of CPU per request under load. Freezing the
start-up heap takes those objects out of every future pass, and a larger first-generation
threshold makes passes over short-lived request objects rarer (most of them are freed by
reference counting before a pass ever sees them).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # CPython's default is 700 allocations
OLDER_THRESHOLDS = (20, 50)  # defaults 10, 10


def settle_after_startup() -> None:
    """Call once, when the service's long-lived resources exist and before it takes traffic."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
