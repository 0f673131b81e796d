"""A least-recently-used map bounded both by entry count and by bytes.

Entry count alone lets a few huge texts eat the memory; bytes alone lets millions of tiny entries
pile up per-object overhead. Both caches of the transformer (token ids, embeddings) use this one.
Not thread-safe: it lives on the server's event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteBoundedLRU(Generic[K, V]):
    def __init__(self, max_entries: int, max_bytes: int):
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("cache bounds must be >= 0 (0 turns the cache off)")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        """The value, now the most recently used; ``None`` on a miss."""
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V, size: int) -> int:
        """Stores ``value`` (``size`` bytes) and returns how many entries were evicted for it.
        A value larger than the whole byte budget is not stored (it would evict everything)."""
        if not self.enabled or size > self.max_bytes:
            return 0
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._items[key] = (value, size)
        self.bytes += size
        evicted = 0
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped
            evicted += 1
        return evicted

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
