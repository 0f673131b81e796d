"""After pooling: the model's Dense layers and Normalize modules, then each request's own options.

One numpy path that every runtime shares (torch or not), so a model's chain means the same thing
whichever backend pooled the tokens. `Head` is the model's part (`ModelSpec.head`: the Dense layers,
and any Normalize before the last module); it runs in the batcher's worker, per batch. `finish` is
the request's part: the Matryoshka `dimensions` cut, then L2 normalization when the request (or, by
default, the model's final Normalize) asks for it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from kembed.model_spec import Dense, Normalize
from kembed.model_spec import Head as HeadModule

_erf = np.vectorize(math.erf, otypes=[np.float32])
ACTIVATIONS = {
    "identity": lambda x: x,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / np.float32(math.sqrt(2)))),  # torch's exact GELU
}


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    """A module's weights as float32 numpy: safetensors without torch; a bfloat16 or pickled
    (`pytorch_model.bin`) file through torch, weights only (no code from the file runs)."""
    safetensors = path / "model.safetensors"
    if safetensors.is_file():
        try:
            from safetensors.numpy import load_file

            return {name: array.astype(np.float32) for name, array in load_file(str(safetensors)).items()}
        except (TypeError, ValueError):  # a dtype numpy lacks (bfloat16)
            from safetensors.torch import load_file as load_torch

            return {name: t.float().numpy() for name, t in load_torch(str(safetensors)).items()}
    pickled = path / "pytorch_model.bin"
    if pickled.is_file():
        import torch

        state = torch.load(pickled, map_location="cpu", weights_only=True)
        return {name: tensor.float().numpy() for name, tensor in state.items()}
    raise ValueError(f"{path} has no model.safetensors or pytorch_model.bin for its Dense weights")


class DenseLayer:
    def __init__(self, module: Dense):
        tensors = _load_tensors(module.path)
        self.weight = np.ascontiguousarray(tensors["linear.weight"].T)  # [in, out]
        if self.weight.shape != (module.in_features, module.out_features):
            raise ValueError(f"{module.path}: linear.weight is {tensors['linear.weight'].shape}, the config says "
                             f"{module.out_features} x {module.in_features}")
        self.bias = tensors["linear.bias"] if module.bias else None
        self.activation = ACTIVATIONS[module.activation]
        self.residual: np.ndarray | bool = False
        if module.residual:
            same = module.in_features == module.out_features
            self.residual = True if same else np.ascontiguousarray(tensors["residual.weight"].T)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = x @ self.weight
        if self.bias is not None:
            out += self.bias
        out = self.activation(out)
        if self.residual is True:
            out = out + x
        elif isinstance(self.residual, np.ndarray):
            out = out + x @ self.residual
        return out.astype(np.float32, copy=False)


class Head:
    """The model's modules between Pooling and its final Normalize, with their weights loaded."""

    def __init__(self, modules: tuple[HeadModule, ...]):
        self.steps = [DenseLayer(m) if isinstance(m, Dense) else l2_normalize for m in modules if
                      isinstance(m, Dense | Normalize)]

    def __call__(self, pooled: np.ndarray) -> np.ndarray:
        embeddings = np.asarray(pooled, dtype=np.float32)
        for step in self.steps:
            embeddings = step(embeddings)
        return embeddings


def finish(embeddings: np.ndarray, normalize: bool, dimensions: int | None) -> np.ndarray:
    """Matryoshka cut, then L2 normalization (so a cut vector is unit length again)."""
    if dimensions is not None:
        embeddings = embeddings[:, :dimensions]
    if normalize:
        embeddings = l2_normalize(embeddings)
    return np.ascontiguousarray(embeddings, dtype=np.float32)
