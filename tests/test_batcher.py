"""The dynamic batcher on its own, driven by a real (deterministic) forward function."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from kembed.errors import QueueFull, Unavailable
from kembed.tokenization import padded_tokens
from predictor.batcher import Batcher, BatchLimits, select_batch


class RecordingForward:
    """Embeds a row as [first id, length, sum]; records each batch's lengths."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches: list[list[int]] = []
        self.gate = gate

    def __call__(self, rows: list[np.ndarray], prompt_lengths: list[int]) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append([len(row) for row in rows])
        return np.array([[row[0], len(row), row.sum()] for row in rows], dtype=np.float32)


def row(first: int, length: int) -> np.ndarray:
    return np.arange(first, first + length, dtype=np.int64)


FREE_PASSES = 1e9  # a pass cost so high that padding never keeps an item out


def test_select_batch_takes_oldest_and_nearest_lengths() -> None:
    limits = BatchLimits(max_batch_size=3, max_batch_tokens=10_000)
    lengths = [50, 5, 48, 200, 51, 52]
    assert select_batch(lengths, limits, FREE_PASSES) == [0, 2, 4]


def test_select_batch_honours_token_budget() -> None:
    limits = BatchLimits(max_batch_size=32, max_batch_tokens=100)
    chosen = select_batch([30, 30, 30, 30, 30], limits, FREE_PASSES)
    assert chosen == [0, 1, 2]
    assert padded_tokens([30] * len(chosen)) <= 100


def test_select_batch_always_takes_the_oldest_even_when_it_alone_is_over_budget() -> None:
    limits = BatchLimits(max_batch_size=4, max_batch_tokens=64)
    assert select_batch([100, 3, 3], limits, FREE_PASSES) == [0]


def test_select_batch_joins_only_when_cheaper_than_a_pass_of_its_own() -> None:
    limits = BatchLimits(max_batch_size=32, max_batch_tokens=10_000)
    # pass cost 40 tokens: a 10-token item next to a 200-token one would cost 190 padded tokens
    # more than running alone, so it waits; items within 40 tokens of each other batch together
    assert select_batch([200, 10, 190, 12, 170], limits, pass_cost_tokens=40) == [0, 2, 4]
    assert select_batch([10, 200, 12, 190, 30], limits, pass_cost_tokens=40) == [0, 2, 4]
    # the longer item may join while the padding it adds to the others stays under one pass
    assert select_batch([20, 30], limits, pass_cost_tokens=10) == [0, 1]
    assert select_batch([20, 20, 20, 30], limits, pass_cost_tokens=10) == [0, 1, 2]


def test_select_batch_with_a_packed_cost_joins_mixed_lengths_up_to_the_token_budget() -> None:
    """A packed encoder pays real tokens, not padding: the items the padded cost keeps apart join."""
    limits = BatchLimits(max_batch_size=32, max_batch_tokens=420)
    assert select_batch([200, 10, 190, 12, 170], limits, pass_cost_tokens=40, cost=sum) == [0, 1, 2, 3]


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchLimits(max_batch_size=0)
    with pytest.raises(ValueError, match="queue_size"):
        BatchLimits(queue_size=0)


def test_results_return_in_order_to_their_own_requests_under_concurrency() -> None:
    forward = RecordingForward()
    batcher = Batcher(
        forward, BatchLimits(max_batch_size=8, max_batch_tokens=4096), pass_cost_tokens=64
    )

    async def run() -> list[tuple[list[np.ndarray], np.ndarray]]:
        rng = np.random.default_rng(3)
        requests = [
            [row(int(rng.integers(0, 10_000)), int(rng.integers(1, 60))) for _ in range(int(rng.integers(1, 6)))]
            for _ in range(50)
        ]
        results = await asyncio.gather(*(batcher.embed(rows) for rows in requests))
        return list(zip(requests, results, strict=True))

    pairs = asyncio.run(run())
    for rows, result in pairs:
        expected = np.array([[r[0], len(r), r.sum()] for r in rows], dtype=np.float32)
        np.testing.assert_array_equal(result, expected)
    assert max(len(batch) for batch in forward.batches) <= 8
    assert sum(len(batch) for batch in forward.batches) == sum(len(rows) for rows, _ in pairs)
    assert len(forward.batches) < len(pairs), "concurrent requests should share forward passes"


def test_batches_respect_size_and_token_limits() -> None:
    gate = threading.Event()
    forward = RecordingForward(gate)
    limits = BatchLimits(max_batch_size=4, max_batch_tokens=120)
    batcher = Batcher(forward, limits, pass_cost_tokens=FREE_PASSES)

    async def run() -> None:
        blocker = asyncio.ensure_future(batcher.embed([row(0, 3)]))
        await asyncio.sleep(0.05)  # the worker is now held by the gate; everything else queues
        # 40- and 10-token rows interleaved: first-come batching would mix them
        lengths = [40, 10] * 6 + [10, 10, 10]
        work = asyncio.ensure_future(batcher.embed([row(i, n) for i, n in enumerate(lengths)]))
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(blocker, work)

    asyncio.run(run())
    batches = forward.batches[1:]
    assert sum(len(b) for b in batches) == 15
    for batch in batches:
        assert len(batch) <= 4
        assert padded_tokens(batch) <= 120
    # length grouping: no batch mixes the 10-token rows with the 40-token rows
    assert all(len(set(batch)) == 1 for batch in batches)


def test_a_lone_request_does_not_wait_and_items_that_arrive_during_a_pass_share_the_next() -> None:
    """No latency window: a request alone runs at once; what queues while a pass runs is the next batch."""
    gate = threading.Event()
    forward = RecordingForward(gate)
    batcher = Batcher(forward, BatchLimits(max_batch_size=16), pass_cost_tokens=FREE_PASSES)

    async def run() -> None:
        gate.set()
        await asyncio.wait_for(batcher.embed([row(1, 5)]), 10)
        gate.clear()
        first = asyncio.ensure_future(batcher.embed([row(2, 6)]))
        await asyncio.sleep(0.05)  # the worker now holds [6] at the gate
        later = [asyncio.ensure_future(batcher.embed([row(3 + i, 7)])) for i in range(3)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, *later), 10)

    asyncio.run(run())
    assert forward.batches == [[5], [6], [7, 7, 7]]


def test_full_queue_raises_queue_full_with_retry_after() -> None:
    gate = threading.Event()
    batcher = Batcher(RecordingForward(gate), BatchLimits(max_batch_size=64, queue_size=4))

    async def run() -> None:
        running = asyncio.ensure_future(batcher.embed([row(0, 3)]))
        await asyncio.sleep(0.05)  # the worker holds the first pass at the gate
        batcher.admit()  # the queue is empty: admitted
        queued = asyncio.ensure_future(batcher.embed([row(i, 3) for i in range(4)]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as info:
            await batcher.embed([row(9, 3)])
        assert info.value.retry_after >= 1 and info.value.status == 429
        with pytest.raises(QueueFull):
            batcher.admit()
        gate.set()
        await asyncio.gather(running, queued)
        batcher.admit()

    asyncio.run(run())


def test_cancelled_request_does_not_break_the_batch() -> None:
    forward = RecordingForward()
    batcher = Batcher(forward, BatchLimits(max_batch_size=16))

    async def run() -> np.ndarray:
        gone = asyncio.ensure_future(batcher.embed([row(1, 4)]))
        kept = asyncio.ensure_future(batcher.embed([row(2, 4)]))
        await asyncio.sleep(0.01)
        gone.cancel()
        result = await kept
        return result

    result = asyncio.run(run())
    np.testing.assert_array_equal(result, [[2, 4, 2 + 3 + 4 + 5]])


def test_forward_errors_reach_every_waiting_request() -> None:
    def broken(rows: list[np.ndarray], prompt_lengths: list[int]) -> np.ndarray:
        raise RuntimeError("device lost")

    batcher = Batcher(broken, BatchLimits())

    async def run() -> None:
        results = await asyncio.gather(batcher.embed([row(1, 3)]), batcher.embed([row(2, 3)]), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "device lost" in str(r) for r in results)

    asyncio.run(run())


def test_queue_is_bounded_in_expected_wait() -> None:
    """At 10 ms per token and a 1 s bound, 50 tokens may wait but 50 + 60 may not; a lone request
    longer than the bound is still taken when nothing waits."""
    gate = threading.Event()
    limits = BatchLimits(max_batch_size=1, max_queue_seconds=1.0)
    batcher = Batcher(RecordingForward(gate), limits, seconds_per_token=0.01)

    async def run() -> None:
        running = asyncio.ensure_future(batcher.embed([row(0, 200)]))
        await asyncio.sleep(0.05)  # in its pass (held by the gate), so nothing waits
        waiting = asyncio.ensure_future(batcher.embed([row(1, 50)]))
        await asyncio.sleep(0)
        batcher.admit()  # 50 tokens wait: admitted
        with pytest.raises(QueueFull, match="expected wait") as info:
            await batcher.embed([row(2, 60)])
        assert info.value.retry_after >= 1
        batcher.last_batch_seconds = 0.6  # the running pass now counts: 0.6 + 0.5 s > 1 s
        with pytest.raises(QueueFull, match="expected wait"):
            batcher.admit()
        gate.set()
        await asyncio.gather(running, waiting)

    asyncio.run(run())


def test_work_older_than_the_clients_timeout_gets_no_pass() -> None:
    gate = threading.Event()
    forward = RecordingForward(gate)
    batcher = Batcher(forward, BatchLimits(max_batch_size=1, max_wait_seconds=0.1))

    async def run() -> None:
        first = asyncio.ensure_future(batcher.embed([row(0, 4)]))
        await asyncio.sleep(0.05)
        stale = asyncio.ensure_future(batcher.embed([row(1, 7)]))
        await asyncio.sleep(0.2)
        gate.set()
        await first
        with pytest.raises(Unavailable, match="client's timeout"):
            await stale

    asyncio.run(run())
    assert forward.batches == [[4]]


def test_drain_answers_what_cannot_finish_in_time_with_unavailable() -> None:
    """Draining with 0.5 s left at 10 ms per token: 20 queued tokens fit, the next 60 do not and
    are refused at once; a pass still running at the deadline is answered then."""
    gate = threading.Event()
    forward = RecordingForward(gate)
    batcher = Batcher(forward, BatchLimits(max_batch_size=1), seconds_per_token=0.01)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        running = asyncio.ensure_future(batcher.embed([row(0, 3)]))
        await asyncio.sleep(0.05)
        fits = asyncio.ensure_future(batcher.embed([row(1, 20)]))
        late = asyncio.ensure_future(batcher.embed([row(2, 60)]))
        await asyncio.sleep(0)
        batcher.drain(0.5)
        with pytest.raises(Unavailable, match="shutting down"):
            await asyncio.wait_for(late, 0.1)  # at once, not at the deadline
        with pytest.raises(Unavailable, match="shutting down"):
            await batcher.embed([row(3, 60)])
        started = loop.time()
        with pytest.raises(Unavailable):
            await running  # the gate holds its pass past the deadline
        assert loop.time() - started < 1.0
        gate.set()
        with pytest.raises(Unavailable):
            await fits

    asyncio.run(run())


def test_parallel_passes_run_at_once_and_one_pass_runs_alone() -> None:
    """With `parallel_passes=2` two batches are in the forward function at the same moment (each
    waits for the other at a barrier); with 1 the second pass waits and the barrier breaks."""

    def run(parallel: int) -> list[str]:
        barrier = threading.Barrier(2, timeout=1.0)
        outcomes: list[str] = []

        def forward(rows: list[np.ndarray], prompt_lengths: list[int]) -> np.ndarray:
            try:
                barrier.wait()
                outcomes.append("met")
            except threading.BrokenBarrierError:
                outcomes.append("alone")
            return np.array([[row[0], len(row), row.sum()] for row in rows], dtype=np.float32)

        async def main() -> None:
            batcher = Batcher(forward, BatchLimits(max_batch_size=1), parallel_passes=parallel)
            results = await asyncio.gather(batcher.embed([row(1, 4)]), batcher.embed([row(2, 4)]))
            assert [int(result[0][0]) for result in results] == [1, 2]

        asyncio.run(main())
        return outcomes

    assert run(2) == ["met", "met"]
    assert run(1)[0] == "alone"
    with pytest.raises(ValueError, match="parallel_passes"):
        Batcher(RecordingForward(), BatchLimits(), parallel_passes=0)
