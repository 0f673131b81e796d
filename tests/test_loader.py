"""Model loading on a tiny random BERT built here: pooling modes, metadata, limits, CPU fitting."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

from kembed import contract
from kembed.model_spec import read_model_spec
from predictor.model import EmbeddingModel
from predictor.resources import cgroup_cpu_limit, fit_thread_count
from predictor.settings import PredictorSettings

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "runs", "fast", "slow", "red", "blue", "green", "big", "small"]


def build_tiny_bert(
    path: Path, pooling: str | None, normalize: bool = False, max_seq_length: int | None = None
) -> Path:
    """A random 2-layer BERT with a WordPiece tokenizer, saved like a sentence-transformers export."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    backend = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = BertTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    if pooling is not None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if normalize:
            modules.append(
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
            )
        (path / "modules.json").write_text(json.dumps(modules))
        (path / "1_Pooling").mkdir()
        (path / "1_Pooling" / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": 32,
                    "pooling_mode_cls_token": pooling == "cls",
                    "pooling_mode_mean_tokens": pooling == "mean",
                    "pooling_mode_max_tokens": pooling == "max",
                }
            )
        )
    if max_seq_length is not None:
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return path


def load(path: Path, **overrides: object) -> EmbeddingModel:
    settings = PredictorSettings(
        model_dir=str(path),
        device="cpu",
        dtype="float32",  # compared with fp32 references to 1e-4; reduced precision: test_runtimes.py
        threads=1,
        max_batch_tokens=1024,
        **overrides,
    )
    model = EmbeddingModel("tiny", settings)
    model.start()
    assert not model.ready, "start() must not mark the model ready before load()"
    assert model.load() and model.ready
    return model


def embed(model: EmbeddingModel, *batches: list[str], **parameters: object) -> list[np.ndarray]:
    """Embeds each list of texts through predict() (one event loop, like the server)."""

    async def run() -> list[np.ndarray]:
        results = []
        for texts in batches:
            request = contract.text_request("tiny", texts, contract.EmbedOptions(**parameters))
            response = await model.predict(InferRequest.from_bytes(*_rest(request), "tiny"))
            results.append(contract.embeddings_from_response(response))
        return results

    return asyncio.run(run())


def _rest(request: InferRequest) -> tuple[bytes, int]:
    import orjson

    body, length = request.to_rest()
    if length is None:
        body = orjson.dumps(body)
        length = len(body)
    return body, length


def reference(path: Path, texts: list[str], mode: str) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    if mode == "cls":
        return hidden[:, 0].numpy()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


TEXTS = ["the cat sat on the mat", "a big red dog runs fast", "green"]


@pytest.mark.parametrize("mode", ["mean", "cls"])
def test_pooling_from_sentence_transformers_metadata(tmp_path: Path, mode: str) -> None:
    path = build_tiny_bert(tmp_path / mode, pooling=mode)
    model = load(path)
    assert model.spec.pooling.modes == (mode,) and model.spec.dimension == 32 and not model.spec.normalize
    (got,) = embed(model, TEXTS)
    np.testing.assert_allclose(got, reference(path, TEXTS, mode), rtol=1e-4, atol=1e-5)


def test_plain_checkpoint_is_mean_pooled_without_normalization_as_sentence_transformers_does(tmp_path: Path) -> None:
    path = build_tiny_bert(tmp_path / "plain", pooling=None)
    spec = read_model_spec(path)
    assert (spec.pooling.modes, spec.normalize, spec.max_seq_length) == (("mean",), False, 64)


def test_normalize_module_and_max_seq_length_are_honoured(tmp_path: Path) -> None:
    path = build_tiny_bert(tmp_path / "st", pooling="mean", normalize=True, max_seq_length=16)
    spec = read_model_spec(path)
    assert spec.normalize and spec.max_seq_length == 16
    assert read_model_spec(path, pooling="max", max_seq_length=999).max_seq_length == 64  # capped by positions
    model = load(path)
    (got,) = embed(model, TEXTS)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_truncation_off_rejects_long_text_and_on_truncates(tmp_path: Path) -> None:
    path = build_tiny_bert(tmp_path / "trunc", pooling="mean", max_seq_length=6)
    long_text = "the cat sat on the mat and the dog ran"
    strict = load(path, truncate=False)
    with pytest.raises(InvalidInput, match="longer than 6 tokens"):
        embed(strict, [long_text])
    lenient = load(path, truncate=True)
    cut = "the cat sat on"  # [CLS] + 4 words + [SEP] = 6 tokens
    long_result, cut_result = embed(lenient, [long_text], [cut])
    np.testing.assert_allclose(long_result, cut_result, rtol=1e-5, atol=1e-6)


def test_max_batch_tokens_must_cover_one_sequence(tmp_path: Path) -> None:
    path = build_tiny_bert(tmp_path / "budget", pooling="mean")
    settings = PredictorSettings(model_dir=str(path), device="cpu", max_batch_tokens=16)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        EmbeddingModel("tiny", settings).load()


def test_cgroup_v2_quota_sets_thread_count(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    missing = tmp_path / "absent"
    assert cgroup_cpu_limit(cpu_max, missing, missing) == 1.5
    assert fit_thread_count(0, cpu_limit=1.5) == min(2, fit_thread_count(0, cpu_limit=None))
    assert fit_thread_count(0, cpu_limit=0.2) == 1
    assert fit_thread_count(5, cpu_limit=1.0) == 5  # an explicit request wins
    cpu_max.write_text("max 100000\n")
    assert cgroup_cpu_limit(cpu_max, missing, missing) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    quota, period = tmp_path / "quota", tmp_path / "period"
    quota.write_text("200000")
    period.write_text("100000")
    assert cgroup_cpu_limit(tmp_path / "absent", quota, period) == 2.0
    quota.write_text("-1")
    assert cgroup_cpu_limit(tmp_path / "absent", quota, period) is None
