"""Token states to one vector per text, for every sentence-transformers pooling mode.

Three inputs, one meaning: packed torch batches (`pool_packed`, the native backend), padded torch
batches (`pool_padded`, transformers' AutoModel) and padded numpy arrays (`pool_padded_numpy`, for
runtimes without torch). Padding may be on either side. Each follows sentence-transformers' Pooling:

- cls: the first token; mean; max; mean_sqrt_len_tokens: the sum over sqrt(token count);
  weightedmean: token i (from 1 at the row's first token) weighs i; lasttoken: the last real token.
- ``include_prompt=False``: the first ``prompt_lengths[row]`` tokens of a row (its prompt, counted as
  sentence-transformers counts it, see `kembed.tokenization.TextTokenizer.prompt_length`) are left
  out of the pooling; weightedmean keeps the remaining tokens' original weights. kembed batches
  requests with different prompts together, so the count is per row. At least one token is always
  pooled (sentence-transformers would pool nothing into a zero vector).
- several modes: their vectors concatenated in order.

Sums accumulate in float32 whatever the model's dtype; the result is float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kembed.model_spec import Pooling

if TYPE_CHECKING:  # torch is imported where a torch path runs: numpy-only runtimes never load it
    import torch

    from predictor.packing import PackedBatch

PromptLengths = Sequence[int] | np.ndarray | None


def _skips(prompt_lengths: PromptLengths, rows: int, lengths: Callable[[], np.ndarray], pooling: Pooling) -> np.ndarray:
    """Leading tokens to leave out per row: the prompt when it is excluded, never the whole row.
    ``lengths`` is only called when there is something to leave out (on a GPU it waits for the device)."""
    skips = np.zeros(rows, dtype=np.int64)
    if pooling.include_prompt or prompt_lengths is None:
        return skips
    skips = np.asarray(prompt_lengths, dtype=np.int64).reshape(-1)
    if len(skips) != rows:
        raise ValueError(f"{len(skips)} prompt lengths for {rows} rows")
    if not skips.any():
        return skips
    return np.clip(skips, 0, np.maximum(lengths() - 1, 0))


# --- torch ------------------------------------------------------------------------------------

def _pool_tokens(
    states: torch.Tensor,
    row_of_token: torch.Tensor,
    position: torch.Tensor,
    first: torch.Tensor,
    last: torch.Tensor,
    real: torch.Tensor | None,
    skip: torch.Tensor,
    modes: tuple[str, ...],
) -> torch.Tensor:
    """The torch pooling over a flat [N, H] token matrix.

    row_of_token, position (from 0 at the row's first real token): [N]; real: [N] bool or None;
    first, last: [B] flat index of each row's first and last real token; skip: [B].
    """
    import torch

    rows = first.shape[0]
    states = states.float()
    kept = position >= skip[row_of_token]
    if real is not None:
        kept &= real
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(states[first + skip])
        elif mode == "lasttoken":
            out.append(states[last])
        elif mode == "max":
            index = row_of_token.unsqueeze(1).expand_as(states)
            masked = states.masked_fill(~kept.unsqueeze(1), float("-inf"))
            empty = states.new_full((rows, states.shape[1]), float("-inf"))
            out.append(empty.scatter_reduce(0, index, masked, reduce="amax"))
        else:
            weights = kept.to(torch.float32)
            if mode == "weightedmean":
                weights = weights * (position + 1)
            sums = states.new_zeros(rows, states.shape[1]).index_add_(0, row_of_token, states * weights.unsqueeze(1))
            total = states.new_zeros(rows).index_add_(0, row_of_token, weights).clamp(min=1e-9)
            if mode == "mean_sqrt_len_tokens":
                total = total.sqrt()
            out.append(sums / total.unsqueeze(1))
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def pool_packed(
    states: torch.Tensor, batch: PackedBatch, pooling: Pooling, prompt_lengths: PromptLengths = None
) -> torch.Tensor:
    """[T, H] token states of a `packing.PackedBatch` to [B, H x modes] in the caller's row order."""
    import torch

    skips = _skips(prompt_lengths, batch.rows, lambda: batch.lengths.cpu().numpy(), pooling)
    skip = torch.from_numpy(skips).to(states.device)
    first = batch.first_token
    return _pool_tokens(
        states, batch.row_of_token, batch.positions, first, first + batch.lengths - 1, None, skip, pooling.modes
    )


def pool_padded(
    hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling, prompt_lengths: PromptLengths = None
) -> torch.Tensor:
    """[B, L, H] torch states and their [B, L] mask (0/1, left or right padding) to [B, H x modes]."""
    import torch

    rows, length, width = hidden.shape
    mask = attention_mask.to(torch.bool)
    lengths = mask.sum(dim=1)
    offsets = torch.arange(rows, device=hidden.device) * length
    first_position = mask.to(torch.int32).argmax(dim=1)
    last_position = length - 1 - mask.flip(1).to(torch.int32).argmax(dim=1)
    position = torch.arange(length, device=hidden.device).unsqueeze(0) - first_position.unsqueeze(1)
    skips = _skips(prompt_lengths, rows, lambda: lengths.cpu().numpy(), pooling)
    skip = torch.from_numpy(skips).to(hidden.device)
    return _pool_tokens(
        hidden.reshape(rows * length, width),
        torch.arange(rows, device=hidden.device).repeat_interleave(length),
        position.reshape(-1),
        offsets + first_position,
        offsets + last_position,
        mask.reshape(-1),
        skip,
        pooling.modes,
    )


# --- numpy ------------------------------------------------------------------------------------

def pool_padded_numpy(
    hidden: np.ndarray, attention_mask: np.ndarray, pooling: Pooling, prompt_lengths: PromptLengths = None
) -> np.ndarray:
    """[B, L, H] numpy states and their [B, L] mask (0/1, left or right padding) to [B, H x modes]."""
    hidden = np.asarray(hidden, dtype=np.float32)
    mask = np.asarray(attention_mask).astype(bool)
    rows, length, _ = hidden.shape
    lengths = mask.sum(axis=1)
    first = mask.argmax(axis=1)
    last = length - 1 - mask[:, ::-1].argmax(axis=1)
    skip = _skips(prompt_lengths, rows, lambda: lengths, pooling)
    position = np.arange(length)[None, :] - first[:, None]  # [B, L]
    kept = mask & (position >= skip[:, None])
    every_row = np.arange(rows)
    out = []
    for mode in pooling.modes:
        if mode == "cls":
            out.append(hidden[every_row, first + skip])
        elif mode == "lasttoken":
            out.append(hidden[every_row, last])
        elif mode == "max":
            out.append(np.where(kept[:, :, None], hidden, -np.inf).max(axis=1))
        else:
            weights = kept * (position + 1) if mode == "weightedmean" else kept
            weights = weights.astype(np.float32)
            sums = np.einsum("bl,blh->bh", weights, hidden)
            total = np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
            out.append(sums / (np.sqrt(total) if mode == "mean_sqrt_len_tokens" else total))
    pooled = out[0] if len(out) == 1 else np.concatenate(out, axis=1)
    return np.ascontiguousarray(pooled, dtype=np.float32)
