"""The model itself: unpadded token-id rows in, pooled float32 embeddings out."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kembed.model_spec import ModelSpec
from kembed.tokenization import pad_batch, padded_tokens
from predictor import bert
from predictor.packing import PackedBatch
from predictor.pooling import PromptLengths, pool_packed, pool_padded
from predictor.postprocess import Head
from predictor.settings import BACKENDS

logger = logging.getLogger("kembed.predictor")

class Encoder:
    """The checkpoint's encoder plus the pooling and the modules after it (Dense, ...) that its
    sentence-transformers config asks for.

    Backend `native` is kembed's own BERT (`bert.py`: no transformers import, a faster cold start),
    `transformers` is `AutoModel` (any architecture), `auto` picks native when it can build the model.
    Not thread-safe by design: the batcher calls it from one worker thread per device.
    """

    def __init__(self, spec: ModelSpec, device: str, dtype: str, pad_id: int = 0, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.spec = spec
        self.device = torch.device(device)
        self.pad_id = pad_id
        self.head = Head(spec.head)
        unsupported = bert.unsupported_reason(spec.model_dir) if backend != "transformers" else "not asked for"
        if backend == "native" and unsupported:
            raise ValueError(f"backend 'native' cannot build {spec.model_dir}: {unsupported}")
        if unsupported:
            logger.info("transformers backend (native: %s)", unsupported)
            self.backend = "transformers"
            self.model = _transformers_model(spec.model_dir, self.device, getattr(torch, dtype))
        else:
            self.backend = "native"
            self.model = bert.load_bert(spec.model_dir, self.device, getattr(torch, dtype))

    @torch.inference_mode()
    def __call__(self, rows: Sequence[np.ndarray], prompt_lengths: PromptLengths = None) -> np.ndarray:
        """Embeds unpadded id rows (``prompt_lengths``: each row's leading prompt tokens, which pooling
        leaves out when the model says so); the model's final Normalize is per request, not here."""
        if self.packed:
            batch = PackedBatch.from_rows(rows, self.device)
            pooled = pool_packed(self.model(batch), batch, self.spec.pooling, prompt_lengths)
        else:
            ids, mask = pad_batch(rows, self.pad_id)
            input_ids = torch.from_numpy(ids).to(self.device, non_blocking=True)
            attention_mask = torch.from_numpy(mask).to(self.device, non_blocking=True)
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            pooled = pool_padded(hidden, attention_mask, self.spec.pooling, prompt_lengths)
        return self.head(pooled.float().cpu().numpy())

    @property
    def packed(self) -> bool:
        """Whether batches run packed (native backend) rather than padded (transformers)."""
        return self.backend == "native"

    def batch_cost(self, lengths: Sequence[int]) -> int:
        """Tokens of work in a batch: its real tokens when packed, rows x longest when padded."""
        return sum(lengths) if self.packed else padded_tokens(lengths)

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
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return 0


def _transformers_model(model_dir: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()
