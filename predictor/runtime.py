"""What every runtime shares: the batch cost model, warm-up and the measurements the batcher starts
from. Pooling (`pooling.py`) and what follows it (`postprocess.py`) are shared too. No torch import
here: the OpenVINO runtime never loads it."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from kembed.model_spec import ModelSpec
from kembed.tokenization import padded_tokens
from predictor.pooling import PromptLengths


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

    def warm_up(self) -> None:
        """One pass with a padded attention group: allocations and kernel selection happen here,
        not in the first request."""
        longest = min(16, self.spec.max_seq_length)
        self([np.full(length, self.pad_id, dtype=np.int64) for length in (longest, max(1, longest - 4))])

    def measure_pass_cost_tokens(self, repeats: int = 2) -> float:
        """The fixed cost of one forward pass, in tokens: how many tokens of work a pass costs
        before its first token. Fits time = fixed + per_token x tokens through a 1 x 16 and a
        4 x 64 batch; this is also the warm-up. Small on a CPU, large on a GPU."""
        small = [np.full(16, self.pad_id, dtype=np.int64)]
        large = [np.full(64, self.pad_id, dtype=np.int64)] * 4

        def best_seconds(rows: list[np.ndarray]) -> float:
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                self(rows)
                timings.append(time.perf_counter() - started)
            return min(timings)

        self.warm_up()
        t_small, t_large = best_seconds(small), best_seconds(large)
        per_token = max(t_large - t_small, 1e-9) / (4 * 64 - 16)
        return max(0.0, t_small / per_token - 16)

    def measure_seconds_per_token(self, max_batch_size: int, max_batch_tokens: int) -> float:
        """Seconds per token of a well-filled pass (the batcher's first estimate of queue wait)."""
        length = min(64, self.spec.max_seq_length)
        count = max(1, min(max_batch_size, max_batch_tokens // length, 8))
        rows = [np.full(length, self.pad_id, dtype=np.int64)] * count
        started = time.perf_counter()
        self(rows)
        return (time.perf_counter() - started) / (length * len(rows))

    def memory_bytes(self) -> int:
        return 0
