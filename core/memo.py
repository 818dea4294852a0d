"""A small least-recently-used memo, the one behind gnomon's in-process caches.

Kept instead of ``cachetools.LRUCache``: ``benchmarks/bench_handwritten.py`` (memo traffic of
a workflow scaled up: 40 sized entries, ~20 gets per put) measured cachetools 1.8x slower
(0.19 s vs 0.10 s), and its ``maxsize`` is fixed at construction while this limit is a callable
read at use time. The rule is to keep a hand-written replacement only at >= 1.5x.

Used by the engine's store (``core.store``) for registered models and datasets read from or
written as artifacts, and per model object for predictions (``core.models.predict``). The limit is a callable so that an
environment variable read at use time (``GNOMON_MODEL_MEMO``, ``GNOMON_DATASET_MEMO_MB``) can
resize or switch off a memo; ``size`` measures an entry against it (default: 1 per entry).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable


class LRU:
    """Entries kept while their total ``size`` fits ``limit()``; least recently used go first."""

    def __init__(self, limit: Callable[[], int], size: Callable[[Any], int] = lambda value: 1):
        self.limit = limit
        self.size = size
        self.entries: OrderedDict = OrderedDict()

    def get(self, key: Hashable) -> Any:
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> list[Hashable]:
        """Keep ``value`` (unless it alone exceeds the limit); returns the keys evicted to make room."""
        limit = self.limit()
        evicted = []
        if self.size(value) > limit:
            self.entries.pop(key, None)
            evicted.append(key)
        else:
            self.entries[key] = value
            self.entries.move_to_end(key)
        while self.entries and sum(self.size(v) for v in self.entries.values()) > limit:
            old, _ = self.entries.popitem(last=False)
            evicted.append(old)
        return evicted

    def __contains__(self, key: Hashable) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()
