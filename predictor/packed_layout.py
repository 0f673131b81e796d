"""The inputs of kembed's packed OpenVINO IR: linear layers on real tokens only, attention on grids.

Why: a padded batch of mixed lengths pays for its longest row in every row of every linear layer,
nearly all of an encoder's work; served one text per request, the batcher sees only the few texts
that arrived during the last pass, so its padded batches were about a third real tokens. The packed
IR (`kembed-export` writes it for BERT-family models, `packed_graph.py`) takes the batch's tokens
end to end, `input_ids` and `position_ids` [T]. Attention needs rows apart: each layer gathers its
fused query/key/value rows (`gather`) into two padded grids, [R0, L0] for the shorter rows and
[R1, L1] for the longer ones (keys masked by `attention_mask_0` and `attention_mask_1`), and takes
them back by `scatter` [T]. Two grids, because attention on one grid padded to a batch's longest row
costs several times the linear layers when one long text joins short ones; the split is the one that
makes the grids cheapest. The output is both grids' `last_hidden_state`, flat [R0 L0 + R1 L1, H]:
each grid is a padded batch, pooled as one (`pool_padded_numpy`).

T is rounded up to `multiple` with pad tokens that belong to no row (their states are never read),
and the grids' lengths as a padded batch's: fewer distinct shapes, whose kernels OpenVINO keeps. A
batch that does not split has a 1 x 1 first grid that nobody reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kembed.model_spec import Pooling
from kembed.tokenization import padded_length
from predictor.pooling import PromptLengths, pool_padded_numpy

PACKED_INPUTS = ("input_ids", "position_ids", "gather", "attention_mask_0", "attention_mask_1", "scatter")
# Attention on the grids, in tokens of linear-layer work per rows x length^2 / hidden: measured on
# MiniLM-L6 with OpenVINO's CPU plugin (bf16), attention, its transposes and gathers take ~0.2 us per
# grid row x length^2, the linear layers ~70 us per token. The batcher's cost model uses it.
ATTENTION_WEIGHT = 1.5


@dataclass(frozen=True)
class Grids:
    """Rows in ascending length; the first `split` form grid 0, the rest grid 1."""

    order: np.ndarray  # [B] caller's row index of each sorted row
    split: int
    lengths: tuple[int, int]  # L0, L1 (L0 = 1 for an unread 1 x 1 grid when split is 0)

    def rows(self, grid: int) -> np.ndarray:
        return self.order[: self.split] if grid == 0 else self.order[self.split :]


def _cheapest_split(padded: list[int]) -> tuple[int, int]:
    """(split, area) over ascending padded lengths: grid 0 takes the first `split` rows."""
    count, longest = len(padded), padded[-1]
    best_split, best_area = 0, 1 + count * longest * longest
    for split in range(1, count):
        area = split * padded[split - 1] ** 2 + (count - split) * longest * longest
        if area < best_area:
            best_split, best_area = split, area
    return best_split, best_area


def split_grids(lengths: Sequence[int], multiple: int) -> Grids:
    """The cheapest split of the rows, by length, into a short grid and a long one."""
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    padded = [padded_length(int(lengths[i]), multiple) for i in order]
    split, _ = _cheapest_split(padded)
    return Grids(order, split, (padded[split - 1] if split else 1, padded[-1]))


def packed_inputs(
    rows: Sequence[np.ndarray], pad_id: int = 0, multiple: int = 1
) -> tuple[dict[str, np.ndarray], Grids]:
    """The packed IR's inputs for these rows (caller's order), and how its output splits into grids.
    The grids' lengths are rounded up to `multiple` (pass a length L >= the longest row as `multiple`
    for exactly L in one grid, as `pad_batch` does)."""
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    grids = split_grids(lengths.tolist(), multiple)
    tokens = int(lengths.sum())
    total = -(-tokens // multiple) * multiple
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ids = np.full(total, pad_id, dtype=np.int64)
    ids[:tokens] = np.concatenate(rows)
    positions = np.zeros(total, dtype=np.int64)
    positions[:tokens] = np.arange(tokens) - np.repeat(starts, lengths)
    scatter = np.zeros(total, dtype=np.int64)  # pad tokens read slot 0; nobody reads them
    gathers, masks, offset = [], [], 0
    for grid, length in enumerate(grids.lengths):
        members = grids.rows(grid)
        if len(members) == 0:  # the unread 1 x 1 grid: token 0, as its own key
            gathers.append(np.zeros(1, dtype=np.int64))
            masks.append(np.ones((1, 1), dtype=np.int64))
            offset += 1
            continue
        slot = np.arange(length)[None, :]
        present = slot < lengths[members][:, None]  # [rows, length]
        first = starts[members][:, None]
        # Masked slots point at their row's first token: as keys they are masked, as queries their
        # output is never scattered back.
        gathers.append(np.where(present, first + slot, first).reshape(-1))
        masks.append(present.astype(np.int64))
        scatter[np.concatenate([starts[r] + np.arange(lengths[r]) for r in members])] = offset + np.flatnonzero(present)
        offset += present.size
    inputs = {"input_ids": ids, "position_ids": positions, "gather": np.concatenate(gathers),
              "attention_mask_0": masks[0], "attention_mask_1": masks[1], "scatter": scatter}
    return inputs, grids


def packed_cost(lengths: Sequence[int], multiple: int, hidden: int) -> int:
    """Tokens of work in a packed batch: its tokens (rounded as packed) and its attention grids."""
    if not lengths:
        return 0
    tokens = -(-sum(lengths) // multiple) * multiple
    _, area = _cheapest_split(sorted(padded_length(length, multiple) for length in lengths))
    return tokens + int(ATTENTION_WEIGHT * area / hidden)


def pool_grids(
    states: np.ndarray, inputs: dict[str, np.ndarray], grids: Grids, pooling: Pooling,
    prompt_lengths: PromptLengths = None,
) -> np.ndarray:
    """The packed IR's flat [R0 L0 + R1 L1, H] output to [B, D] pooled rows in the caller's order:
    each grid is a padded batch."""
    states = np.asarray(states)
    prompts = None if prompt_lengths is None else np.asarray(prompt_lengths, dtype=np.int64).reshape(-1)
    out: np.ndarray | None = None
    offset = 0
    for grid in (0, 1):
        mask = inputs[f"attention_mask_{grid}"]
        size = mask.size
        members = grids.rows(grid)
        if len(members):
            hidden = states[offset : offset + size].reshape(*mask.shape, states.shape[-1])
            pooled = pool_padded_numpy(hidden, mask, pooling, None if prompts is None else prompts[members])
            if out is None:
                out = np.empty((len(grids.order), pooled.shape[1]), dtype=np.float32)
            out[members] = pooled
        offset += size
    assert out is not None
    return out
