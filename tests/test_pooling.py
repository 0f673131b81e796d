"""Every pooling mode, packed and padded, torch and numpy, against sentence-transformers' own Pooling;
then whole models (tokenizer, backbone, pooling, Dense, Normalize) against `SentenceTransformer.encode`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import compare_st
from bench.compare_st import kembed_embeddings
from kembed.model_spec import POOLING_MODES, Pooling, read_model_spec
from predictor.packing import PackedBatch
from predictor.pooling import pool_packed, pool_padded, pool_padded_numpy
from tests.st_models import TEXTS, backbone, min_cosine, reference, st_model

LENGTHS = [5, 9, 1, 7]
WIDTH = 6


def reference_pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling, prompt_length: int) -> np.ndarray:
    from sentence_transformers.sentence_transformer import modules as models

    module = models.Pooling(WIDTH, pooling_mode=pooling.modes, include_prompt=pooling.include_prompt)
    features = {"token_embeddings": hidden, "attention_mask": mask}
    if prompt_length:
        features["prompt_length"] = prompt_length
    return module(features)["sentence_embedding"].numpy()


def padded(side: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    longest = max(LENGTHS)
    hidden = torch.randn(len(LENGTHS), longest, WIDTH)
    mask = torch.zeros(len(LENGTHS), longest, dtype=torch.int64)
    for row, length in enumerate(LENGTHS):
        if side == "right":
            mask[row, :length] = 1
        else:
            mask[row, longest - length :] = 1
    return hidden, mask


def packed_states(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, PackedBatch]:
    """The same tokens as a packed batch: rows in ascending-length order, no padding."""
    rows = [np.zeros(length, dtype=np.int64) for length in LENGTHS]
    batch = PackedBatch.from_rows(rows, torch.device("cpu"))
    order = np.argsort(LENGTHS, kind="stable")
    states = torch.cat([hidden[row][mask[row].bool()] for row in order])
    return states, batch


CASES = [Pooling((mode,), include) for mode in POOLING_MODES for include in (True, False)]
CASES.append(Pooling(("cls", "mean", "max"), False))


@pytest.mark.parametrize("pooling", CASES, ids=str)
@pytest.mark.parametrize("side", ["right", "left"])
def test_pooling_paths_match_sentence_transformers_pooling(pooling: Pooling, side: str) -> None:
    hidden, mask = padded(side)
    prompt_length = 0 if pooling.include_prompt else 2
    expected = reference_pool(hidden, mask, pooling, prompt_length)
    # the one-token row would be all prompt: kembed keeps its token, sentence-transformers pools nothing
    checked = [row for row, length in enumerate(LENGTHS) if length > prompt_length]
    prompts = [prompt_length] * len(LENGTHS)
    results = {
        "torch padded": pool_padded(hidden, mask, pooling, prompts).numpy(),
        "numpy padded": pool_padded_numpy(hidden.numpy(), mask.numpy(), pooling, prompts),
    }
    if side == "right":
        states, batch = packed_states(hidden, mask)
        results["torch packed"] = pool_packed(states, batch, pooling, prompts).numpy()
    for name, got in results.items():
        assert got.shape == expected.shape, name
        np.testing.assert_allclose(got[checked], expected[checked], rtol=1e-5, atol=1e-6, err_msg=name)
        assert np.isfinite(got).all(), name


def test_prompt_lengths_are_per_row() -> None:
    """Rows of one batch may carry different prompts (requests are batched together)."""
    hidden, mask = padded("right")
    pooling = Pooling(("mean",), include_prompt=False)
    got = pool_padded_numpy(hidden.numpy(), mask.numpy(), pooling, [0, 3, 0, 1])
    for row, skip in enumerate([0, 3, 0, 1]):
        expected = reference_pool(hidden[row : row + 1], mask[row : row + 1], pooling, skip)
        np.testing.assert_allclose(got[row : row + 1], expected, rtol=1e-5, atol=1e-6)


# --- whole models -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return backbone(tmp_path_factory.mktemp("bert"), "bert")


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return backbone(tmp_path_factory.mktemp("qwen3"), "qwen3")


MODELS = {
    "cls+dense+normalize": {"pooling": "cls", "dense": [(16, "Tanh")]},
    "mean+two dense": {"pooling": "mean", "dense": [(24, "GELU"), (8, "Identity")], "normalize": False},
    "max": {"pooling": "max", "normalize": False},
    "mean_sqrt_len_tokens": {"pooling": "mean_sqrt_len_tokens", "normalize": False},
    "weightedmean": {"pooling": "weightedmean"},
    "lasttoken+cls": {"pooling": ["lasttoken", "cls"], "dense": [(12, "ReLU")]},
}


@pytest.mark.parametrize("name", list(MODELS))
def test_models_match_sentence_transformers_on_both_backends(bert: Path, tmp_path: Path, name: str) -> None:
    path = st_model(tmp_path / "model", bert, **MODELS[name])
    expected = reference(path, TEXTS)
    spec = read_model_spec(path)
    assert spec.dimension == expected.shape[1]
    for backend in ("native", "transformers"):
        got, _ = kembed_embeddings(path, TEXTS, backend=backend)
        assert min_cosine(got, expected) >= 0.9999, backend
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=backend)


@pytest.mark.parametrize("pooling", ["cls", "mean", "weightedmean", "max"])
def test_prompt_left_out_of_pooling_on_both_backends(bert: Path, tmp_path: Path, pooling: str) -> None:
    prompts = {"query": "query: ", "long": "represent this sentence for searching relevant passages: "}
    path = st_model(tmp_path / "model", bert, pooling, include_prompt=False, prompts=prompts)
    included = st_model(tmp_path / "included", bert, pooling, prompts=prompts)
    for encode_options in ({"prompt_name": "query"}, {"prompt_name": "long"}, {"prompt": "x y z: "}):
        expected = reference(path, TEXTS, **encode_options)
        with_prompt_pooled = reference(included, TEXTS, **encode_options)
        assert min_cosine(expected, with_prompt_pooled) < 0.999  # the exclusion shows in the vectors
        for backend in ("native", "transformers"):
            got, _ = kembed_embeddings(path, TEXTS, backend=backend, **encode_options)
            assert min_cosine(got, expected) >= 0.9999, (backend, encode_options)


@pytest.mark.parametrize(("kind", "pooling", "backends"), [
    ("xlm-roberta", "mean", ("native", "transformers")),
    ("modernbert", "cls", ("auto",)),  # transformers: not the native BERT family
    ("mistral", "lasttoken", ("auto",)),
])
def test_other_families_match_sentence_transformers(tmp_path: Path, kind: str, pooling: str, backends) -> None:
    path = st_model(tmp_path / "model", backbone(tmp_path / "backbone", kind), pooling, prompts={"q": "query: "})
    for encode_options in ({}, {"prompt_name": "q"}):
        expected = reference(path, TEXTS, **encode_options)
        for backend in backends:
            got, _ = kembed_embeddings(path, TEXTS, backend=backend, **encode_options)
            assert min_cosine(got, expected) >= 0.9999, (backend, encode_options)


@pytest.mark.parametrize("pooling", ["lasttoken", "mean", "weightedmean"])
def test_qwen3_decoder_matches_sentence_transformers_with_its_left_padding(qwen3: Path, tmp_path: Path,
                                                                          pooling: str) -> None:
    """sentence-transformers pads this tokenizer on the left, kembed on the right: the same vectors."""
    path = st_model(tmp_path / "model", qwen3, pooling, include_prompt=pooling != "lasttoken",
                    prompts={"query": "Instruct: retrieve\nQuery: "}, dense=[(16, "Identity")])
    assert read_model_spec(path).dimension == 16
    for encode_options in ({}, {"prompt_name": "query"}):
        got, _ = kembed_embeddings(path, TEXTS, **encode_options)
        assert min_cosine(got, reference(path, TEXTS, **encode_options)) >= 0.9999, encode_options


def test_truncation_side_and_lowercasing_come_from_the_model(bert: Path, tmp_path: Path) -> None:
    """A cased tokenizer with sentence-transformers' do_lower_case, truncating from the left at 12 tokens."""
    path = st_model(tmp_path / "model", bert, "mean", max_seq_length=12)
    tokenizer_json = json.loads((path / "tokenizer.json").read_text())
    tokenizer_json["normalizer"]["lowercase"] = False
    (path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    for name, changes in (("tokenizer_config.json", {"truncation_side": "left"}),
                          ("sentence_bert_config.json", {"do_lower_case": True})):
        config = json.loads((path / name).read_text())
        (path / name).write_text(json.dumps({**config, **changes}))
    texts = ["The START of a Long Text that ends with THE END", *TEXTS]
    expected, expected_ids = compare_st.sentence_transformers_embeddings(path, texts)
    got, ids = kembed_embeddings(path, texts)
    assert [row.tolist() for row in ids] == expected_ids
    assert len(expected_ids[0]) == 12 and expected_ids[0][-2] != expected_ids[1][-2]  # cut on the left
    assert min_cosine(got, expected) >= 0.9999


def test_native_backend_refuses_a_decoder(qwen3: Path, tmp_path: Path) -> None:
    path = st_model(tmp_path / "model", qwen3, "lasttoken")
    with pytest.raises(ValueError, match="backend 'native' cannot build"):
        kembed_embeddings(path, TEXTS, backend="native")


def run_compare_st(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["compare_st", *args])
    with pytest.raises(SystemExit) as exit_status:
        compare_st.main()
    return exit_status.value.code, capsys.readouterr().out


def test_compare_st_reports_per_text_cosine_and_refusals(bert: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    path = st_model(tmp_path / "model", bert, "cls", dense=[(8, "Tanh")])
    status, out = run_compare_st(monkeypatch, capsys, str(path), "--prompt", "q: ")
    assert status == 0, out
    assert "dimension 8: ok" in out and out.count("  same  ") == len(compare_st.TEXTS)
    (path / "modules.json").write_text((path / "modules.json").read_text().replace("Normalize", "LayerNorm"))
    status, out = run_compare_st(monkeypatch, capsys, str(path))
    assert status == 1 and "kembed refuses" in out and "LayerNorm" in out
