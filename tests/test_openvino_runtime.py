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
from predictor.openvino_runtime import OpenVINORuntime, cpu_cache_key
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


def test_compile_cache_serves_the_same_vectors_and_the_gate_still_runs(model_dir: Path, tmp_path: Path) -> None:
    """The second start imports the blob the first one wrote; what it computes is what a compile computes,
    and a bf16 start measures the imported result against fp32 as it does a compiled one."""
    spec = read_model_spec(model_dir)
    rows = TextTokenizer.for_model(spec).encode(english_corpus(48))
    first = OpenVINORuntime(spec, "bfloat16", 2, dtype_required=False, cache_dir=str(tmp_path))
    second = OpenVINORuntime(spec, "bfloat16", 2, dtype_required=False, cache_dir=str(tmp_path))
    assert first.cache_dir == second.cache_dir and first.cache_dir.parent == tmp_path
    assert list(first.cache_dir.glob("*.blob")), "the first start wrote no compiled blob"
    assert not first.loaded_from_cache and second.loaded_from_cache
    assert second.dtype == first.dtype
    if second.dtype == "bfloat16":
        assert second.min_cosine is not None and second.min_cosine == first.min_cosine
    np.testing.assert_array_equal(embed(first, rows, 8), embed(second, rows, 8))


def test_a_cache_dir_that_cannot_be_used_does_not_stop_the_start(model_dir: Path, tmp_path: Path) -> None:
    """A directory that cannot be created (as on a read-only filesystem) turns the cache off; a truncated
    blob (a start killed while writing it) is compiled again. Neither changes a vector."""
    spec = read_model_spec(model_dir)
    rows = TextTokenizer.for_model(spec).encode(english_corpus(16))
    plain = embed(OpenVINORuntime(spec, "float32", 2), rows, 8)
    (tmp_path / "file").write_text("not a directory")
    blocked = OpenVINORuntime(spec, "float32", 2, cache_dir=str(tmp_path / "file" / "cache"))
    assert blocked.cache_dir is None and not blocked.loaded_from_cache
    np.testing.assert_array_equal(embed(blocked, rows, 8), plain)
    written = OpenVINORuntime(spec, "float32", 2, cache_dir=str(tmp_path / "cache"))
    for blob in written.cache_dir.glob("*.blob"):
        blob.chmod(0o600)
        with blob.open("r+b") as handle:
            handle.truncate(blob.stat().st_size // 3)
    truncated = OpenVINORuntime(spec, "float32", 2, cache_dir=str(tmp_path / "cache"))
    assert not truncated.loaded_from_cache
    np.testing.assert_array_equal(embed(truncated, rows, 8), plain)


def test_another_cpu_has_another_cache_directory(tmp_path: Path) -> None:
    """A blob compiled on a CPU with other instruction sets is never looked up here (OpenVINO's own key
    for a CPU blob is its brand string, which VMs may report alike)."""
    import openvino as ov

    core = ov.Core()
    here = tmp_path / "here"
    here.write_text("model name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16\n")
    other = tmp_path / "other"
    other.write_text("model name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert cpu_cache_key(core, here) == cpu_cache_key(core, here)
    assert cpu_cache_key(core, here) != cpu_cache_key(core, other)


def test_the_predictor_knob_reaches_the_runtime(model_dir: Path, tmp_path: Path) -> None:
    """`--openvino_cache_dir` (KEMBED_OPENVINO_CACHE_DIR): a predictor's load() writes the blob there."""
    from predictor.model import EmbeddingModel
    from predictor.settings import PredictorSettings

    settings = PredictorSettings(model_dir=str(model_dir), backend="openvino", dtype="float32",
                                 openvino_cache_dir=str(tmp_path))
    assert EmbeddingModel("m", settings).load()
    assert list(tmp_path.glob("cpu-*/*.blob"))
