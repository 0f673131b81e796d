"""Idempotency: one computation per (source, id) within a retention window.

A redelivery after completion gets the stored reply; a redelivery while the first is still
computing awaits that same computation. Failures are not stored, so a retry computes again.
The computation runs in its own task, so a sender that disconnects does not cancel it for others.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    task: asyncio.Task[T]
    expires_at: float | None = None  # set once the task succeeded


class Deduplicator(Generic[T]):
    def __init__(self, ttl_seconds: float, max_entries: int, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[Hashable, _Entry[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def run(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``compute()``'s result and whether it came from an earlier delivery of ``key``."""
        self._expire()
        entry = self._entries.get(key)
        if entry is not None:
            return await asyncio.shield(entry.task), True

        async def call() -> T:
            return await compute()

        entry = _Entry(asyncio.create_task(call()))
        self._entries[key] = entry
        entry.task.add_done_callback(lambda task: self._finished(key, entry))
        return await asyncio.shield(entry.task), False

    async def drain(self) -> None:
        """Waits for computations whose senders went away (at shutdown)."""
        pending = [entry.task for entry in self._entries.values() if not entry.task.done()]
        await asyncio.gather(*pending, return_exceptions=True)

    def _finished(self, key: Hashable, entry: _Entry[T]) -> None:
        if self._entries.get(key) is not entry:
            return
        if entry.task.cancelled() or entry.task.exception() is not None or self.ttl <= 0:
            del self._entries[key]
            return
        entry.expires_at = self.clock() + self.ttl
        self._entries.move_to_end(key)
        self._expire()

    def _expire(self) -> None:
        """Drops expired replies, then the oldest ones beyond `max_entries` (in-flight ones stay)."""
        now = self.clock()
        done = [(key, entry) for key, entry in self._entries.items() if entry.expires_at is not None]
        excess = len(done) - self.max_entries
        for index, (key, entry) in enumerate(done):
            if index < excess or entry.expires_at <= now:
                del self._entries[key]
