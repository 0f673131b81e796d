"""The packed IR's inputs (packed_layout.py) without OpenVINO: every token reaches its own grid slot
and back, the split is the cheapest one, and pooling the grids gives each row what pooling it
padded gives, in the caller's order, prompts left out per row."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kembed.model_spec import Pooling
from kembed.tokenization import pad_batch
from predictor.packed_layout import PACKED_INPUTS, _cheapest_split, packed_cost, packed_inputs, pool_grids
from predictor.pooling import pool_padded_numpy

RNG = np.random.default_rng(7)
BATCHES = [[5], [3, 3], [17, 2, 200, 9], [1, 40, 40, 3, 250, 16, 17], list(RNG.integers(1, 257, 32))]


def rows_of(lengths: list[int]) -> list[np.ndarray]:
    return [RNG.integers(1000, 30000, int(n)) for n in lengths]


def grid_states(inputs: dict[str, np.ndarray], width: int = 3) -> np.ndarray:
    """What the IR's output would be if each token's state were (id, position, 1) repeated: enough to
    see which token each grid slot holds."""
    tokens = np.stack([inputs["input_ids"], inputs["position_ids"], np.ones_like(inputs["input_ids"])], axis=1)
    return np.tile(tokens[inputs["gather"]].astype(np.float32), (1, width // 3))


@pytest.mark.parametrize("lengths", BATCHES, ids=[str(len(b)) for b in BATCHES])
def test_every_token_goes_to_its_grid_slot_and_back(lengths) -> None:
    rows = rows_of(lengths)
    inputs, grids = packed_inputs(rows, pad_id=0, multiple=16)
    assert tuple(inputs) == PACKED_INPUTS
    tokens = sum(lengths)
    assert len(inputs["input_ids"]) % 16 == 0 and len(inputs["input_ids"]) >= tokens
    assert np.array_equal(inputs["input_ids"][:tokens], np.concatenate(rows))
    assert np.array_equal(inputs["position_ids"][:tokens], np.concatenate([np.arange(n) for n in lengths]))
    masks = [inputs["attention_mask_0"], inputs["attention_mask_1"]]
    assert len(inputs["gather"]) == sum(mask.size for mask in masks)
    # scatter then gather is the identity on real tokens: attention's output comes back to its token
    assert np.array_equal(inputs["gather"][inputs["scatter"][:tokens]], np.arange(tokens))
    # each grid row holds exactly its row's tokens, and the grids hold every row once
    seen = sorted(int(r) for grid in (0, 1) for r in grids.rows(grid))
    assert seen == list(range(len(rows)))
    for grid, mask in enumerate(masks):
        members = grids.rows(grid)
        if len(members):
            assert list(mask.sum(axis=1)) == [lengths[r] for r in members]
            assert mask.shape[1] % 16 == 0


def test_the_split_is_the_cheapest_and_a_long_row_costs_less_beside_short_ones() -> None:
    for lengths in BATCHES:
        padded = sorted(-(-int(n) // 16) * 16 for n in lengths)
        _, area = _cheapest_split(padded)
        brute = min(
            [1 + len(padded) * padded[-1] ** 2]
            + [k * padded[k - 1] ** 2 + (len(padded) - k) * padded[-1] ** 2 for k in range(1, len(padded))]
        )
        assert area == brute
    short = [16] * 15
    # one grid would pay 16 x 256^2 of attention; two pay 15 x 16^2 + 256^2
    assert packed_cost([*short, 256], 16, 384) < packed_cost(short, 16, 384) + packed_cost([256], 16, 384) + 256
    assert packed_cost([*short, 256], 16, 384) >= sum(short) + 256


MODES = ["mean", "cls", "max", "lasttoken", "weightedmean", "mean_sqrt_len_tokens"]


@pytest.mark.parametrize(("mode", "include_prompt"), list(itertools.product(MODES, (True, False))))
def test_pooling_the_grids_is_pooling_the_padded_batch_in_the_callers_order(mode, include_prompt) -> None:
    lengths = [17, 2, 200, 9, 40, 1]
    rows = rows_of(lengths)
    prompts = [3, 1, 5, 0, 2, 4]
    pooling = Pooling((mode,), include_prompt=include_prompt)
    inputs, grids = packed_inputs(rows, multiple=16)
    got = pool_grids(grid_states(inputs), inputs, grids, pooling, prompts)
    ids, mask = pad_batch(rows, 0)
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    padded_states = np.stack([ids, positions, np.ones_like(ids)], axis=2).astype(np.float32)
    expected = pool_padded_numpy(padded_states, mask, pooling, prompts)
    assert got.shape == (len(rows), 3)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
