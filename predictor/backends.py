"""Which runtime serves a model: OpenVINO, kembed's native packed BERT or transformers.

`auto` on a CPU picks OpenVINO when the package is installed and the model directory has an IR
(`kembed-export` makes one), else torch (native when it can build the model, else transformers). On a
GPU it is always torch. Only the chosen runtime's module is imported: OpenVINO serving never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from kembed.model_spec import ModelSpec
from predictor.runtime import Runtime

logger = logging.getLogger("kembed.predictor")

BACKENDS = ("auto", "native", "transformers", "openvino")


def choose_backend(backend: str, device: str, dtype: str, spec: ModelSpec) -> str:
    """`openvino` or the torch backend name (`auto`, `native` or `transformers`, for `Encoder`)."""
    from predictor.openvino_runtime import ir_path, missing_ir_message, openvino_installed

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    ir = ir_path(spec.model_dir, dtype)
    if backend == "openvino":
        if device != "cpu":
            raise ValueError(f"backend 'openvino' runs on the CPU, not on {device!r}")
        if not openvino_installed():
            raise ModuleNotFoundError("backend 'openvino' needs the openvino package (pip install openvino)")
        if not ir.is_file():
            raise FileNotFoundError(missing_ir_message(spec.model_dir, dtype))
        return backend
    if backend == "auto" and device == "cpu":
        if ir.is_file() and openvino_installed():
            logger.info("backend auto: openvino (%s)", ir)
            return "openvino"
        logger.info("backend auto: torch (%s)", "openvino is not installed" if ir.is_file() else f"no {ir}")
    return backend


def load_runtime(
    spec: ModelSpec,
    backend: str,
    device: str,
    dtype: str,
    threads: int,
    pad_id: int,
    gate_rows: Sequence[np.ndarray] | None = None,
    dtype_required: bool = True,
    openvino_hint: str = "throughput",
    pad_to_multiple_of: int = 16,
    openvino_cache_dir: str = "",
    openvino_shape_cache: int = 1024,
    openvino_layout: str = "auto",
    openvino_lone_pass: bool = True,
) -> Runtime:
    """The runtime, loaded; a reduced `dtype` has passed the precision gate (or, when not
    `dtype_required`, fell back to float32). The last six are the OpenVINO runtime's."""
    chosen = choose_backend(backend, device, dtype, spec)
    if chosen == "openvino":
        from predictor.openvino_runtime import OpenVINORuntime

        return OpenVINORuntime(spec, dtype, threads, pad_id, gate_rows, dtype_required, hint=openvino_hint,
                               pad_to_multiple_of=pad_to_multiple_of, cache_dir=openvino_cache_dir,
                               layout=openvino_layout, shape_cache=openvino_shape_cache,
                               lone_pass=openvino_lone_pass)
    import torch

    from predictor.encoder import Encoder

    torch.set_num_threads(threads)
    return Encoder(spec, device, dtype, pad_id, chosen, gate_rows, dtype_required)
