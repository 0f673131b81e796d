"""Prometheus metrics of the predictor, served on kserve's `/metrics` (default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "kembed_requests", "Embedding requests by final HTTP status.", ["model", "status"]
)
REQUEST_DURATION = Histogram(
    "kembed_request_duration_seconds",
    "Time from request arrival to response, in seconds.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
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
