"""kembed's packed OpenVINO IR, converted from the native BERT-family encoder (`bert.py`).

The graph is `bert.BertEncoder` itself: its `forward` is given, instead of a `packing.PackedBatch`,
a `GridBatch` whose attention gathers the packed tokens into the padded grid that `packed_layout.py`
describes (one SDPA call, masked keys) and scatters them back. Every other step (embeddings,
positions, fused QKV, post-LN blocks) is the encoder's, which is tested against transformers.
Export only: this module imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from predictor.bert import load_bert
from predictor.openvino_runtime import HIDDEN_OUTPUT
from predictor.packed_layout import PACKED_INPUTS, packed_inputs


class GridBatch:
    """What `BertEncoder.forward` reads of a batch (`ids`, `positions`, `attention`), on the grid."""

    def __init__(self, ids: torch.Tensor, positions: torch.Tensor, gather: torch.Tensor, mask: torch.Tensor,
                 scatter: torch.Tensor):
        self.ids, self.positions, self.gather, self.scatter = ids, positions, gather, scatter
        self.rows, self.length = mask.shape
        self.keys = mask.to(torch.bool)[:, None, None, :]

    def attention(self, qkv: torch.Tensor, heads: int) -> torch.Tensor:
        """[T, 3H] fused projections in, [T, H] out: attention within each row of the grid."""
        hidden = qkv.shape[1] // 3
        grid = qkv[self.gather].view(self.rows, self.length, 3, heads, hidden // heads)
        q, k, v = grid.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=self.keys)
        return attended.transpose(1, 2).reshape(self.rows * self.length, hidden)[self.scatter]


class PackedGraph(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, gather: torch.Tensor,
                attention_mask: torch.Tensor, scatter: torch.Tensor) -> torch.Tensor:
        batch = GridBatch(input_ids, position_ids, gather, attention_mask, scatter)
        states = self.encoder(batch)
        return states[gather].view(batch.rows, batch.length, states.shape[-1])  # the grid, for pooling


def convert_packed(model_dir: Path, example_rows: list[np.ndarray], pad_id: int) -> object:
    """The packed IR (fp32 weights) with dynamic shapes, its inputs named as `PACKED_INPUTS`."""
    import warnings

    import openvino as ov

    graph = PackedGraph(load_bert(model_dir, torch.device("cpu"), torch.float32)).eval()
    example = {name: torch.from_numpy(array) for name, array in packed_inputs(example_rows, pad_id, 16).items()}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are traced as size ops: dynamic
        converted = ov.convert_model(graph, example_input=example)
    for port, name in zip(converted.inputs, PACKED_INPUTS, strict=True):
        port.get_tensor().set_names({name})
    converted.outputs[0].get_tensor().set_names({HIDDEN_OUTPUT})
    return converted
