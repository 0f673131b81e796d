"""The predictor's knobs (each a flag and a `KEMBED_*` variable, see `kembed.settings`)."""

from __future__ import annotations

from dataclasses import dataclass

from kembed.cli import ServerSettings
from kembed.settings import knob
from predictor.backends import BACKENDS
from predictor.batcher import BatchLimits

_LIMITS = BatchLimits()


@dataclass(frozen=True)
class PredictorSettings(ServerSettings):
    device: str = knob("auto", "auto | cpu | cuda | cuda:N")
    backend: str = knob("auto", "openvino (an IR in the model dir's openvino/, see kembed-export; CPU, no torch) | "
                        "native (kembed's packed BERT in torch) | transformers (AutoModel, any encoder) | auto "
                        "(openvino on a CPU when installed and the IR exists, else native when it can build "
                        "the model, else transformers)", choices=BACKENDS)
    dtype: str = knob("auto", "auto (fp16 on GPU; bf16 on a CPU with avx512_bf16 or AMX if it passes the "
                      "precision gate, else fp32) | float32 | float16 | bfloat16 | int8 (openvino's quantized "
                      "IR)", choices=("auto", "float32", "float16", "bfloat16", "int8"))
    pooling: str = knob("auto", "auto (the model's sentence-transformers Pooling) | cls | mean | max | "
                        "mean_sqrt_len_tokens | weightedmean | lasttoken (several joined by '+')")
    threads: int = knob(0, "CPU threads (torch or OpenVINO); 0 = fit the container's CPU quota")
    openvino_hint: str = knob("throughput", "OpenVINO's performance hint: throughput (the threads split into "
                              "streams, one forward pass each at once, none stalls while the server's own thread "
                              "runs) | latency (one stream of all threads)", choices=("throughput", "latency"))
    openvino_layout: str = knob("auto", "which OpenVINO IR: packed (kembed_packed.xml from kembed-export, BERT-family "
                                "models: linear layers on real tokens only, mixed lengths batch together) | padded "
                                "(openvino_model.xml) | auto (packed where its IR exists, padded for int8)",
                                choices=("auto", "packed", "padded"))
    openvino_lone_pass: bool = knob(True, "with the throughput hint, a pass that starts while no other runs takes a "
                                    "second compilation with all threads in one stream (compiled in the background "
                                    "by the first lone pass, after ready): c1 p50 ~0.7x, for up to ~180 MiB "
                                    "more memory under sustained load")
    pad_to_multiple_of: int = knob(16, "OpenVINO pads a batch's length up to a multiple of this: fewer distinct "
                                   "shapes, whose compiled kernels it keeps (1 = the longest row)", unit="tokens")
    openvino_cache_dir: str = knob("", "OpenVINO's compile cache (CACHE_DIR): a start whose CPU, OpenVINO version, IR "
                                   "and settings match an earlier one imports its compiled blob (~90 MB for the "
                                   "bundled model) instead of compiling, ~0.3 s sooner; a mismatch compiles; unset = "
                                   "off (a fresh pod's emptyDir has nothing to import)")
    onednn_cache_capacity: int = knob(32, "torch's oneDNN primitive cache entries (ONEDNN_PRIMITIVE_CACHE_CAPACITY): "
                                      "each new batch shape adds one with its own weight copy; bounded, memory stays "
                                      "flat")
    openvino_shape_cache: int = knob(1024, "OpenVINO's CPU_RUNTIME_CACHE_CAPACITY: prepared kernels kept per input "
                                     "shape; the packed IR meets many shapes, and at 32 re-preparing them cost a fifth "
                                     "more CPU per text (+25 MiB at 1024)", unit="entries")
    mmap_threshold_bytes: int = knob(1024 * 1024, "allocations over this get their own memory mapping (glibc "
                                     "mallopt M_MMAP_THRESHOLD), so varying batch shapes do not fragment and grow "
                                     "the heap; 0 = glibc's dynamic threshold", unit="bytes")
    max_batch_size: int = knob(_LIMITS.max_batch_size, "items per forward pass")
    max_batch_tokens: int = knob(_LIMITS.max_batch_tokens, "tokens per forward pass (items x longest with the "
                                 "transformers backend, which pads)", unit="tokens")
    queue_size: int = knob(_LIMITS.queue_size, "items waiting for a forward pass before requests get 429")
    max_queue_seconds: float = knob(_LIMITS.max_queue_seconds, "requests get 429 when the queue's expected wait "
                                    "(its tokens at the measured seconds per token) is longer", unit="s")
    max_wait_seconds: float = knob(_LIMITS.max_wait_seconds, "work queued longer than this (the client's timeout: the "
                                   "transformer's predictor timeout) is dropped without a pass (503)", unit="s")
    pass_cost_tokens: float = knob(-1.0, "fixed cost of a forward pass in tokens, for length grouping of padded "
                                   "batches (transformers backend); -1 = measure at warm-up", unit="tokens")

    @property
    def limits(self) -> BatchLimits:
        return BatchLimits(
            max_batch_size=self.max_batch_size,
            max_batch_tokens=self.max_batch_tokens,
            queue_size=self.queue_size,
            max_queue_seconds=self.max_queue_seconds,
            max_wait_seconds=self.max_wait_seconds,
        )
