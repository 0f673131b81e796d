"""The model itself: padded token batches in, pooled float32 embeddings out."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from predictor.model_spec import ModelSpec
from predictor.tokenization import pad_batch


class Encoder:
    """A transformers encoder plus the pooling its sentence-transformers config asks for.

    Not thread-safe by design: the batcher calls it from one worker thread per device.
    """

    def __init__(self, spec: ModelSpec, device: str, dtype: str, pad_id: int = 0):
        from transformers import AutoModel

        self.spec = spec
        self.device = torch.device(device)
        self.pad_id = pad_id
        model = AutoModel.from_pretrained(
            str(spec.model_dir),
            local_files_only=True,
            dtype=getattr(torch, dtype),
            attn_implementation="sdpa",
        )
        self.model = model.to(self.device).eval()

    def __call__(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """Embeds unpadded id rows; the result is not normalized (that is per request)."""
        ids, mask = pad_batch(rows, self.pad_id)
        return self.forward(ids, mask)

    @torch.inference_mode()
    def forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        input_ids = torch.from_numpy(ids).to(self.device, non_blocking=True)
        attention_mask = torch.from_numpy(mask).to(self.device, non_blocking=True)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = pool(hidden, attention_mask, self.spec.pooling)
        return pooled.float().cpu().numpy()

    def measure_pass_cost_tokens(self, pad_id: int = 0, repeats: int = 2) -> float:
        """The fixed cost of one forward pass, in tokens: how many tokens of work a pass costs
        before its first token. Fits time = fixed + per_token x tokens through a 1 x 16 and an
        8 x 64 batch; this is also the warm-up. Small on a CPU, large on a GPU."""
        small = [np.full(16, pad_id, dtype=np.int64)]
        large = [np.full(64, pad_id, dtype=np.int64)] * 8

        def best_seconds(rows: list[np.ndarray]) -> float:
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                self(rows)
                timings.append(time.perf_counter() - started)
            return min(timings)

        self(small)  # first pass: allocations and kernel selection, not representative
        t_small, t_large = best_seconds(small), best_seconds(large)
        per_token = max(t_large - t_small, 1e-9) / (8 * 64 - 16)
        return max(0.0, t_small / per_token - 16)

    def memory_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return 0


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def finish(embeddings: np.ndarray, normalize: bool, dimensions: int | None) -> np.ndarray:
    """Matryoshka cut, then L2 normalization (so a cut vector is unit length again)."""
    if dimensions is not None:
        embeddings = embeddings[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        embeddings = embeddings / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(embeddings, dtype=np.float32)
