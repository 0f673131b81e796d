"""kembed's packed OpenVINO IR, converted from the native BERT-family encoder (`bert.py`).

The graph is `bert.BertEncoder` itself: its `forward` is given, instead of a `packing.PackedBatch`,
a `GridBatch` whose attention gathers the packed tokens into the two padded grids that
`packed_layout.py` describes (one SDPA call each, masked keys) and scatters them back. Every other step (embeddings,
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
    """What `BertEncoder.forward` reads of a batch (`ids`, `positions`, `attention`), on two grids."""

    def __init__(self, ids: torch.Tensor, positions: torch.Tensor, gather: torch.Tensor, masks: list[torch.Tensor],
                 scatter: torch.Tensor):
        self.ids, self.positions, self.gather, self.scatter = ids, positions, gather, scatter
        self.shapes = [mask.shape for mask in masks]
        self.keys = [mask.to(torch.bool)[:, None, None, :] for mask in masks]

    def attention(self, qkv: torch.Tensor, heads: int) -> torch.Tensor:
        """[T, 3H] fused projections in, [T, H] out: attention within each row of each grid."""
        hidden = qkv.shape[1] // 3
        slots = qkv[self.gather]
        first = self.shapes[0][0] * self.shapes[0][1]
        attended = []
        for (rows, length), keys, grid in zip(self.shapes, self.keys, (slots[:first], slots[first:]), strict=True):
            q, k, v = grid.view(rows, length, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)
            attended.append(out.transpose(1, 2).reshape(rows * length, hidden))
        return torch.cat(attended)[self.scatter]


class PackedGraph(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, gather: torch.Tensor,
                attention_mask_0: torch.Tensor, attention_mask_1: torch.Tensor, scatter: torch.Tensor) -> torch.Tensor:
        batch = GridBatch(input_ids, position_ids, gather, [attention_mask_0, attention_mask_1], scatter)
        return self.encoder(batch)[gather]  # both grids' states, flat, for pooling


def convert_packed(model_dir: Path, example_rows: list[np.ndarray], pad_id: int) -> object:
    """The packed IR (fp32 weights) with dynamic shapes, its inputs named as `PACKED_INPUTS`."""
    import warnings

    import openvino as ov

    graph = PackedGraph(load_bert(model_dir, torch.device("cpu"), torch.float32)).eval()
    inputs, _ = packed_inputs(example_rows, pad_id, 16)
    example = {name: torch.from_numpy(array) for name, array in inputs.items()}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are traced as size ops: dynamic
        converted = ov.convert_model(graph, example_input=example)
    for port, name in zip(converted.inputs, PACKED_INPUTS, strict=True):
        port.get_tensor().set_names({name})
    converted.outputs[0].get_tensor().set_names({HIDDEN_OUTPUT})
    return converted
