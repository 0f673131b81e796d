"""int8's check at every length the server pads to: a quantized IR can be wrong at one length only.

Why: the bundled model's NNCF int8 IR (OpenVINO 2026.4 CPU plugin) gave cosine 0.82-0.985 to fp32 for
texts padded to exactly 32 tokens and >= 0.997 at every other length tried (bf16 and fp32 are exact at
every length). A check on length-sorted batches never ran at 32, so it could not see it. Here the gate
rows are embedded padded to each length the runtime may pad a batch to; a length below the bar is
avoided (a batch that would run at it is padded up to the next length that passed, see
`kembed.tokenization.padded_length`), and a model whose longest length fails does not serve.
kembed-export and the server run the same check. No torch import: the OpenVINO runtime uses this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kembed.tokenization import padded_length
from predictor.precision import min_cosine

BUCKET = 16  # lengths are checked (and gate rows spread) at least every BUCKET tokens
ROWS_PER_LENGTH = 16  # gate rows embedded per checked length: at most half from its own bucket

EmbedAt = Callable[[Sequence[np.ndarray], int], np.ndarray]  # rows, exact padded length -> mean-pooled [n, H]


def checked_lengths(multiple: int, max_seq_length: int, row_lengths: Sequence[int] = ()) -> list[int]:
    """The lengths to check, which are then the only ones served: every multiple of BUCKET and every gate
    row's length, each rounded up to `multiple`, and the longest padded length. With the default
    `multiple` of 16 that is exactly every length the server pads to; with a smaller one (down to 1) it
    is a bounded set, and a batch is padded up to the next checked length that passed."""
    top = padded_length(max_seq_length, multiple)
    wanted = [*range(BUCKET, max_seq_length + BUCKET, BUCKET), *row_lengths]
    return sorted({padded_length(length, multiple) for length in wanted if length <= top} | {top})


def spread_over_buckets(lengths: Sequence[int], limit: int, bucket: int = BUCKET) -> list[int]:
    """Indices of up to `limit` rows, taken round-robin from each `bucket`-token length bucket in turn
    (in their order within a bucket), so that every bucket that has rows keeps some."""
    buckets: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        buckets.setdefault((length - 1) // bucket, []).append(index)
    queues = [buckets[key] for key in sorted(buckets)]
    chosen: list[int] = []
    while len(chosen) < min(limit, len(lengths)):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return sorted(chosen)


def evenly(indices: Sequence[int], count: int) -> list[int]:
    if len(indices) <= count:
        return list(indices)
    return [indices[round(i * (len(indices) - 1) / max(count - 1, 1))] for i in range(count)]


def rows_for_length(lengths: Sequence[int], length: int, shorter_than: int) -> tuple[list[int], int]:
    """Gate rows to embed padded to `length`: up to half ROWS_PER_LENGTH from its own bucket (longer than
    `shorter_than`, the previous checked length), the rest spread over the shorter rows; and how many rows
    the bucket had."""
    by_length = sorted(range(len(lengths)), key=lambda i: lengths[i])
    own = [i for i in by_length if shorter_than < lengths[i] <= length]
    shorter = [i for i in by_length if lengths[i] <= shorter_than]
    picked = evenly(own, ROWS_PER_LENGTH // 2)
    return sorted(picked + evenly(shorter, ROWS_PER_LENGTH - len(picked))), len(own)


@dataclass
class LengthCheck:
    """Min cosine to the fp32 reference per checked length (None: no gate row fits it)."""

    threshold: float
    cosines: dict[int, float | None] = field(default_factory=dict)
    empty_buckets: list[int] = field(default_factory=list)  # lengths none of whose own-bucket rows exist

    @property
    def good(self) -> tuple[int, ...]:
        return tuple(n for n, c in self.cosines.items() if c is not None and c >= self.threshold)

    @property
    def avoided(self) -> list[int]:
        return [n for n in self.cosines if n not in self.good]

    @property
    def min_cosine(self) -> float:
        return min((self.cosines[n] for n in self.good), default=float("nan"))

    def summary(self) -> str:
        def shown(cosine: float | None) -> str:
            return "no row fits" if cosine is None else f"{cosine:.4f}"

        avoided = ", ".join(f"{n} ({shown(self.cosines[n])})" for n in self.avoided) or "none"
        served = " ".join(f"{n}:{self.cosines[n]:.4f}" for n in self.good)
        empty = f"; no gate row of its own length bucket for {self.empty_buckets}" if self.empty_buckets else ""
        return f"avoided lengths (below {self.threshold}): {avoided}; min cosine at the others: {served}{empty}"

    def require_servable(self, what: str) -> None:
        """The longest length must pass: nothing is left to pad its batches up to."""
        longest = max(self.cosines)
        if longest not in self.good:
            raise RuntimeError(f"{what}: the int8 IR fails the length check at the longest padded length "
                               f"{longest}, so no length is left for its batches; {self.summary()}. "
                               "Serve with --dtype bfloat16 or float32, or re-export with other calibration texts")


def check_lengths(
    embed_at: EmbedAt, rows: Sequence[np.ndarray], reference: np.ndarray, lengths: Sequence[int], threshold: float
) -> LengthCheck:
    """Embeds the rows that fit each length, padded to exactly that length, against their fp32 reference."""
    row_lengths = [len(row) for row in rows]
    check = LengthCheck(threshold)
    previous = 0
    for length in sorted(lengths):
        picked, own = rows_for_length(row_lengths, length, previous)
        if own == 0:
            check.empty_buckets.append(length)
        check.cosines[length] = (
            min_cosine(reference[picked], embed_at([rows[i] for i in picked], length)) if picked else None
        )
        previous = length
    return check
