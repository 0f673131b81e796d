"""Every runtime and dtype against sentence-transformers, served by real predictors on 127.0.0.1.

The bundled model's fp32 IR is the one `make setup` exported with the real `kembed-export` (exported
here when absent or older than the exporter); each backend/dtype then serves the same 200 real
mixed-length texts. `kembed-export --int8` itself (NNCF calibration, the held-out gate) runs on a tiny
random model: what it proves does not depend on the model's size.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from kembed.cli import bundled_model_dir
from kembed.corpus import english_corpus
from kembed.launch import ROOT, Server, start_server
from kembed.model_spec import read_model_spec
from kembed.tokenization import TextTokenizer
from predictor import export as exporter
from predictor.precision import cpu_has_native_bf16, min_cosine, passes_gate
from tests.conftest import MODEL_NAME
from tests.st_models import backbone, st_model

CORPUS = english_corpus(210)
TEXTS, CALIBRATION = CORPUS[:200], CORPUS[200:210]
MADE_BY_SETUP = ROOT / ".cache" / "models" / "all-minilm-l6-v2"  # `make setup`: kembed-export --output this
MADE_BY_SETUP_INT8 = ROOT / ".cache" / "models" / "all-minilm-l6-v2-int8"  # `make test`: ... --int8 too
NATIVE_BF16 = "bfloat16" if cpu_has_native_bf16() else "float32"  # what `auto` means on this CPU


def export(model_dir: str, output: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "predictor.export", model_dir, "--output", str(output), *flags],
        cwd=ROOT, capture_output=True, text=True, encoding="utf-8", timeout=900,  # NNCF draws progress bars
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model with its fp32 IR, made by kembed-export: `make setup`'s when it is newer than
    the exporter (Make's own rule for redoing it), else exported here."""
    ir = MADE_BY_SETUP / "openvino" / "openvino_model.xml"
    if ir.is_file() and ir.stat().st_mtime > Path(exporter.__file__).stat().st_mtime:
        return MADE_BY_SETUP
    output = tmp_path_factory.mktemp("exported") / "minilm"
    done = export(bundled_model_dir(), output)
    assert done.returncode == 0, done.stdout + done.stderr
    return output


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calibration") / "calibration.txt"
    path.write_text("\n".join(CALIBRATION))
    return path


def tiny_model(root: Path, initializer_range: float) -> Path:
    """A tiny random sentence-transformers model. Its int8 IR's min cosine depends on the weights' scale:
    over six calibration sets, 0.9996-0.9999 at 0.1 (passes 0.99 with room), 0.98-0.999 at 0.3."""
    return st_model(root / "model", backbone(root / "backbone", initializer_range=initializer_range))


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(bundled_model_dir(), device="cpu").encode(TEXTS, batch_size=32)


def served_vectors(url: str, texts: list[str]) -> np.ndarray:
    parts = []
    for start in range(0, len(texts), 40):
        chunk = texts[start : start + 40]
        body = {"inputs": [{"name": "text", "shape": [len(chunk)], "datatype": "BYTES", "data": chunk}]}
        response = httpx.post(f"{url}/v2/models/{MODEL_NAME}/infer", json=body, timeout=120)
        assert response.status_code == 200, response.text
        output = response.json()["outputs"][0]
        parts.append(np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]))
    return np.concatenate(parts)


def serve(log_dir: Path, model_dir: Path | str, *flags: str, dtype: str = "auto") -> Server:
    log_dir.mkdir(parents=True, exist_ok=True)
    return start_server(
        "predictor", ["--model_name", MODEL_NAME, "--model_dir", str(model_dir), *flags],
        log_dir / "predictor.log", env={"KEMBED_DTYPE": dtype}, ready_path=f"/v2/models/{MODEL_NAME}/ready",
    )


# (model: bundled or exported, backend flag, dtype, backend and dtype the log must name, min cosine,
# --openvino_layout and the layout the log must name)
CASES = [
    ("bundled", "native", "float32", "native", "float32", 0.99999, None),
    ("bundled", "native", "bfloat16", "native", "bfloat16", 0.999, None),
    ("bundled", "transformers", "float32", "transformers", "float32", 0.99999, None),
    ("bundled", "auto", "auto", "native", NATIVE_BF16, 0.999, None),
    ("exported", "openvino", "float32", "openvino", "float32", 0.99999, "auto:packed"),
    ("exported", "openvino", "bfloat16", "openvino", "bfloat16", 0.999, "auto:packed"),
    ("exported", "openvino", "float32", "openvino", "float32", 0.99999, "padded:padded"),
    ("exported", "openvino", "bfloat16", "openvino", "bfloat16", 0.999, "padded:padded"),
    ("exported", "auto", "auto", "openvino", NATIVE_BF16, 0.999, "auto:packed"),
]


IDS = [f"{c[0]}-{c[1]}-{c[2]}" + (f"-{c[6].split(':')[0]}" if c[6] else "") for c in CASES]


class AheadOfTheirTests:
    """The selected cases' servers, started two ahead of their tests: a start is mostly single-threaded
    imports, so it runs on the core the serving (or the reference computation) leaves."""

    def __init__(self, ids: list[str], start: Callable[[str], Server]):
        self.waiting, self.start, self.started = list(ids), start, {}
        self.pool = ThreadPoolExecutor(2)
        self.start_ahead()

    def start_ahead(self) -> None:
        while self.waiting and len(self.started) < 2:
            case = self.waiting.pop(0)
            self.started[case] = self.pool.submit(self.start, case)

    def take(self, case: str) -> Server:
        if case not in self.started:  # tests run out of order
            self.waiting.remove(case)
            self.started[case] = self.pool.submit(self.start, case)
        future = self.started.pop(case)
        self.start_ahead()
        return future.result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        for future in self.started.values():
            if not future.cancelled() and future.exception() is None:
                future.result().stop()


@pytest.fixture(scope="module")
def runtime_servers(request, tmp_path_factory, exported) -> Iterator[AheadOfTheirTests]:
    logs = tmp_path_factory.mktemp("runtimes")
    cases = dict(zip(IDS, CASES, strict=True))

    def start(case: str) -> Server:
        model, backend, dtype, *_, layout = cases[case]
        model_dir = exported if model == "exported" else bundled_model_dir()
        flags = ("--openvino_layout", layout.split(":")[0]) if layout else ()
        return serve(logs / case, model_dir, "--backend", backend, *flags, dtype=dtype)

    selected = [item.callspec.id for item in request.session.items
                if getattr(item, "originalname", "") == "test_every_runtime_matches_sentence_transformers"]
    servers = AheadOfTheirTests(selected, start)
    yield servers
    servers.close()


@pytest.mark.parametrize(("model", "backend", "dtype", "log_backend", "log_dtype", "threshold", "layout"), CASES,
                         ids=IDS)
def test_every_runtime_matches_sentence_transformers(
    request, runtime_servers, reference, model, backend, dtype, log_backend, log_dtype, threshold, layout
):
    server = runtime_servers.take(request.node.callspec.id)
    try:
        got = served_vectors(server.url, TEXTS)
    finally:
        server.stop()
    assert got.shape == reference.shape
    cosine = min_cosine(reference, got)
    print(f"{model} {backend} {dtype}: min cosine {cosine:.6f} on {len(TEXTS)} texts")
    assert cosine >= threshold
    assert f"({log_backend} backend, {log_dtype}," in server.log()
    if layout:
        assert f"openvino: {layout.split(':')[1]} layout" in server.log()
    if backend == "auto":
        expected = "backend auto: openvino" if model == "exported" else "backend auto: torch (no "
        assert expected in server.log()


def test_missing_ir_is_a_startup_error_naming_the_file_and_the_tool(tmp_path) -> None:
    with pytest.raises(RuntimeError) as failure:
        serve(tmp_path, bundled_model_dir(), "--backend", "openvino", dtype="float32")
    message = str(failure.value)
    assert str(Path(bundled_model_dir()) / "openvino" / "openvino_model.xml") in message
    assert "kembed-export" in message


@pytest.fixture(scope="module")
def int8_exported() -> Path:
    """The bundled model's int8 IR: `make test` exports it once (NNCF, ~3 min: too slow to redo here)."""
    ir = MADE_BY_SETUP_INT8 / "openvino" / "openvino_model_qint8_quantized.xml"
    assert ir.is_file(), f"no {ir}: `make test` exports it (the Makefile's {MADE_BY_SETUP_INT8.name} rule)"
    return MADE_BY_SETUP_INT8


def test_int8_serves_only_lengths_its_check_passed_and_matches_sentence_transformers(
    tmp_path, int8_exported, reference
) -> None:
    """The int8 IR has been wrong at one padded length (cosine 0.82 at 32 tokens): served, every length
    a batch runs at has passed the check, and 200 mixed-length texts stay within 0.99 of fp32."""
    tokens = TextTokenizer.for_model(read_model_spec(int8_exported)).encode(TEXTS)
    assert sum(16 < len(row) <= 32 for row in tokens) >= 10  # texts that would run at 32 unchecked
    order = sorted(range(len(TEXTS)), key=lambda i: len(tokens[i]))  # requests of like lengths: one
    server = serve(tmp_path, int8_exported, "--backend", "openvino", dtype="int8")  # padded length each
    try:
        got = np.zeros_like(reference)
        for start in range(0, len(order), 8):
            chunk = order[start : start + 8]
            got[chunk] = served_vectors(server.url, [TEXTS[i] for i in chunk])
    finally:
        server.stop()
    log = server.log()
    assert "(openvino backend, int8," in log, log
    line = next(line for line in log.splitlines() if "int8 length check:" in line)
    assert "on 16 lengths: avoided lengths (below 0.99): " in line and "min cosine at the others: 16:" in line
    cosine = min_cosine(reference, got)
    print(f"int8 served vs sentence-transformers on {len(TEXTS)} texts: min cosine {cosine:.5f}; {line}")
    assert cosine >= 0.99


def test_int8_whose_stored_reference_it_misses_is_refused_naming_the_lengths(tmp_path, int8_exported) -> None:
    from predictor.openvino_runtime import OpenVINORuntime

    model_dir = drifted_copy(int8_exported, tmp_path / "drifted", "kembed_gate_qint8.json")
    with pytest.raises(RuntimeError, match=r"longest padded length 256.*avoided lengths \(below 0\.99\): 16 \("):
        OpenVINORuntime(read_model_spec(model_dir), "int8", 2)


def test_openvino_predictor_never_imports_torch(exported) -> None:
    script = (
        "import sys\n"
        "import predictor.__main__\n"
        "from predictor.model import EmbeddingModel\n"
        "from predictor.settings import PredictorSettings\n"
        f"model = EmbeddingModel('m', PredictorSettings(model_dir={str(exported)!r}, backend='openvino'))\n"
        "assert model.load()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def drifted_copy(exported: Path, target: Path, gate_name: str = "kembed_gate.json") -> Path:
    """The exported model with a stored fp32 reference that no longer matches the IR (rows rotated)."""
    shutil.copytree(exported, target, ignore=shutil.ignore_patterns("*.bin", "*.safetensors"))
    for path in exported.glob("**/*"):
        if path.suffix in (".bin", ".safetensors"):
            (target / path.relative_to(exported)).symlink_to(path)
    gate_file = target / "openvino" / gate_name
    gate = json.loads(gate_file.read_text())
    gate["mean_pooled"] = gate["mean_pooled"][1:] + gate["mean_pooled"][:1]
    gate_file.write_text(json.dumps(gate))
    return target


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="auto is float32 without native bf16: nothing to gate")
def test_precision_gate_falls_back_to_fp32_under_auto_and_refuses_an_explicit_dtype(
    tmp_path, exported, reference
) -> None:
    model_dir = drifted_copy(exported, tmp_path / "drifted")
    server = serve(tmp_path, model_dir)
    try:
        got = served_vectors(server.url, TEXTS[:40])
    finally:
        server.stop()
    assert "falling back to float32" in server.log()
    assert "(openvino backend, float32," in server.log()
    assert min_cosine(reference[:40], got) >= 0.99999  # fp32 really is what runs
    with pytest.raises(RuntimeError, match=r"below 0\.999; serve with --dtype float32"):
        serve(tmp_path, model_dir, "--backend", "openvino", dtype="bfloat16")


def test_gate_threshold_per_dtype() -> None:
    assert passes_gate("bfloat16", 0.9995, required=True, measured="t")
    assert not passes_gate("bfloat16", 0.998, required=False, measured="t")
    assert passes_gate("int8", 0.995, required=True, measured="t")
    with pytest.raises(RuntimeError, match=r"below 0\.99;"):
        passes_gate("int8", 0.98, required=True, measured="t")


def test_export_writes_the_fp32_and_int8_irs_and_prints_their_min_cosine(tmp_path, calibration) -> None:
    model_dir = tiny_model(tmp_path, initializer_range=0.1)
    done = export(str(model_dir), tmp_path / "out", "--int8", "--calibration", str(calibration))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"fp32 IR vs torch fp32 on \d+ gate texts: min cosine [01]\.\d+", done.stdout), done.stdout
    assert re.search(r"int8 IR .* min cosine 0\.\d+, mean 0\.\d+", done.stdout), done.stdout
    assert "int8 IR at every padded length (multiples of 16): avoided lengths (below 0.99): " in done.stdout
    ir_dir = tmp_path / "out" / "openvino"
    assert re.search(r"packed IR vs torch fp32 on \d+ gate texts in one batch: min cosine [01]\.\d+", done.stdout)
    for name in ("openvino_model.xml", "openvino_model.bin", "kembed_gate.json", "kembed_packed.xml",
                 "kembed_packed.bin", "openvino_model_qint8_quantized.xml", "openvino_model_qint8_quantized.bin",
                 "kembed_gate_qint8.json"):
        assert (ir_dir / name).is_file(), name
    assert (tmp_path / "out" / "modules.json").is_file()  # --output is a full copy of the model
    gate = json.loads((ir_dir / "kembed_gate_qint8.json").read_text())
    assert isinstance(gate["avoided_lengths"], list) and gate["rows"]  # what the server checks again


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # in-process here: convert_model's tracing
def test_int8_export_refuses_to_write_below_min_cosine(tmp_path, calibration, capsys) -> None:
    model_dir = tiny_model(tmp_path, initializer_range=0.3)
    args = exporter.build_parser().parse_args([str(model_dir), "--output", str(tmp_path / "out"), "--int8",
                                               "--calibration", str(calibration), "--min_cosine", "0.99999"])
    assert exporter.export(args) == 1
    assert "refusing to write the int8 IR" in capsys.readouterr().err
    assert (tmp_path / "out" / "openvino" / "openvino_model.xml").is_file()  # the fp32 IR passed its own check
    assert not (tmp_path / "out" / "openvino" / "openvino_model_qint8_quantized.xml").exists()


@pytest.mark.parametrize(("kind", "pooling", "include_prompt"), [("bert", "cls", False), ("xlm-roberta", "mean", True)])
def test_packed_ir_of_a_bert_family_model_matches_sentence_transformers(tmp_path, kind, pooling, include_prompt):
    """kembed-export's packed IR for other BERT-family checkpoints (roberta's position offset, CLS
    pooling with the prompt left out), against sentence-transformers itself, in fp32."""
    from sentence_transformers import SentenceTransformer

    from predictor.openvino_runtime import OpenVINORuntime

    prompt = "query: "
    model_dir = st_model(tmp_path / "model", backbone(tmp_path / "backbone", kind=kind, initializer_range=0.1),
                         pooling=pooling, include_prompt=include_prompt, prompts={"query": prompt}, max_seq_length=128)
    done = export(str(model_dir), tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    spec = read_model_spec(tmp_path / "out")
    tokenizer = TextTokenizer.for_model(spec)
    runtime = OpenVINORuntime(spec, "float32", 2, tokenizer.pad_id)
    assert runtime.layout == "packed"
    texts = TEXTS[:48]
    rows = tokenizer.encode(texts, prompt=prompt)
    got = np.concatenate([runtime(rows[i : i + 16], [tokenizer.prompt_length(prompt)] * len(rows[i : i + 16]))
                          for i in range(0, len(rows), 16)])
    st = SentenceTransformer(str(model_dir), device="cpu")
    expected = st.encode(texts, prompt=prompt, normalize_embeddings=False)
    assert min_cosine(expected, got) >= 0.99999


def test_export_of_a_model_bert_py_cannot_build_writes_no_packed_ir(tmp_path):
    model_dir = st_model(tmp_path / "model", backbone(tmp_path / "backbone", kind="modernbert", initializer_range=0.1))
    done = export(str(model_dir), tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no packed IR (model_type 'modernbert'" in done.stdout
    assert (tmp_path / "out" / "openvino" / "openvino_model.xml").is_file()
    assert not (tmp_path / "out" / "openvino" / "kembed_packed.xml").exists()
