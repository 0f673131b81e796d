"""A BERT-family encoder in plain torch, loaded straight from `model.safetensors`.

Why: importing transformers' modeling code costs ~3-4 s of a 2-core pod's cold start (it pulls in
torch._dynamo, sympy and scipy); building the same network from torch modules takes milliseconds.
It covers the common embedding checkpoints: `model_type` bert (MiniLM, BGE, E5, GTE-small, ...),
roberta and xlm-roberta (multilingual-E5, BGE-M3, ...) with absolute positions. It computes what
transformers' `BertModel`/`XLMRobertaModel` do in inference (post-LN blocks, SDPA attention, no
pooler), on packed batches: no padding reaches the linear layers (`packing.py`). The query, key and
value projections are fused into one matmul. Anything else falls back to transformers (`encoder.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kembed.model_spec import position_offset
from predictor.packing import PackedBatch

WEIGHTS_FILE = "model.safetensors"
MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def unsupported_reason(model_dir: Path) -> str | None:
    """None when `load_bert` can build this model, else why not (for the log)."""
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") not in MODEL_TYPES:
        return f"model_type {config.get('model_type')!r} is not one of {MODEL_TYPES}"
    if config.get("position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {config['position_embedding_type']!r} is not 'absolute'"
    if config.get("hidden_act", "gelu") not in ACTIVATIONS:
        return f"hidden_act {config['hidden_act']!r} is not one of {sorted(ACTIVATIONS)}"
    if config.get("is_decoder") or config.get("add_cross_attention"):
        return "decoder checkpoints are not encoders"
    if not (model_dir / WEIGHTS_FILE).is_file():
        return f"no {WEIGHTS_FILE}"
    return None


class Block(nn.Module):
    """One post-LN transformer layer. Weights are buffers taken from the checkpoint as they are:
    building nn.Linear first would spend the cold start initializing weights only to overwrite them."""

    def __init__(self, weights: dict[str, torch.Tensor], heads: int, eps: float, activation: str):
        super().__init__()
        for name, tensor in weights.items():
            self.register_buffer(name, tensor)
        self.heads = heads
        self.eps = eps
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        hidden = x.shape[-1]
        attended = batch.attention(F.linear(x, self.qkv_weight, self.qkv_bias), self.heads)
        x = F.layer_norm(
            x + F.linear(attended, self.attention_out_weight, self.attention_out_bias),
            (hidden,), self.attention_norm_weight, self.attention_norm_bias, self.eps,
        )
        inner = self.activation(F.linear(x, self.intermediate_weight, self.intermediate_bias))
        return F.layer_norm(
            x + F.linear(inner, self.output_weight, self.output_bias),
            (hidden,), self.output_norm_weight, self.output_norm_bias, self.eps,
        )


class BertEncoder(nn.Module):
    """`BertModel(...).last_hidden_state` for inference, on packed batches (no padding)."""

    def __init__(
        self, config: dict[str, Any], embeddings: dict[str, torch.Tensor], layers: list[dict[str, torch.Tensor]]
    ):
        super().__init__()
        eps = config.get("layer_norm_eps", 1e-12)
        self.first_position = position_offset(config)
        for name, tensor in embeddings.items():
            self.register_buffer(name, tensor)
        self.eps = eps
        self.blocks = nn.ModuleList(
            Block(weights, config["num_attention_heads"], eps, config.get("hidden_act", "gelu")) for weights in layers
        )

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """[T, H] token states of a packed batch (see packing.py)."""
        x = (
            F.embedding(batch.ids, self.word_embeddings)
            + self.position_embeddings[batch.positions + self.first_position]
            + self.token_type_embeddings[0]  # one segment: token type 0 everywhere
        )
        x = F.layer_norm(x, x.shape[-1:], self.embedding_norm_weight, self.embedding_norm_bias, self.eps)
        for block in self.blocks:
            x = block(x, batch)
        return x


def renamed_weights(
    tensors: dict[str, torch.Tensor], layers: int, convert: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """transformers' names (bare, or under a head's `bert.` / `roberta.` prefix) to ours, QKV fused:
    (embedding weights, one dict per layer). Only these go through `convert`; a task head is left out."""
    marker = "embeddings.word_embeddings.weight"
    prefix = next(name[: -len(marker)] for name in tensors if name.endswith(marker))

    def take(name: str) -> torch.Tensor:
        return convert(tensors[prefix + name])

    embeddings = {
        "word_embeddings": take("embeddings.word_embeddings.weight"),
        "position_embeddings": take("embeddings.position_embeddings.weight"),
        "token_type_embeddings": take("embeddings.token_type_embeddings.weight"),
        "embedding_norm_weight": take("embeddings.LayerNorm.weight"),
        "embedding_norm_bias": take("embeddings.LayerNorm.bias"),
    }
    blocks = []
    for index in range(layers):
        theirs = f"encoder.layer.{index}."
        block = {}
        for kind in ("weight", "bias"):
            block[f"qkv_{kind}"] = torch.cat(
                [take(f"{theirs}attention.self.{part}.{kind}") for part in ("query", "key", "value")]
            )
            block[f"attention_out_{kind}"] = take(f"{theirs}attention.output.dense.{kind}")
            block[f"attention_norm_{kind}"] = take(f"{theirs}attention.output.LayerNorm.{kind}")
            block[f"intermediate_{kind}"] = take(f"{theirs}intermediate.dense.{kind}")
            block[f"output_{kind}"] = take(f"{theirs}output.dense.{kind}")
            block[f"output_norm_{kind}"] = take(f"{theirs}output.LayerNorm.{kind}")
        blocks.append(block)
    return embeddings, blocks


def load_bert(model_dir: Path, device: torch.device, dtype: torch.dtype) -> BertEncoder:
    """The checkpoint's tensors, memory-mapped; the ones the encoder uses are converted where dtype or
    device differ."""
    from safetensors.torch import load_file

    config = json.loads((model_dir / "config.json").read_text())
    embeddings, layers = renamed_weights(
        load_file(str(model_dir / WEIGHTS_FILE)),
        config["num_hidden_layers"],
        lambda tensor: tensor.to(device=device, dtype=dtype),
    )
    return BertEncoder(config, embeddings, layers).eval()
