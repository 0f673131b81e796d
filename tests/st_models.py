"""Tiny random checkpoints saved by sentence-transformers itself (the reference kembed must match).

A transformers config class with small sizes and the bundled model's tokenizer files make the
backbone; sentence-transformers' own modules (Transformer, Pooling, Dense, Normalize) wrap it and
`SentenceTransformer(modules=...).save()` writes the directory kembed serves.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kembed.cli import bundled_model_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
SEP_ID = 102  # the bundled tokenizer's [SEP], the decoders' EOS here
TEXTS = [
    "the cat sat on the mat",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "green",
    "kembed serves embeddings exactly as sentence-transformers computes them, on CPUs and GPUs alike",
]


DECODERS = ("qwen3", "mistral")


def backbone(path: Path, kind: str = "bert", seed: int = 0, initializer_range: float = 0.3) -> Path:
    """A random 2-layer `kind` (bert, xlm-roberta, modernbert, qwen3 or mistral) with the bundled tokenizer,
    saved by transformers. A decoder's tokenizer appends [SEP] as its EOS and pads on the left, as decoder
    embedders do."""
    from transformers import (
        BertConfig,
        BertModel,
        MistralConfig,
        MistralModel,
        ModernBertConfig,
        ModernBertModel,
        PreTrainedTokenizerFast,
        Qwen3Config,
        Qwen3Model,
        XLMRobertaConfig,
        XLMRobertaModel,
    )

    source = Path(bundled_model_dir())
    torch.manual_seed(seed)
    # Weights larger than transformers' default 0.02: at that scale a tiny random model's outputs
    # barely depend on the input, and a prompt (or its absence) would not show in the vectors.
    sizes = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64,
             "initializer_range": initializer_range}
    if kind == "bert":
        model = BertModel(BertConfig(**sizes, num_attention_heads=2, max_position_embeddings=128))
    elif kind == "xlm-roberta":
        model = XLMRobertaModel(XLMRobertaConfig(**sizes, num_attention_heads=2, max_position_embeddings=130,
                                                 pad_token_id=0))
    elif kind == "modernbert":
        model = ModernBertModel(ModernBertConfig(**sizes, num_attention_heads=2, max_position_embeddings=128,
                                                 pad_token_id=0, cls_token_id=101, sep_token_id=SEP_ID,
                                                 global_attn_every_n_layers=2, local_attention=8))
    elif kind == "qwen3":
        model = Qwen3Model(Qwen3Config(**sizes, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                       max_position_embeddings=256, pad_token_id=0, eos_token_id=SEP_ID))
    elif kind == "mistral":
        model = MistralModel(MistralConfig(**sizes, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                           max_position_embeddings=256, pad_token_id=0, eos_token_id=SEP_ID))
    else:
        raise ValueError(kind)
    model.eval().save_pretrained(path)
    if kind not in DECODERS:
        for name in TOKENIZER_FILES:
            shutil.copy(source / name, path / name)
        return path
    from tokenizers import Tokenizer, processors

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A [SEP]", special_tokens=[("[SEP]", SEP_ID)])
    tokenizer.no_truncation()
    tokenizer.no_padding()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", padding_side="left",
        model_max_length=64,
    ).save_pretrained(path)
    return path


def st_model(
    path: Path,
    backbone_dir: Path,
    pooling: str | Sequence[str] = "mean",
    include_prompt: bool = True,
    dense: Sequence[tuple[int, str]] = (),
    normalize: bool = True,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    max_seq_length: int | None = None,
) -> Path:
    """A sentence-transformers model over ``backbone_dir``: Pooling, then a Dense layer per
    (out_features, torch activation class name), then Normalize; saved to ``path``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    torch.manual_seed(1)
    transformer = models.Transformer(str(backbone_dir), max_seq_length=max_seq_length)
    width = transformer.get_embedding_dimension()
    modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    modules: list[torch.nn.Module] = [transformer, models.Pooling(width, pooling_mode=pooling,
                                                                  include_prompt=include_prompt)]
    features = width * len(modes)
    for out_features, activation in dense:
        modules.append(models.Dense(features, out_features, activation_function=getattr(torch.nn, activation)()))
        features = out_features
    if normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, prompts=prompts, default_prompt_name=default_prompt_name,
                        device="cpu").save(str(path))
    return path


def reference(path: Path, texts: Sequence[str], **encode_options: object) -> np.ndarray:
    """What sentence-transformers itself makes of ``texts``."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    return model.encode(list(texts), convert_to_numpy=True, **encode_options)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def module_types(path: Path) -> list[str]:
    return [module["type"].rsplit(".", 1)[-1] for module in json.loads((path / "modules.json").read_text())]
