"""The OpenVINO runtime's serving settings change speed, never vectors: streams (parallel passes) and
padding to a multiple of 16 tokens give what one stream padded to the longest row gives."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from kembed.corpus import english_corpus
from kembed.launch import ROOT
from kembed.model_spec import read_model_spec
from kembed.tokenization import TextTokenizer
from predictor.openvino_runtime import OpenVINORuntime
from predictor.precision import min_cosine

EXPORTED = ROOT / ".cache" / "models" / "all-minilm-l6-v2"  # `make setup` exports it (kembed-export)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    assert (EXPORTED / "openvino" / "openvino_model.xml").is_file(), "run `make setup` (it exports the IR)"
    return EXPORTED


def embed(runtime: OpenVINORuntime, rows: list[np.ndarray], batch: int) -> np.ndarray:
    """Batches run on `parallel_passes` threads at once, as the batcher runs them."""
    batches = [rows[start : start + batch] for start in range(0, len(rows), batch)]
    with ThreadPoolExecutor(runtime.parallel_passes) as pool:
        return np.concatenate(list(pool.map(runtime, batches)))


def test_streams_and_length_padding_give_the_same_vectors(model_dir: Path) -> None:
    spec = read_model_spec(model_dir)
    rows = TextTokenizer.for_model(spec).encode(english_corpus(96))
    plain = OpenVINORuntime(spec, "float32", 2, hint="latency", pad_to_multiple_of=1)
    served = OpenVINORuntime(spec, "float32", 2, hint="throughput", pad_to_multiple_of=16)
    assert plain.parallel_passes == 1
    assert served.parallel_passes == served.streams >= 1
    assert served.batch_cost([17, 3]) == 2 * 32 and plain.batch_cost([17, 3]) == 2 * 17
    assert min_cosine(embed(plain, rows, 16), embed(served, rows, 7)) >= 0.99999


def test_bad_settings_are_refused(model_dir: Path) -> None:
    spec = read_model_spec(model_dir)
    with pytest.raises(ValueError, match="hint"):
        OpenVINORuntime(spec, "float32", 2, hint="fast")
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        OpenVINORuntime(spec, "float32", 2, pad_to_multiple_of=0)
