"""Packed ("varlen") batches: every token of every text in one [tokens, hidden] matrix, no padding.

Why: on a CPU a padded batch pays for its longest text in every row, so a batch of mixed lengths can
be slower than the same texts one by one. The linear layers (nearly all the work of an encoder) see
only real tokens here. Attention is the one step that needs sequences apart: texts are sorted by
length and cut into groups whose padded area stays within `ATTENTION_SLACK` of their real tokens;
each group runs one SDPA call (unmasked when its lengths are equal). A batch's cost is then its token
count, whatever the mix of lengths, and the batcher need not group by length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

ATTENTION_SLACK = 1.2  # padded positions per real token allowed inside one attention group


@dataclass(frozen=True)
class AttentionGroup:
    start: int  # first packed token of the group
    tokens: int  # real tokens in the group
    rows: int
    length: int  # longest row of the group
    gather: torch.Tensor | None  # [rows * length] packed positions; None when the group needs no padding
    mask: torch.Tensor | None  # [rows, 1, 1, length] keys to attend to
    valid: torch.Tensor | None  # [tokens] positions of real tokens in the padded group


@dataclass(frozen=True)
class PackedBatch:
    """Rows of token ids packed in ascending-length order, with what pooling and attention need."""

    ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T] position of each token within its row
    row_of_token: torch.Tensor  # [T] index of each token's row in the caller's order
    first_token: torch.Tensor  # [B] packed position of each row's first token, caller's order
    lengths: torch.Tensor  # [B] caller's order
    groups: tuple[AttentionGroup, ...]

    @classmethod
    def from_rows(cls, rows: Sequence[np.ndarray], device: torch.device) -> PackedBatch:
        lengths = np.array([len(row) for row in rows], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        sorted_lengths = lengths[order]
        starts = np.concatenate([[0], np.cumsum(sorted_lengths)[:-1]])
        first_token = np.empty_like(starts)
        first_token[order] = starts

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(device, non_blocking=True)

        groups = tuple(
            _attention_group(sorted_lengths[first:last], int(starts[first]), tensor)
            for first, last in attention_group_bounds(sorted_lengths)
        )
        return cls(
            ids=tensor(np.concatenate([rows[i] for i in order]).astype(np.int64, copy=False)),
            positions=tensor(np.concatenate([np.arange(n) for n in sorted_lengths])),
            row_of_token=tensor(np.repeat(order, sorted_lengths)),
            first_token=tensor(first_token),
            lengths=tensor(lengths),
            groups=groups,
        )

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def attention(self, qkv: torch.Tensor, heads: int) -> torch.Tensor:
        """Self-attention per row: [T, 3H] fused projections in, [T, H] out."""
        hidden = qkv.shape[1] // 3
        out = qkv.new_empty(qkv.shape[0], hidden)
        for group in self.groups:
            unpadded = group.gather is None
            source = qkv[group.start : group.start + group.tokens] if unpadded else qkv[group.gather]
            q, k, v = source.view(group.rows, group.length, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=group.mask)
            attended = attended.transpose(1, 2).reshape(group.rows * group.length, hidden)
            if group.valid is not None:
                attended = attended[group.valid]
            out[group.start : group.start + group.tokens] = attended
        return out


def attention_group_bounds(sorted_lengths: np.ndarray) -> list[tuple[int, int]]:
    """[first, last) ranges of the ascending lengths: a row joins the current group while the group's
    padded area (rows x longest) stays within ATTENTION_SLACK x its real tokens."""
    bounds, first, tokens = [], 0, 0
    for index, length in enumerate(sorted_lengths.tolist()):
        rows = index - first + 1
        if index > first and rows * length > ATTENTION_SLACK * (tokens + length):
            bounds.append((first, index))
            first, tokens = index, 0
        tokens += length
    bounds.append((first, len(sorted_lengths)))
    return bounds


def _attention_group(
    lengths: np.ndarray, start: int, tensor: Callable[[np.ndarray], torch.Tensor]
) -> AttentionGroup:
    rows, longest, tokens = len(lengths), int(lengths[-1]), int(lengths.sum())
    if int(lengths[0]) == longest:
        return AttentionGroup(start, tokens, rows, longest, None, None, None)
    present = np.arange(longest) < lengths[:, None]  # [rows, longest]
    # Padding positions may point at any token: as keys they are masked out, and their outputs
    # as queries are dropped (`valid`).
    gather = np.full((rows, longest), start, dtype=np.int64)
    gather[present] = np.arange(start, start + tokens)
    return AttentionGroup(
        start, tokens, rows, longest,
        gather=tensor(gather.reshape(-1)),
        mask=tensor(present[:, None, None, :]),
        valid=tensor(np.flatnonzero(present)),
    )
