"""The OpenVINO runtime: an IR in sentence-transformers' layout, padded batches, no torch import.

Why: on a CPU, OpenVINO's graph compiler with the bf16 inference-precision hint embeds ~3-4x faster
than torch fp32, and a predictor that imports neither torch nor transformers is ready in about a
second. The IR is `<model_dir>/openvino/openvino_model.xml` (`..._qint8_quantized.xml` for int8), as
`SentenceTransformer(dir, backend="openvino")` saves it and `kembed-export` writes it: inputs
`input_ids`, `attention_mask` (and `token_type_ids` where the model has them), output
`last_hidden_state` [B, L, H]. Pooling and the model's head then run in numpy (`pooling.py`, `postprocess.py`).
For BERT-family models kembed-export also writes `openvino/kembed_packed.xml`, which computes the same
states with its linear layers on real tokens only (`packed_layout.py`); `layout` auto serves it when it
is there (not for int8, whose IR is padded).

The gate (precision.py): with the bf16 hint or the int8 IR, the rows `kembed-export` stored beside the
IR (`kembed_gate*.json`: token ids and their fp32 torch mean-pooled states) are embedded and compared; an
IR without that file is measured against the fp32 IR compiled in f32 (a slower start, logged). int8 is
measured at every length a batch may be padded to and serves only the lengths that pass (length_check.py).
"""

from __future__ import annotations

import hashlib
import json
import locale
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from kembed.model_spec import ModelSpec, Pooling
from kembed.tokenization import pad_batch
from predictor.length_check import check_lengths, checked_lengths
from predictor.packed_layout import PACKED_INPUTS, packed_cost, packed_inputs, pool_grids
from predictor.pooling import PromptLengths, pool_padded_numpy
from predictor.postprocess import Head
from predictor.precision import CPUINFO, MIN_COSINE, cpu_flags, min_cosine, passes_gate, synthetic_gate_rows
from predictor.runtime import Runtime, Speed

logger = logging.getLogger("kembed.predictor")

IR_DIR = "openvino"
IR_FILES = {"float32": "openvino_model.xml", "int8": "openvino_model_qint8_quantized.xml"}
PACKED_FILE = "kembed_packed.xml"
GATE_FILES = {"float32": "kembed_gate.json", "int8": "kembed_gate_qint8.json"}
HIDDEN_OUTPUT = "last_hidden_state"
MEAN = Pooling(("mean",))  # what the precision gate compares, whatever the model pools


def ir_path(model_dir: Path, dtype: str) -> Path:
    """The IR a dtype serves from: the int8 one for int8, the fp32 one (run with a bf16 hint) otherwise."""
    return Path(model_dir) / IR_DIR / IR_FILES["int8" if dtype == "int8" else "float32"]


def packed_ir_path(model_dir: Path) -> Path:
    return Path(model_dir) / IR_DIR / PACKED_FILE


def gate_path(model_dir: Path, dtype: str) -> Path:
    """kembed-export's fp32 torch reference for this IR: gate texts for the fp32 IR, the held-out texts of
    the export's own check (with its --min_cosine) for the int8 one."""
    return Path(model_dir) / IR_DIR / GATE_FILES["int8" if dtype == "int8" else "float32"]


def openvino_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("openvino") is not None


def missing_ir_message(model_dir: Path, dtype: str) -> str:
    int8 = " --int8 --calibration TEXTS.txt" if dtype == "int8" else ""
    return (f"backend 'openvino' needs {ir_path(model_dir, dtype)}; make it with "
            f"`kembed-export {model_dir}{int8}` (or `kembed-export {model_dir} --output DIR{int8}` for a "
            "read-only model directory, then serve DIR)")


def cpu_computes_bf16(core: object) -> bool:
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


HINTS = ("throughput", "latency")
LAYOUTS = ("auto", "packed", "padded")


def choose_layout(model_dir: Path, dtype: str, layout: str) -> str:
    """packed where asked for or (auto) where its IR exists, except for int8 (a padded IR)."""
    if layout not in LAYOUTS:
        raise ValueError(f"openvino layout must be one of {LAYOUTS}, got {layout!r}")
    packed = packed_ir_path(model_dir)
    if layout == "packed":
        if dtype == "int8":
            raise ValueError("--openvino_layout packed: the int8 IR is padded; use auto or padded with int8")
        if not packed.is_file():
            raise FileNotFoundError(f"--openvino_layout packed needs {packed}; `kembed-export {model_dir}` writes it "
                                    "for BERT-family models")
        return "packed"
    return "packed" if layout == "auto" and dtype != "int8" and packed.is_file() else "padded"


def cpu_cache_key(core: object, cpuinfo: Path = CPUINFO) -> str:
    """Names the compile-cache subdirectory of this CPU and OpenVINO version. OpenVINO's own key for a CPU
    blob is the model, the compile options and the CPU's brand string, which a VM may report alike for
    different CPUs; the blob holds the model as transformed for the CPU that compiled it. With its ISA
    flags in the directory name, a blob compiled elsewhere is never found here: it is a miss, and a miss
    compiles."""
    import openvino as ov

    try:
        model = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")), "")
    except OSError:
        model = ""
    identity = "\n".join([ov.get_version(), core.get_property("CPU", "FULL_DEVICE_NAME"), model,
                          " ".join(sorted(cpu_flags(cpuinfo)))])
    return "cpu-" + hashlib.sha256(identity.encode()).hexdigest()[:16]


def use_compile_cache(core: object, cache_dir: str) -> Path | None:
    """Points OpenVINO's model cache (CACHE_DIR) at this CPU's subdirectory of `cache_dir`; compile_model
    then imports the blob a previous start wrote instead of compiling (or compiles and writes one).
    A directory that cannot be created (a read-only one without this CPU's subdirectory) means no cache:
    logged, and the start goes on. A read-only directory that has it is read; an unwritable one that
    lacks a blob just compiles (OpenVINO ignores the failed write), and a truncated blob is recompiled."""
    if not cache_dir:
        return None
    path = Path(cache_dir) / cpu_cache_key(core)
    try:
        core.set_property({"CACHE_DIR": str(path)})
    except RuntimeError as exc:
        logger.warning("openvino compile cache off: %s", str(exc).strip().splitlines()[-1])
        return None
    return path


class OpenVINORuntime(Runtime):
    """Compiles the IR for the CPU: `threads` inference threads, OpenVINO's performance `hint`, and the
    inference precision `dtype` asks for (bf16 where the CPU computes it; int8 runs its quantized IR
    with bf16 for what is left in floating point).

    `throughput` lets OpenVINO split the threads into streams (on 2 CPUs: 2 streams of 1 thread) and
    the batcher runs one pass per stream at once. Served, this is what keeps up: a pass spread over
    all threads (`latency`, one stream) stalls whenever the server's event loop takes one of its CPUs,
    while independent single-thread passes just share them; a lone text takes about as long on one
    thread as on two.
    Batches are padded to a multiple of `pad_to_multiple_of` tokens: a dynamic-shape model compiles
    kernels per input shape, and fewer shapes repeat more often (faster, bounded memory).
    `layout` packed serves kembed's packed IR (packed_layout.py): a batch then costs its tokens plus
    its attention grids instead of rows x longest, so mixed lengths batch together.

    `lone_pass` (with `throughput` and more than one thread): a pass that starts while no other is in
    flight runs on a second compilation, one stream of all the threads (the latency hint). On a
    stream it would get one thread while the other CPUs idle: ~1.4x slower for a lone text. That
    compilation (and its warm-up) starts with the first lone pass, after ready: it runs in the
    background (on the CPU a one-stream pass leaves free) and is used once done (`lone_request`), so
    start-up is not slower. It computes the same numbers as the streams (tested); the gate and the
    batcher's measurements run on the streams. `lone_passes` counts the passes it ran."""

    backend = "openvino"
    packed = False
    loaded_from_cache = False  # compile_model imported a blob from the compile cache

    def __init__(
        self,
        spec: ModelSpec,
        dtype: str,
        threads: int,
        pad_id: int = 0,
        gate_rows: Sequence[np.ndarray] | None = None,
        dtype_required: bool = True,
        hint: str = "throughput",
        pad_to_multiple_of: int = 16,
        cache_dir: str = "",
        layout: str = "auto",
        shape_cache: int = 1024,
        lone_pass: bool = True,
    ):
        import openvino as ov

        if hint not in HINTS:
            raise ValueError(f"openvino hint must be one of {HINTS}, got {hint!r}")
        if pad_to_multiple_of < 1:
            raise ValueError("pad_to_multiple_of must be at least 1")
        self.spec = spec
        self.pad_id = pad_id
        self.threads = threads
        self.hint = hint
        self.pad_to_multiple_of = pad_to_multiple_of
        self.shape_cache = shape_cache
        self.head = Head(spec.head)
        path = ir_path(spec.model_dir, dtype)
        if not path.is_file():
            raise FileNotFoundError(missing_ir_message(spec.model_dir, dtype))
        self.layout = choose_layout(spec.model_dir, dtype, layout)
        if self.layout == "packed":
            path = packed_ir_path(spec.model_dir)
        self.ir_file = path
        self._core = ov.Core()
        self.cache_dir = use_compile_cache(self._core, cache_dir)
        bf16 = cpu_computes_bf16(self._core)
        if dtype == "bfloat16" and not bf16:
            if dtype_required:
                raise RuntimeError("--dtype bfloat16 with the openvino backend needs a CPU with native bf16 "
                                   "(avx512_bf16 or AMX); this one has none: use --dtype float32")
            dtype = "float32"
        self._ir = self._core.read_model(str(path))
        self._inputs = {port.get_any_name() for port in self._ir.inputs}
        needed = set(PACKED_INPUTS) if self.layout == "packed" else {"input_ids", "attention_mask"}
        outputs = {name for port in self._ir.outputs for name in port.get_names()}
        if needed - self._inputs or HIDDEN_OUTPUT not in outputs:
            raise ValueError(f"{path} is not a feature-extraction IR: inputs {sorted(self._inputs)}, outputs "
                             f"{sorted(outputs)} (need {', '.join(sorted(needed))} -> {HIDDEN_OUTPUT})")
        logger.info("openvino: %s layout (%s)", self.layout, path)
        self.dtype = dtype
        self.precision_hint = "bf16" if dtype in ("bfloat16", "int8") and bf16 else "f32"
        self._lock = threading.Lock()  # guards the in-flight count that routes a pass
        self._in_flight = 0
        self._lone_ok = False  # the gate measures the streams
        self.lone_passes = 0
        self.lone_request: Future[object] | None = None
        self._compile_requests(self.precision_hint)
        # Passes here, before any are concurrent: OpenVINO's Python binding initializes statics on its
        # first infer, and two first infers at once deadlocked (a C++ static guard against the GIL).
        if dtype in ("bfloat16", "int8"):
            # int8 has no fallback of its own (its IR is quantized): it passes the gate or does not start.
            required = dtype_required or dtype == "int8"
            self._gate(dtype, gate_rows or synthetic_gate_rows(spec.vocab_size), required)
        else:
            self._pooled([np.full(2, pad_id, dtype=np.int64)], MEAN)
        self._lone_wanted = lone_pass and self.hint == "throughput" and self.streams > 1
        self._lone_ok = True

    def _compile(self, precision: str, ir: object = None, hint: str | None = None, cache: bool = True) -> object:
        """The IR (or another) compiled with this inference precision and the performance hint
        (`cache` False: not through the compile cache, when there is one)."""
        return self._core.compile_model(ir or self._ir, "CPU", {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": (hint or self.hint).upper(),
            # prepared kernels per input shape (5000 by default; the packed IR meets many shapes)
            "CPU_RUNTIME_CACHE_CAPACITY": self.shape_cache,
            **({} if cache else {"CACHE_DIR": ""}),
        })

    def _compile_requests(self, precision: str) -> None:
        """One infer request per stream: the passes the batcher may run at once."""
        compiled = self._compile(precision)
        if self.cache_dir is not None:
            self.loaded_from_cache = bool(compiled.get_property("LOADED_FROM_CACHE"))
            logger.info("openvino compile cache %s: %s", self.cache_dir,
                        f"{precision} imported" if self.loaded_from_cache else f"miss, {precision} compiled")
        self.streams = int(compiled.get_property("NUM_STREAMS"))
        self.parallel_passes = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        for _ in range(self.parallel_passes):
            self._requests.put(compiled.create_infer_request())

    def _compile_lone_request(self) -> Future[object]:
        """The lone-pass infer request: compiled with the latency hint and warmed in a background
        thread; a failure there is logged and leaves every pass on the streams."""
        started = time.perf_counter()

        def compile_and_warm() -> object:
            process_locale = locale.setlocale(locale.LC_ALL)
            try:
                request = self._compile(self.precision_hint, hint="latency", cache=False).create_infer_request()
                longest = min(16, self.spec.max_seq_length)
                warm = [np.full(length, self.pad_id, dtype=np.int64) for length in (longest, max(1, longest - 4))]
                self._pooled(warm, MEAN, request=request)
                return request
            finally:  # OpenVINO on this second thread left the process's locale at "C": Python then read
                # UTF-8 files as ASCII (tests saw it beside other runtimes' compile caches)
                locale.setlocale(locale.LC_ALL, process_locale)

        def log(done: Future[object]) -> None:
            if done.exception() is not None:
                logger.warning("openvino: the lone-pass compilation failed (every pass runs on the streams): %s",
                               done.exception())
                return
            logger.info("openvino: a lone pass runs on 1 stream of %d threads, others on %d streams "
                        "(compiled in the background in %.2fs)", self.threads, self.streams,
                        time.perf_counter() - started)

        compiler = ThreadPoolExecutor(1, thread_name_prefix="kembed-openvino-compile")
        future = compiler.submit(compile_and_warm)
        compiler.shutdown(wait=False)
        future.add_done_callback(log)
        return future

    @contextmanager
    def _streams_only(self) -> Iterator[None]:
        """Passes inside run on the streams: the batcher's measurements are about load, when they serve."""
        before, self._lone_ok = self._lone_ok, False
        try:
            yield
        finally:
            self._lone_ok = before

    def _acquire(self) -> tuple[object, bool]:
        """An infer request for one pass, and whether it is the lone one: it is when no other pass
        is in flight (the batcher's workers call from several threads) and it is compiled (the first
        such pass starts its compilation and runs on a stream)."""
        with self._lock:
            alone = self._lone_ok and self._in_flight == 0
            if alone and self._lone_wanted and self.lone_request is None:
                self.lone_request = self._compile_lone_request()
            lone = self.lone_request
            self._in_flight += 1
            if alone and lone is not None and lone.done() and lone.exception() is None:
                self.lone_passes += 1
                return lone.result(), True
        return self._requests.get(), False  # one per stream; the batcher runs at most that many passes

    def _release(self, request: object, lone: bool) -> None:
        if not lone:
            self._requests.put(request)
        with self._lock:
            self._in_flight -= 1

    def _gate(self, dtype: str, rows: Sequence[np.ndarray], required: bool) -> None:
        """Measures this compilation against fp32: kembed-export's stored torch reference where there
        is one, else the fp32 IR compiled in f32."""
        stored = gate_path(self.spec.model_dir, dtype)
        threshold = None
        if stored.is_file():
            gate = json.loads(stored.read_text())
            rows = [np.asarray(row, dtype=np.int64) for row in gate["rows"]]
            reference = np.asarray(gate["mean_pooled"], dtype=np.float32)
            threshold = gate.get("min_cosine")
            source = f"kembed-export's torch float32 reference on {len(rows)} texts"
        else:
            fp32_ir = ir_path(self.spec.model_dir, "float32") if dtype == "int8" else self.ir_file
            if not fp32_ir.is_file():
                raise FileNotFoundError(f"no {stored} and no {fp32_ir}: nothing to measure {dtype} against")
            logger.info("no %s: compiling %s in f32 too, for the precision gate", stored, fp32_ir)
            reference_ir = self._core.read_model(str(fp32_ir))
            reference_request = self._compile("f32", reference_ir).create_infer_request()
            reference = self._pooled(rows, MEAN, request=reference_request)
            source = f"{fp32_ir.name} in f32 on {len(rows)} gate texts"
        measured = f"openvino {dtype} ({self.precision_hint} hint) vs {source}"
        if dtype == "int8":
            self._check_lengths(rows, reference, threshold or MIN_COSINE["int8"], measured)
            return
        self.min_cosine = min_cosine(reference, self.hidden_mean(rows))
        if not passes_gate(dtype, self.min_cosine, required, measured, threshold):
            self.dtype, self.precision_hint = "float32", "f32"
            self._compile_requests("f32")

    def _check_lengths(
        self, rows: Sequence[np.ndarray], reference: np.ndarray, threshold: float, measured: str
    ) -> None:
        """int8 serves only the padded lengths at which the gate rows pass (length_check.py)."""
        lengths = checked_lengths(self.pad_to_multiple_of, self.spec.max_seq_length, [len(row) for row in rows])
        check = check_lengths(self.hidden_mean, rows, reference, lengths, threshold)
        logger.info("int8 length check: %s on %d lengths: %s", measured, len(lengths), check.summary())
        check.require_servable(measured)
        self.allowed_lengths = check.good
        self.min_cosine = check.min_cosine

    def _pooled(
        self, rows: Sequence[np.ndarray], pooling: Pooling, prompt_lengths: PromptLengths = None,
        request: object = None, length: int | None = None,
    ) -> np.ndarray:
        """Pooled token states, padded as served (`pad_to_multiple_of`, `allowed_lengths`) or to
        exactly `length`, on this runtime's own infer requests or on `request`."""
        if self.layout == "packed":
            inputs, grids = packed_inputs(rows, self.pad_id, length or self.pad_to_multiple_of)
            return pool_grids(self._infer(inputs, request), inputs, grids, pooling, prompt_lengths)
        if length is None:
            ids, mask = pad_batch(rows, self.pad_id, self.pad_to_multiple_of, self.allowed_lengths)
        else:
            ids, mask = pad_batch(rows, self.pad_id, length)
        inputs = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            inputs["token_type_ids"] = np.zeros_like(ids)
        return pool_padded_numpy(self._infer(inputs, request), mask, pooling, prompt_lengths)

    def _infer(self, inputs: dict[str, np.ndarray], request: object = None) -> np.ndarray:
        # share_inputs: the arrays are fresh and not reused, so OpenVINO may read them in place
        # (outputs are copies: share_outputs is off).
        if request is not None:
            return request.infer(inputs, share_inputs=True)[HIDDEN_OUTPUT]
        own, lone = self._acquire()
        try:
            return own.infer(inputs, share_inputs=True)[HIDDEN_OUTPUT]
        finally:
            self._release(own, lone)

    def batch_cost(self, lengths: Sequence[int]) -> int:
        if self.layout == "packed":
            return packed_cost(lengths, self.pad_to_multiple_of, self.spec.hidden_size)
        return super().batch_cost(lengths)

    def measure_speed(self, max_batch_size: int, max_batch_tokens: int, pass_cost: bool = True) -> Speed:
        """Measured on the streams: the batcher's figures are about load, when the streams serve (the
        lone request warms up where it is compiled, after ready)."""
        with self._streams_only():
            return super().measure_speed(max_batch_size, max_batch_tokens, pass_cost)

    def hidden_mean(self, rows: Sequence[np.ndarray], length: int | None = None) -> np.ndarray:
        """Mean-pooled last hidden states, the quantity the precision gate compares (padded to exactly
        `length` where given)."""
        return self._pooled(rows, MEAN, length=length)

    def __call__(self, rows: Sequence[np.ndarray], prompt_lengths: PromptLengths = None) -> np.ndarray:
        return self.head(self._pooled(rows, self.spec.pooling, prompt_lengths))
