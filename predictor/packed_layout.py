"""The inputs of kembed's packed OpenVINO IR: linear layers on real tokens only, attention padded.

Why: a padded batch of mixed lengths pays for its longest row in every row of every linear layer,
nearly all of an encoder's work; served one text per request, the batcher sees only the few texts
that arrived during the last pass, so its padded batches were about a third real tokens. The packed
IR (`kembed-export` writes it for BERT-family models, `packed_graph.py`) takes the batch's tokens
end to end, `input_ids` and `position_ids` [T]; each layer gathers its fused query/key/value rows
into a padded [rows, length] grid for attention (`gather` [rows x length], keys masked by
`attention_mask` [rows, length]) and takes them back by `scatter` [T]. Its output is that grid's
`last_hidden_state` [rows, length, H], so pooling is the padded one (`pool_padded_numpy`).

T is rounded up to `multiple` with pad tokens that belong to no row (their states are never read)
and the grid's length as for a padded batch: fewer distinct shapes, whose kernels OpenVINO keeps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kembed.tokenization import padded_length

PACKED_INPUTS = ("input_ids", "position_ids", "gather", "attention_mask", "scatter")
# Attention on the padded grid, in token units per rows x length^2 / hidden: fitted on MiniLM-L6
# with OpenVINO's CPU plugin (bf16), where a 256-token row among 16-token ones costs several times
# its tokens. The batcher's cost model keeps long rows out of short batches with it.
ATTENTION_WEIGHT = 4.0


def packed_inputs(rows: Sequence[np.ndarray], pad_id: int = 0, multiple: int = 1) -> dict[str, np.ndarray]:
    """The packed IR's inputs for these rows (caller's order), the grid `multiple`-rounded (pass a
    length L >= the longest row as `multiple` for exactly L, as `pad_batch` does)."""
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    length = padded_length(int(lengths.max()), multiple)
    tokens = int(lengths.sum())
    total = -(-tokens // multiple) * multiple
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ids = np.full(total, pad_id, dtype=np.int64)
    ids[:tokens] = np.concatenate(rows)
    positions = np.zeros(total, dtype=np.int64)
    positions[:tokens] = np.arange(tokens) - np.repeat(starts, lengths)
    slot = np.arange(length)[None, :]
    present = slot < lengths[:, None]  # [rows, length]
    # Masked grid slots point at their row's first token: as keys they are masked, as queries
    # their output is never scattered back.
    gather = np.where(present, starts[:, None] + slot, starts[:, None]).reshape(-1)
    scatter = np.zeros(total, dtype=np.int64)  # the pad tokens read slot 0; nobody reads them
    scatter[:tokens] = np.flatnonzero(present)
    return {"input_ids": ids, "position_ids": positions, "gather": gather,
            "attention_mask": present.astype(np.int64), "scatter": scatter}


def packed_cost(lengths: Sequence[int], multiple: int, hidden: int) -> int:
    """Tokens of work in a packed batch: its tokens (rounded as packed) and its attention grid."""
    if not lengths:
        return 0
    grid = padded_length(max(lengths), multiple)
    tokens = -(-sum(lengths) // multiple) * multiple
    return tokens + int(ATTENTION_WEIGHT * len(lengths) * grid * grid / hidden)
