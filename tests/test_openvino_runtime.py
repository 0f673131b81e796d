"""The OpenVINO runtime's serving settings change speed, never vectors: streams (parallel passes),
padding to a multiple of 16 tokens and the lone-pass compilation (all threads in one stream) give what
one stream padded to the longest row gives."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from kembed.corpus import english_corpus
from kembed.launch import ROOT
from kembed.model_spec import read_model_spec
from kembed.tokenization import TextTokenizer
from predictor.openvino_runtime import OpenVINORuntime, cpu_cache_key, packed_ir_path
from predictor.precision import min_cosine

EXPORTED = ROOT / ".cache" / "models" / "all-minilm-l6-v2"  # `make setup` exports it (kembed-export)
EXPORTED_INT8 = ROOT / ".cache" / "models" / "all-minilm-l6-v2-int8"  # `make test`: ... --int8 too


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
    plain = OpenVINORuntime(spec, "float32", 2, hint="latency", pad_to_multiple_of=1, layout="padded")
    served = OpenVINORuntime(spec, "float32", 2, hint="throughput", pad_to_multiple_of=16, layout="padded")
    assert plain.parallel_passes == 1
    assert served.parallel_passes == served.streams >= 1
    assert served.batch_cost([17, 3]) == 2 * 32 and plain.batch_cost([17, 3]) == 2 * 17
    assert min_cosine(embed(plain, rows, 16), embed(served, rows, 7)) >= 0.99999


def test_packed_and_padded_layouts_give_the_same_vectors(model_dir: Path) -> None:
    """kembed's packed IR (linear layers on real tokens, attention on two grids) computes what the
    padded IR computes, on mixed lengths in one batch: fp32 exactly, bf16 within its gate."""
    assert (model_dir / "openvino" / "kembed_packed.xml").is_file(), "run `make setup` (kembed-export writes it)"
    spec = read_model_spec(model_dir)
    rows = TextTokenizer.for_model(spec).encode(english_corpus(96))
    padded = OpenVINORuntime(spec, "float32", 2, layout="padded", pad_to_multiple_of=1)
    packed = OpenVINORuntime(spec, "float32", 2, layout="auto")
    assert (padded.layout, packed.layout) == ("padded", "packed")
    reference = embed(padded, rows, 16)
    for batch in (1, 7, 32):  # one row; a long row among short ones; many
        assert min_cosine(reference, embed(packed, rows, batch)) >= 0.99999
    bf16 = OpenVINORuntime(spec, "bfloat16", 2, layout="packed", dtype_required=False)
    if bf16.dtype == "bfloat16":
        assert min_cosine(reference, embed(bf16, rows, 32)) >= 0.999
    # the batcher's cost: padded pays rows x longest, packed its tokens and its attention grids
    assert padded.batch_cost([16] * 15 + [256]) == 16 * 256
    assert packed.batch_cost([16] * 15 + [256]) < 2 * (15 * 16 + 256)


def test_layout_choice_and_its_errors(model_dir: Path, tmp_path: Path) -> None:
    """auto: packed where its IR is; padded without it or for int8; packed asked for but missing is a
    startup error naming the file and kembed-export."""
    import shutil

    from predictor.openvino_runtime import choose_layout

    assert choose_layout(model_dir, "bfloat16", "auto") == "packed"
    assert choose_layout(model_dir, "int8", "auto") == "padded"
    assert choose_layout(model_dir, "float32", "padded") == "padded"
    with pytest.raises(ValueError, match="int8 IR is padded"):
        choose_layout(model_dir, "int8", "packed")
    with pytest.raises(ValueError, match="layout"):
        choose_layout(model_dir, "float32", "sideways")
    bare = tmp_path / "model"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("kembed_packed.*"))
    assert choose_layout(bare, "float32", "auto") == "padded"
    with pytest.raises(FileNotFoundError, match=r"kembed_packed\.xml.*kembed-export"):
        choose_layout(bare, "float32", "packed")


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


@pytest.mark.parametrize("case", ["padded", "packed", "int8"])
def test_a_lone_pass_runs_on_all_threads_and_gives_what_parallel_passes_give(model_dir: Path, case: str) -> None:
    """A pass with none other in flight runs on the latency compilation (1 stream of every thread, as
    OpenVINO itself reports, and its request's output changes shape with each batch); passes that overlap run
    on the streams; both compute the same vectors, in both IR layouts and the int8 IR."""
    if case == "packed":
        assert packed_ir_path(model_dir).is_file(), "run `make setup` (kembed-export writes it)"
    if case == "int8":
        assert (EXPORTED_INT8 / "openvino").is_dir(), "run `make test` (it exports the int8 IR)"
        model_dir = EXPORTED_INT8
    spec = read_model_spec(model_dir)
    rows = TextTokenizer.for_model(spec).encode(english_corpus(64))
    runtime = OpenVINORuntime(spec, "int8" if case == "int8" else "float32", 2,
                              layout="packed" if case == "packed" else "padded")
    assert runtime.layout == ("packed" if case == "packed" else "padded")
    assert runtime.streams == 2 and runtime.lone_request is None  # compiled after ready, by the first lone pass
    runtime.measure_speed(32, 8192)
    assert runtime.lone_request is None  # the start's measurements run on the streams
    runtime(rows[:1])
    lone_request = runtime.lone_request.result(timeout=120)
    compiled = lone_request.get_compiled_model()
    assert int(compiled.get_property("NUM_STREAMS")) == 1 and int(compiled.get_property("INFERENCE_NUM_THREADS")) == 2

    batches = [rows[start : start + 7] for start in range(0, len(rows), 7)]
    before = runtime.lone_passes
    lone, shapes = [], set()
    for batch in batches:
        lone.append(runtime(batch))
        shapes.add(tuple(lone_request.get_output_tensor(0).shape))  # what OpenVINO last ran there
    assert runtime.lone_passes - before == len(batches) and len(shapes) > 1
    lone = np.concatenate(lone)
    before = runtime.lone_passes
    parallel = embed(runtime, rows, 7)
    assert runtime.lone_passes - before < len(batches)  # passes that overlapped ran on the streams
    assert min_cosine(lone, parallel) >= 0.99999


def test_lone_pass_off_keeps_every_pass_on_the_streams(model_dir: Path) -> None:
    spec = read_model_spec(model_dir)
    for runtime in (OpenVINORuntime(spec, "float32", 2, lone_pass=False),
                    OpenVINORuntime(spec, "float32", 2, hint="latency")):  # one stream has every thread already
        runtime([np.arange(1000, 1010)])
        assert runtime.lone_request is None and runtime.lone_passes == 0
