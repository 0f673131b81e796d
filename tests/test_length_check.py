"""int8's length check as pure functions: which lengths are checked, which gate rows each uses, and that
an avoided length is never padded to, by the runtime or by the batcher's cost model.

The real int8 IR of the bundled model goes through the same code in test_runtimes.py."""

from __future__ import annotations

import numpy as np
import pytest

from kembed.tokenization import pad_batch, padded_length, padded_tokens
from predictor.batcher import BatchLimits, select_batch
from predictor.length_check import LengthCheck, checked_lengths, rows_for_length, spread_over_buckets


def test_checked_lengths_are_every_served_length_at_16_and_a_bounded_set_below() -> None:
    assert checked_lengths(16, 256, [7, 19, 200]) == list(range(16, 257, 16))
    assert checked_lengths(32, 256) == list(range(32, 257, 32))
    assert checked_lengths(16, 250) == [*range(16, 250, 16), 256]  # the longest padded length is served
    every = checked_lengths(1, 250, [7, 19, 250])
    assert every == sorted({*range(16, 250, 16), 7, 19, 250})  # multiples of 16, the rows' lengths, the top


def test_an_avoided_length_pads_up_to_the_next_good_one() -> None:
    good = (16, 48, 64)  # 32 failed its check
    assert [padded_length(n, 16, good) for n in (3, 16, 17, 32, 33, 48, 64)] == [16, 16, 48, 48, 48, 48, 64]
    assert padded_length(17, 16) == 32  # without the check: as before
    ids, mask = pad_batch([np.arange(1, 21), np.arange(1, 4)], 0, 16, good)
    assert ids.shape == mask.shape == (2, 48) and mask.sum() == 23
    assert padded_tokens([20, 3], 16, good) == 2 * 48
    with pytest.raises(ValueError, match="no allowed padded length holds 65 tokens"):
        padded_length(65, 16, good)


def test_the_batchers_cost_model_sees_the_avoided_length() -> None:
    limits = BatchLimits(max_batch_size=8, max_batch_tokens=4096)
    # 20 and 40 tokens: at 32 and 48 they would not join (32 + 20 + 8 < 96); with 32 avoided both pad to 48
    assert select_batch([20, 40], limits, 8, lambda n: padded_tokens(n, 16)) == [0]
    assert select_batch([20, 40], limits, 8, lambda n: padded_tokens(n, 16, (16, 48, 64))) == [0, 1]


def test_held_out_rows_are_spread_over_length_buckets() -> None:
    lengths = [5] * 100 + [20, 21, 40, 200]
    kept = spread_over_buckets(lengths, 8)
    assert len(kept) == 8 and {100, 101, 102, 103} <= set(kept)  # every bucket keeps rows
    assert spread_over_buckets(lengths[:3], 64) == [0, 1, 2]


def test_each_length_embeds_rows_of_its_own_bucket_and_shorter_ones() -> None:
    lengths = list(range(2, 60))
    picked, own = rows_for_length(lengths, 32, 16)
    assert own == 16 and len(picked) == 16
    assert sum(16 < lengths[i] <= 32 for i in picked) == 8 and all(lengths[i] <= 32 for i in picked)
    assert rows_for_length([40, 50], 32, 16) == ([], 0)  # no row fits: the length cannot be checked


def test_a_failing_length_is_avoided_and_logged_a_failing_longest_refuses() -> None:
    check = LengthCheck(0.99, {16: 0.998, 32: 0.82, 48: 0.997, 64: None})
    assert check.good == (16, 48) and check.avoided == [32, 64]
    assert check.min_cosine == 0.997
    assert "avoided lengths (below 0.99): 32 (0.8200), 64 (no row fits)" in check.summary()
    with pytest.raises(RuntimeError, match=r"longest padded length 64.*avoided lengths .*32 \(0\.8200\)"):
        check.require_servable("t")
    LengthCheck(0.99, {16: 0.998, 32: 0.82, 48: 0.997}).require_servable("t")
