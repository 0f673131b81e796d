"""Dynamic batching: many small requests become few, dense forward passes.

Requests are split into items (one token-id row each) that wait in one bounded queue. One asyncio
loop forms batches of at most `max_batch_size` items and `max_batch_tokens` tokens. A batch is
built around the oldest item (so nothing starves) from the waiting items nearest to it in length,
and an item joins only when that costs less than running it in a pass of its own. What a batch
costs is the encoder's to say: a padded batch (transformers backend) pays rows x longest, so on a
CPU mixed lengths can be slower together than one by one; a packed batch (native backend) pays its
real tokens, so everything joins. A pass also has a fixed cost, in token units, measured at
warm-up: small on a CPU, large on a GPU.

The queue is bounded in items and in time: a request is refused (429) when the work already
waiting would take longer than `max_queue_seconds` at the measured speed, since a client that
waits that long has likely given up; work older than `max_wait_seconds` (the client's timeout) or
whose caller went away leaves the queue without a pass. On SIGTERM `drain` answers what cannot
finish within the grace period with 503 at once, instead of letting the server's cancel make a 500.

There is no latency window (as in TEI): forward passes run on worker threads, one per pass the
runtime can run at once (`parallel_passes`: 1 for torch, the compiled model's streams for OpenVINO),
and while they run the queue fills; the next batch is chosen from everything waiting the moment a
worker is free. A lone request never waits for company, and under load the batches fill by themselves.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from kembed.errors import QueueFull, Unavailable
from kembed.tokenization import padded_tokens
from predictor import metrics

# (token-id rows, each row's leading prompt tokens) -> [rows, D]
Forward = Callable[[Sequence[np.ndarray], Sequence[int]], np.ndarray]


@dataclass(eq=False)
class _Item:
    ids: np.ndarray
    future: asyncio.Future[np.ndarray]
    prompt_length: int = 0
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    queue_size: int = 2048
    max_queue_seconds: float = 10.0
    max_wait_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_batch_tokens", "queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("max_queue_seconds", "max_wait_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


BatchCost = Callable[[Sequence[int]], int]


def select_batch(
    lengths: Sequence[int], limits: BatchLimits, pass_cost_tokens: float = 0.0, cost: BatchCost = padded_tokens
) -> list[int]:
    """Indices of the next batch among waiting items (index 0 is the oldest).

    The oldest item is always taken. The others are tried nearest-length first and join while the
    batch stays within the item and token budgets and while joining is cheaper than a pass of their
    own: cost after <= cost before + own length + `pass_cost_tokens`. `cost` is the encoder's: padded
    tokens for a padded batch (mixed lengths rarely join), real tokens for a packed one (all join).
    """
    anchor = lengths[0]
    order = sorted(range(1, len(lengths)), key=lambda i: (abs(lengths[i] - anchor), i))
    chosen = [0]
    chosen_lengths = [anchor]
    before = cost(chosen_lengths)
    for index in order:
        if len(chosen) >= limits.max_batch_size:
            break
        after = cost([*chosen_lengths, lengths[index]])
        if after > limits.max_batch_tokens or after > before + lengths[index] + pass_cost_tokens:
            continue
        chosen.append(index)
        chosen_lengths.append(lengths[index])
        before = after
    return sorted(chosen)


class Batcher:
    def __init__(
        self,
        forward: Forward,
        limits: BatchLimits,
        model_name: str = "model",
        pass_cost_tokens: float = 0.0,
        cost: BatchCost = padded_tokens,
        seconds_per_token: float = 1e-4,
        parallel_passes: int = 1,
    ):
        if parallel_passes < 1:
            raise ValueError("parallel_passes must be at least 1")
        self._forward = forward
        self.parallel_passes = parallel_passes
        self.limits = limits
        self.pass_cost_tokens = pass_cost_tokens
        self.cost = cost
        self._pending: list[_Item] = []
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=parallel_passes, thread_name_prefix="kembed-forward")
        self._running: set[asyncio.Future[np.ndarray]] = set()
        self._task: asyncio.Task[None] | None = None
        self._labels = {"model": model_name}
        self._queue_depth = metrics.QUEUE_DEPTH.labels(**self._labels)
        self._inflight = metrics.INFLIGHT.labels(**self._labels)
        self.last_batch_seconds = 0.05
        # Seconds of forward pass per token (of one pass: parallel passes divide the wait), measured
        # at load, then from well-filled passes (the ones that matter when the queue is long; a small
        # pass is mostly fixed cost).
        self.seconds_per_token = seconds_per_token
        self._pending_tokens = 0
        self._in_pass: list[_Item] = []
        self._deadline: float | None = None  # set by drain()

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def seconds_per_queued_token(self) -> float:
        """How much a queued token adds to the wait: parallel passes share the queue."""
        return self.seconds_per_token / self.parallel_passes

    def expected_wait(self, extra_tokens: int = 0) -> float:
        """Seconds until what waits now (plus `extra_tokens`) has had its pass."""
        running = self.last_batch_seconds if self._in_pass else 0.0
        return running + (self._pending_tokens + extra_tokens) * self.seconds_per_queued_token

    async def embed(self, rows: Sequence[np.ndarray], prompt_length: int = 0) -> np.ndarray:
        """Embeds rows of token ids that start with ``prompt_length`` prompt tokens (pooling may leave
        them out); returns [len(rows), D] in the same order."""
        if len(self._pending) + len(rows) > self.limits.queue_size:
            raise QueueFull(len(self._pending), self.limits.queue_size, self._retry_after())
        tokens = sum(len(row) for row in rows)
        wait = self.expected_wait(tokens)
        if self._deadline is not None and time.monotonic() + wait > self._deadline:
            raise Unavailable("the server is shutting down and cannot finish this request in time", 1)
        if self._pending and wait > self.limits.max_queue_seconds:
            raise QueueFull(len(self._pending), self.limits.max_queue_seconds, self._retry_after(), wait)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="kembed-batcher")
        loop = asyncio.get_running_loop()
        items = [_Item(np.asarray(row), loop.create_future(), prompt_length) for row in rows]
        self._pending.extend(items)
        self._pending_tokens += tokens
        self._queue_depth.set(len(self._pending))
        self._wakeup.set()
        return np.stack(await asyncio.gather(*(item.future for item in items)))

    def admit(self) -> None:
        """Raises QueueFull while no item fits in the queue (by count or by expected wait); asked
        before a request is tokenized."""
        if len(self._pending) >= self.limits.queue_size:
            raise QueueFull(len(self._pending), self.limits.queue_size, self._retry_after())
        if (wait := self.expected_wait()) > self.limits.max_queue_seconds:
            raise QueueFull(len(self._pending), self.limits.max_queue_seconds, self._retry_after(), wait)

    def _retry_after(self) -> int:
        """Seconds until what waits now has likely had its pass."""
        return max(1, math.ceil(self.expected_wait()))

    def drain(self, seconds: float) -> None:
        """The server stops in `seconds`: what cannot finish before then is answered 503 now (and
        anything still unfinished then, at that moment); new work is taken only if it fits."""
        loop = asyncio.get_running_loop()
        self._deadline = time.monotonic() + seconds
        self._shed_past_deadline()
        loop.call_later(seconds, self._fail_unfinished)
        self._wakeup.set()

    def _shed_past_deadline(self) -> None:
        if self._deadline is None:
            return
        budget = self._deadline - time.monotonic() - (self.last_batch_seconds if self._in_pass else 0.0)
        queued = 0
        for item in self._pending:  # oldest first, as batches are built around the oldest item
            queued += len(item.ids)
            if queued * self.seconds_per_queued_token > budget and not item.future.done():
                item.future.set_exception(
                    Unavailable("the server is shutting down and cannot finish this request in time", 1)
                )
        self._drop_done()

    def _fail_unfinished(self) -> None:
        for item in [*self._pending, *self._in_pass]:
            if not item.future.done():
                item.future.set_exception(Unavailable("the server is shutting down; this request did not finish", 1))
        self._drop_done()

    def _drop_stale(self) -> None:
        """Fails items older than their client's timeout: the client is no longer waiting."""
        oldest = time.monotonic() - self.limits.max_wait_seconds
        for item in self._pending:
            if item.enqueued < oldest and not item.future.done():
                item.future.set_exception(
                    Unavailable(f"waited over {self.limits.max_wait_seconds:g} s in the queue (the client's timeout)")
                )
        self._drop_done()

    def _drop_done(self) -> None:
        """Forgets items already answered (failed, or their caller went away)."""
        self._pending = [item for item in self._pending if not item.future.done()]
        self._pending_tokens = sum(len(item.ids) for item in self._pending)
        self._queue_depth.set(len(self._pending))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._drop_stale()
            self._shed_past_deadline()
            if not self._pending:
                self._wakeup.clear()
                self._queue_depth.set(0)
                continue
            if len(self._running) >= self.parallel_passes:  # while they run, the queue fills
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
                continue
            batch = self._take_batch()
            future = loop.run_in_executor(self._executor, self._timed_forward, batch)
            self._running.add(future)
            future.add_done_callback(lambda done, batch=batch: self._deliver(done, batch))

    def _take_batch(self) -> list[_Item]:
        chosen = select_batch(
            [len(item.ids) for item in self._pending], self.limits, self.pass_cost_tokens, self.cost
        )
        chosen_set = set(chosen)
        batch = [self._pending[i] for i in chosen]
        self._pending = [item for i, item in enumerate(self._pending) if i not in chosen_set]
        self._pending_tokens -= sum(len(item.ids) for item in batch)
        self._in_pass.extend(batch)
        if not self._pending:
            self._wakeup.clear()
        self._queue_depth.set(len(self._pending))
        self._inflight.inc(len(batch))
        lengths = [len(item.ids) for item in batch]
        metrics.BATCH_SIZE.labels(**self._labels).observe(len(batch))
        metrics.BATCH_TOKENS.labels(**self._labels).observe(self.cost(lengths))
        return batch

    def _timed_forward(self, batch: list[_Item]) -> np.ndarray:
        started = time.perf_counter()
        result = self._forward([item.ids for item in batch], [item.prompt_length for item in batch])
        self.last_batch_seconds = seconds = time.perf_counter() - started
        tokens = sum(len(item.ids) for item in batch)
        if 2 * len(batch) >= self.limits.max_batch_size or 4 * tokens >= self.limits.max_batch_tokens:
            self.seconds_per_token = 0.8 * self.seconds_per_token + 0.2 * seconds / tokens
        return result

    def _deliver(self, done: asyncio.Future[np.ndarray], batch: list[_Item]) -> None:
        self._running.discard(done)
        self._inflight.dec(len(batch))
        in_batch = set(map(id, batch))
        self._in_pass = [item for item in self._in_pass if id(item) not in in_batch]
        error = done.exception()
        for row, item in enumerate(batch):
            if item.future.done():  # the caller went away
                continue
            if error is not None:
                item.future.set_exception(error)
            else:
                item.future.set_result(done.result()[row])
