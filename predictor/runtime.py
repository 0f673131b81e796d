"""What every runtime shares: the batch cost model, warm-up and the measurements the batcher starts
from. Pooling (`pooling.py`) and what follows it (`postprocess.py`) are shared too. No torch import
here: the OpenVINO runtime never loads it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kembed.model_spec import ModelSpec
from kembed.tokenization import padded_tokens
from predictor.pooling import PromptLengths


@dataclass(frozen=True)
class Speed:
    pass_cost_tokens: float  # the fixed cost of a forward pass, in tokens of work
    seconds_per_token: float  # of a well-filled pass


class Runtime:
    """Token-id rows in, float32 vectors out: pooled and through the model's head (its final Normalize
    is per request, `postprocess.finish`).

    Subclasses set `backend`, `dtype`, `packed` and implement `__call__`. The batcher calls a runtime
    from at most `parallel_passes` worker threads at once (1 unless the runtime says otherwise).
    """

    spec: ModelSpec
    pad_id: int = 0
    backend: str = ""
    dtype: str = "float32"
    packed: bool = False
    min_cosine: float | None = None  # measured against float32 when dtype is reduced
    parallel_passes: int = 1  # passes the batcher may run at once (OpenVINO: one per stream)
    pad_to_multiple_of: int = 1  # a padded batch's length is rounded up to this (repeated shapes)
    allowed_lengths: tuple[int, ...] = ()  # when set, the only padded lengths (int8: those its check passed)

    def __call__(self, rows: Sequence[np.ndarray], prompt_lengths: PromptLengths = None) -> np.ndarray:
        raise NotImplementedError

    def batch_cost(self, lengths: Sequence[int]) -> int:
        """Tokens of work in a batch: its real tokens when packed, rows x longest (rounded up to
        `pad_to_multiple_of`, and to `allowed_lengths` where set) when padded."""
        if self.packed:
            return sum(lengths)
        return padded_tokens(lengths, self.pad_to_multiple_of, self.allowed_lengths)

    def measure_speed(self, max_batch_size: int, max_batch_tokens: int, pass_cost: bool = True) -> Speed:
        """What the batcher starts from, measured here: seconds per token of a filled pass (up to
        4 x 64 tokens) and, with `pass_cost`, the fixed cost of a pass in tokens, fitting
        time = fixed + per_token x tokens through that pass and a 1 x 16 one (small on a CPU, large on
        a GPU). Each shape runs twice and the faster run counts: the first is that shape's warm-up,
        where allocations and kernel selection happen (here, not in the first request)."""
        length = min(64, self.spec.max_seq_length)
        count = max(1, min(max_batch_size, max_batch_tokens // length, 4))
        large_tokens = length * count
        t_large = self._best_seconds([np.full(length, self.pad_id, dtype=np.int64)] * count)
        seconds_per_token = t_large / large_tokens
        if not pass_cost:
            return Speed(0.0, seconds_per_token)
        small = min(16, self.spec.max_seq_length)
        t_small = self._best_seconds([np.full(small, self.pad_id, dtype=np.int64)])
        per_token = max(t_large - t_small, 1e-9) / max(large_tokens - small, 1)
        return Speed(max(0.0, t_small / per_token - small), seconds_per_token)

    def _best_seconds(self, rows: list[np.ndarray], runs: int = 2) -> float:
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            self(rows)
            timings.append(time.perf_counter() - started)
        return min(timings)

    def memory_bytes(self) -> int:
        return 0
