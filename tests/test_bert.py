"""The native BERT encoder (packed batches) against transformers' BertModel, and the choice of backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    RobertaConfig,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
)

from kembed.cli import bundled_model_dir
from kembed.model_spec import read_model_spec
from predictor.encoder import Encoder
from predictor.packing import ATTENTION_SLACK, attention_group_bounds

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 64, "vocab_size": 50}


def random_rows(rng: np.random.Generator, vocab: int, lengths: list[int], lowest: int = 1) -> list[np.ndarray]:
    return [rng.integers(lowest, vocab, size=length, dtype=np.int64) for length in lengths]


def both_backends(model_dir: Path) -> tuple[Encoder, Encoder]:
    spec = read_model_spec(model_dir, pooling="mean")
    native = Encoder(spec, "cpu", "float32", backend="native")
    reference = Encoder(spec, "cpu", "float32", backend="transformers")
    assert (native.backend, reference.backend) == ("native", "transformers")
    return native, reference


def save_tiny(model: torch.nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    for parameter in model.parameters():  # random LayerNorm weights and biases too, not ones and zeros
        torch.nn.init.normal_(parameter, std=0.2)
    model.eval().save_pretrained(path)
    return path


# Batch shapes: one row, rows of one length (no mask), padded rows, and the model's full length.
BATCHES = [[7], [12, 12, 12], [3, 40, 17, 1, 64], [64, 2]]


@pytest.mark.parametrize(
    "variant",
    [{}, {"hidden_act": "gelu_new"}, {"hidden_act": "relu", "layer_norm_eps": 1e-5}],
    ids=["gelu", "gelu_new", "relu"],
)
def test_native_matches_transformers_on_random_bert(tmp_path: Path, variant: dict) -> None:
    native, reference = both_backends(save_tiny(BertModel(BertConfig(**TINY, **variant)), tmp_path))
    rng = np.random.default_rng(0)
    for lengths in BATCHES:
        rows = random_rows(rng, TINY["vocab_size"], lengths)
        np.testing.assert_allclose(native(rows), reference(rows), rtol=1e-4, atol=1e-5)


def test_native_reads_checkpoints_with_a_bert_prefix(tmp_path: Path) -> None:
    """A BertForMaskedLM checkpoint names its encoder `bert.*` and carries a head that is not used."""
    native, reference = both_backends(save_tiny(BertForMaskedLM(BertConfig(**TINY)), tmp_path))
    rows = random_rows(np.random.default_rng(1), TINY["vocab_size"], [5, 30, 9])
    np.testing.assert_allclose(native(rows), reference(rows), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta"])
def test_native_matches_transformers_on_random_roberta(tmp_path: Path, family: str) -> None:
    """RoBERTa numbers positions from pad_token_id + 1; its usable length is the table minus that.
    The XLM-R checkpoint is a masked-LM one (`roberta.` prefix, with a head that is not used)."""
    config = {**TINY, "pad_token_id": 1, "max_position_embeddings": 66, "type_vocab_size": 1}
    model = RobertaModel(RobertaConfig(**config)) if family == "roberta" else XLMRobertaForMaskedLM(
        XLMRobertaConfig(**config)
    )
    model_dir = save_tiny(model, tmp_path)
    assert read_model_spec(model_dir).max_seq_length == 64
    native, reference = both_backends(model_dir)
    rng = np.random.default_rng(6)
    for lengths in [[64, 3, 20], [5, 5]]:
        rows = random_rows(rng, TINY["vocab_size"], lengths, lowest=2)  # no pad id (1) inside a text
        np.testing.assert_allclose(native(rows), reference(rows), rtol=1e-4, atol=1e-5)


def test_native_matches_transformers_on_the_bundled_model() -> None:
    native, reference = both_backends(Path(bundled_model_dir()))
    rng = np.random.default_rng(2)
    for lengths in [[9], [256, 256], [4, 250, 31, 77, 12, 2, 128, 60]]:
        rows = random_rows(rng, 30522, lengths)
        np.testing.assert_allclose(native(rows), reference(rows), rtol=1e-4, atol=1e-5)


def test_auto_picks_native_for_bert_and_transformers_otherwise(tmp_path: Path) -> None:
    bert_dir = save_tiny(BertModel(BertConfig(**TINY)), tmp_path / "bert")
    assert Encoder(read_model_spec(bert_dir), "cpu", "float32").backend == "native"

    distil = DistilBertConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)
    distil_dir = save_tiny(DistilBertModel(distil), tmp_path / "distilbert")
    spec = read_model_spec(distil_dir, pooling="mean")
    encoder = Encoder(spec, "cpu", "float32")
    assert encoder.backend == "transformers"
    rows = random_rows(np.random.default_rng(3), TINY["vocab_size"], [6, 11])
    assert encoder(rows).shape == (2, TINY["hidden_size"])
    with pytest.raises(ValueError, match="model_type 'distilbert' is not one of"):
        Encoder(spec, "cpu", "float32", backend="native")


def test_native_refuses_relative_positions_and_unknown_backends(tmp_path: Path) -> None:
    model_dir = save_tiny(BertModel(BertConfig(**TINY)), tmp_path)
    spec = read_model_spec(model_dir)
    with pytest.raises(ValueError, match="backend must be one of"):
        Encoder(spec, "cpu", "float32", backend="onnx")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "position_embedding_type": "relative_key"}))
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        Encoder(spec, "cpu", "float32", backend="native")


@pytest.mark.parametrize("pooling", ["cls", "max", "mean"])
def test_packed_pooling_matches_padded_pooling(tmp_path: Path, pooling: str) -> None:
    model_dir = save_tiny(BertModel(BertConfig(**TINY)), tmp_path)
    spec = read_model_spec(model_dir, pooling=pooling)
    native = Encoder(spec, "cpu", "float32", backend="native")
    reference = Encoder(spec, "cpu", "float32", backend="transformers")
    rows = random_rows(np.random.default_rng(4), TINY["vocab_size"], [9, 2, 33, 9, 64, 1])
    np.testing.assert_allclose(native(rows), reference(rows), rtol=1e-4, atol=1e-5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 512), min_size=1, max_size=64))
def test_attention_groups_cover_every_row_once_within_the_padding_slack(lengths: list[int]) -> None:
    sorted_lengths = np.sort(np.array(lengths))
    bounds = attention_group_bounds(sorted_lengths)
    assert [first for first, _ in bounds] == [0] + [last for _, last in bounds[:-1]]
    assert bounds[-1][1] == len(lengths)
    for first, last in bounds:
        group = sorted_lengths[first:last]
        assert last > first
        # a group of more than one row pads at most ATTENTION_SLACK x its real tokens
        assert len(group) == 1 or len(group) * group.max() <= ATTENTION_SLACK * group.sum()


def test_a_text_embeds_the_same_alone_and_in_a_packed_batch_of_others() -> None:
    spec = read_model_spec(bundled_model_dir())
    native = Encoder(spec, "cpu", "float32", backend="native")
    rows = random_rows(np.random.default_rng(5), 30522, [17, 3, 250, 17, 40, 90, 17, 5])
    together = native(rows)
    alone = np.concatenate([native([row]) for row in rows])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
