"""Idempotency: one computation per (source, id), and what a failed attempt achieved kept for the next.

Each event has a state (`new_state()`) that its attempts share. A redelivery after success gets the
stored result; a redelivery while an attempt runs awaits that same attempt; a redelivery after a
failure runs a new attempt on the kept state (the app keeps finished chunks and unsent parts in it).
An attempt runs in its own task, so a sender that disconnects does not cancel it for others.

Entries expire `ttl_seconds` after their last attempt finished; beyond `max_entries` entries or
`max_bytes` (as `size(state)` measures it) the oldest finished ones go first (counted in
`kembed_dedup_evicted_total`); entries with an attempt in flight are never dropped. The store is per
process and in memory: see docs/eventing.md for what that means across pods.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from eventing import metrics

S = TypeVar("S")
T = TypeVar("T")


@dataclass
class _Entry(Generic[S, T]):
    state: S
    task: asyncio.Task[T] | None = None  # the running attempt, or the one that succeeded
    expires_at: float | None = None  # set while no attempt runs
    size: int = 0  # size(state) when the last attempt finished


class Deduplicator(Generic[S, T]):
    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int,
        max_bytes: int,
        new_state: Callable[[], S],
        size: Callable[[S], int],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.new_state = new_state
        self.size = size
        self.clock = clock
        # In the order the entries' last attempts finished (in-flight ones wherever they were).
        self._entries: OrderedDict[Hashable, _Entry[S, T]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    async def run(self, key: Hashable, compute: Callable[[S], Awaitable[T]]) -> tuple[T, bool]:
        """``compute(state)``'s result and whether it came from an earlier delivery of ``key``."""
        self._expire()
        entry = self._entries.get(key)
        if entry is not None and entry.task is not None and _running_or_succeeded(entry.task):
            return await asyncio.shield(entry.task), True
        if entry is None:
            entry = _Entry(self.new_state())
            self._entries[key] = entry
        entry.expires_at = None
        task = asyncio.create_task(_call(compute, entry.state))
        entry.task = task
        task.add_done_callback(lambda done: self._finished(key, entry, done))
        return await asyncio.shield(task), False

    async def drain(self) -> None:
        """Waits for attempts whose senders went away (at shutdown)."""
        pending = [entry.task for entry in self._entries.values() if entry.task is not None and not entry.task.done()]
        await asyncio.gather(*pending, return_exceptions=True)

    def _finished(self, key: Hashable, entry: _Entry[S, T], task: asyncio.Task[T]) -> None:
        if self._entries.get(key) is not entry or entry.task is not task:
            return
        if task.cancelled() or self.ttl <= 0:
            self._drop(key)
            return
        if task.exception() is not None:
            entry.task = None  # the next delivery runs a new attempt on the kept state
        self._bytes -= entry.size
        entry.size = self.size(entry.state)
        self._bytes += entry.size
        entry.expires_at = self.clock() + self.ttl
        self._entries.move_to_end(key)
        self._expire()

    def _expire(self) -> None:
        """Drops expired entries, then the oldest finished ones beyond the bounds (in-flight ones stay).

        Finished entries are in the order they expire, so both stop at the first one they keep."""
        now = self.clock()
        count, held = len(self._entries), self._bytes
        doomed: list[Hashable] = []
        for key, entry in self._entries.items():
            if entry.expires_at is None:
                continue
            expired = entry.expires_at <= now
            if not expired and count <= self.max_entries and held <= self.max_bytes:
                break
            if not expired:
                metrics.DEDUP_EVICTED.inc()
            doomed.append(key)
            count, held = count - 1, held - entry.size
        for key in doomed:
            self._drop(key)
        metrics.DEDUP_BYTES.set(self._bytes)

    def _drop(self, key: Hashable) -> None:
        self._bytes -= self._entries.pop(key).size
        metrics.DEDUP_BYTES.set(self._bytes)


def _running_or_succeeded(task: asyncio.Task) -> bool:
    return not task.done() or (not task.cancelled() and task.exception() is None)


async def _call(compute: Callable[[S], Awaitable[T]], state: S) -> T:
    return await compute(state)
