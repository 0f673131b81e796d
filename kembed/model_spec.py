"""What a model directory says about how to embed with it.

Reads the transformers `config.json` and, when present, sentence-transformers metadata
(`modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`), so a plain BERT checkpoint
and a sentence-transformers export both serve correctly without network access.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POOLING_MODES = ("mean", "cls", "max")
ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")


@dataclass(frozen=True)
class ModelSpec:
    model_dir: Path
    dimension: int
    vocab_size: int
    max_seq_length: int
    pooling: str
    normalize: bool


def _read_json(path: Path) -> dict[str, Any] | list[Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pooling_from_modules(model_dir: Path, modules: list[dict[str, Any]]) -> str | None:
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            config = _read_json(model_dir / module.get("path", "") / "config.json") or {}
            if config.get("pooling_mode_cls_token"):
                return "cls"
            if config.get("pooling_mode_max_tokens"):
                return "max"
            return "mean"
    return None


def hidden_size(config: dict[str, Any], model_dir: Path) -> int:
    """The embedding width, under whichever name the architecture's config.json uses."""
    for name in ("hidden_size", "dim", "d_model"):  # BERT-likes, DistilBERT, T5/BART encoders
        if name in config:
            return int(config[name])
    raise ValueError(f"{model_dir}/config.json names no hidden size (hidden_size, dim or d_model)")


def position_offset(config: dict[str, Any]) -> int:
    """Row of the first position in the position table: 0 for BERT. RoBERTa numbers positions from
    pad_token_id + 1, so its table holds that many rows more than the usable length."""
    return int(config.get("pad_token_id", 1)) + 1 if config.get("model_type") in ROBERTA_LIKE else 0


def read_model_spec(
    model_dir: str | Path, pooling: str = "auto", max_seq_length: int = 0
) -> ModelSpec:
    """``pooling="auto"`` and ``max_seq_length=0`` defer to the directory's own metadata."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    if not isinstance(config, dict):
        raise FileNotFoundError(f"{model_dir} has no transformers config.json")
    modules = _read_json(model_dir / "modules.json")
    modules = modules if isinstance(modules, list) else []
    st_config = _read_json(model_dir / "sentence_bert_config.json") or {}

    if pooling == "auto":
        pooling = _pooling_from_modules(model_dir, modules) or "cls"
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES} or 'auto', got {pooling!r}")

    position_limit = int(config.get("max_position_embeddings", 512)) - position_offset(config)
    if max_seq_length <= 0:
        max_seq_length = int(st_config.get("max_seq_length") or position_limit)
    max_seq_length = min(max_seq_length, position_limit)

    return ModelSpec(
        model_dir=model_dir,
        dimension=hidden_size(config, model_dir),
        vocab_size=int(config["vocab_size"]),
        max_seq_length=max_seq_length,
        pooling=pooling,
        normalize=any(m.get("type", "").endswith("Normalize") for m in modules),
    )
