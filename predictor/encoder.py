"""The torch runtimes (native packed BERT, transformers): unpadded token-id rows in, float32 vectors out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kembed.model_spec import ModelSpec
from kembed.tokenization import pad_batch
from predictor import bert
from predictor.packing import PackedBatch
from predictor.pooling import PromptLengths, pool_packed, pool_padded
from predictor.postprocess import Head
from predictor.precision import min_cosine, passes_gate, synthetic_gate_rows
from predictor.runtime import Runtime

TORCH_BACKENDS = ("auto", "native", "transformers")

logger = logging.getLogger("kembed.predictor")

class Encoder(Runtime):
    """The checkpoint's encoder in torch plus the pooling and the modules after it (Dense, ...) that its
    sentence-transformers config asks for.

    Backend `native` is kembed's own BERT (`bert.py`: no transformers import, a faster cold start),
    `transformers` is `AutoModel` (any architecture), `auto` picks native when it can build the model.
    A reduced dtype on the CPU (bf16) is loaded in fp32 first, so that the gate rows can be embedded both
    ways; `dtype_required=False` (dtype `auto`) falls back to fp32 when the gate fails, else it raises.
    """

    def __init__(
        self,
        spec: ModelSpec,
        device: str,
        dtype: str,
        pad_id: int = 0,
        backend: str = "auto",
        gate_rows: Sequence[np.ndarray] | None = None,
        dtype_required: bool = True,
    ):
        if backend not in TORCH_BACKENDS:
            raise ValueError(f"backend must be one of {TORCH_BACKENDS}, got {backend!r}")
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype (int8 needs --backend openvino)")
        self.spec = spec
        self.device = torch.device(device)
        self.pad_id = pad_id
        self.head = Head(spec.head)
        unsupported = bert.unsupported_reason(spec.model_dir) if backend != "transformers" else "not asked for"
        if backend == "native" and unsupported:
            raise ValueError(f"backend 'native' cannot build {spec.model_dir}: {unsupported}")
        if unsupported:
            logger.info("transformers backend (native: %s)", unsupported)
        self.backend = "transformers" if unsupported else "native"
        self.packed = self.backend == "native"
        gated = self.device.type == "cpu" and dtype != "float32"
        self.dtype = "float32" if gated else dtype
        self.model = self._load()
        if gated:
            self._reduce_precision(dtype, gate_rows or synthetic_gate_rows(spec.vocab_size), dtype_required)

    def _load(self) -> torch.nn.Module:
        if self.backend == "native":
            return bert.load_bert(self.spec.model_dir, self.device, getattr(torch, self.dtype))
        return _transformers_model(self.spec.model_dir, self.device, getattr(torch, self.dtype))

    def _reduce_precision(self, dtype: str, rows: Sequence[np.ndarray], required: bool) -> None:
        """Casts the fp32 model to `dtype` when the gate rows keep their direction (precision.py)."""
        reference = self(rows)
        self.model.to(getattr(torch, dtype))
        self.dtype = dtype
        self.min_cosine = min_cosine(reference, self(rows))
        measured = f"torch {self.backend} {dtype} vs float32 on {len(rows)} gate texts"
        if not passes_gate(dtype, self.min_cosine, required, measured):
            self.dtype = "float32"
            self.model = self._load()

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

    def memory_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return 0


def _transformers_model(model_dir: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()
