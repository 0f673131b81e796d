"""Prometheus metrics of the predictor's batcher and model (request metrics: `kembed.metrics`)."""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

BATCH_SIZE = Histogram(
    "kembed_batch_size",
    "Items per forward pass.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_TOKENS = Histogram(
    "kembed_batch_tokens",
    "Tokens per forward pass as the encoder pays for them (real tokens packed; items x longest padded).",
    ["model"],
    buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
QUEUE_DEPTH = Gauge("kembed_queue_depth", "Items waiting to be batched.", ["model"])
INFLIGHT = Gauge("kembed_inflight", "Items inside a forward pass.", ["model"])
MODEL_LOAD_SECONDS = Gauge(
    "kembed_model_load_seconds", "Seconds spent loading and warming the model.", ["model"]
)
GPU_MEMORY = Gauge("kembed_gpu_memory_bytes", "GPU memory allocated by torch.", ["model"])
