"""Reduced precision, measured: which dtype a CPU computes natively, and the accuracy gate.

Why: bf16 matmuls run ~4x faster than fp32 on CPUs with avx512_bf16 or AMX, at a cosine of ~0.9999 to
fp32. "~" is not good enough to serve: every reduced-precision runtime embeds `GATE_TEXTS` both ways
at start-up and the smallest cosine decides (see `resources.resolve_dtype` and the runtimes).
No torch import here: the OpenVINO runtime uses this too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger("kembed.predictor")

CPUINFO = Path("/proc/cpuinfo")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# The smallest cosine to the fp32 model a reduced dtype may have; int8 trades more for speed and is only
# ever chosen explicitly.
MIN_COSINE = {"bfloat16": 0.999, "float16": 0.999, "int8": 0.99}

# Fixed, mixed-length texts: short queries, a sentence, a paragraph; digits, punctuation, non-ASCII.
GATE_TEXTS = (
    "hello",
    "What is the capital of France?",
    "Kubernetes scales the embedding service down to zero when nobody calls it.",
    "Das Modell läuft auf der CPU; 42 % schneller als gestern, sagt das Team.",
    "def main() -> None: print(sum(x * x for x in range(10)))",
    "A canary rollout sends ten percent of the traffic to the new revision of an InferenceService, "
    "and the rest to the previous one, until the new revision is promoted or rolled back.",
    "Mixed precision keeps the weights in bfloat16 and accumulates in float32. The embedding of a long "
    "paragraph sums many small contributions, so its rounding error is the one to measure: this text "
    "repeats itself on purpose to be long. Mixed precision keeps the weights in bfloat16 and accumulates "
    "in float32. The embedding of a long paragraph sums many small contributions, so its rounding error "
    "is the one to measure.",
    "ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok",
)


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The flags /proc/cpuinfo reports for the first CPU (empty where it cannot be read)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX); without them bf16 is
    emulated and slower than fp32."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def min_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """The smallest row-wise cosine between two [N, D] arrays."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    dots = (reference * candidate).sum(axis=1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return float((dots / np.maximum(norms, 1e-12)).min())


def passes_gate(dtype: str, cosine: float, required: bool, measured: str, threshold: float | None = None) -> bool:
    """Logs the measured cosine (`measured` says what against what). A dtype asked for explicitly that
    fails is a start-up error; one `auto` picked that fails makes the caller fall back to float32.
    `threshold` defaults to MIN_COSINE[dtype]."""
    threshold = MIN_COSINE[dtype] if threshold is None else threshold
    if cosine >= threshold:
        logger.info("precision gate: %s: min cosine %.6f (>= %s)", measured, cosine, threshold)
        return True
    message = f"precision gate: {measured}: min cosine {cosine:.6f} is below {threshold}"
    if required:
        raise RuntimeError(f"{message}; serve with --dtype float32")
    logger.warning("%s; falling back to float32", message)
    return False


def synthetic_gate_rows(vocab_size: int, lengths: tuple[int, ...] = (3, 9, 17, 40, 120)) -> list[np.ndarray]:
    """Fixed pseudo-random id rows, for a runtime built without a tokenizer (tests, benches); the
    predictor passes its tokenizer's rows of `GATE_TEXTS`."""
    rng = np.random.default_rng(0)
    low = min(1000, vocab_size // 2)
    return [rng.integers(low, vocab_size, length).astype(np.int64) for length in lengths]
