"""`python -m predictor`: kserve's ModelServer with the embedding model.

kserve's own flags (`--model_name`, `--http_port`, `--grpc_port`, ...) keep working; kembed's
flags each have a `KEMBED_*` environment variable, which is how the manifests set them.
"""

from __future__ import annotations

import gc

# Imports and the model load make ~a million objects that live as long as the process; collecting
# them as they appear costs a quarter of a second of cold start. http.serve turns the GC back on.
gc.disable()

import argparse
from pathlib import Path

from predictor import cli, http
from predictor.batcher import BatchLimits
from predictor.encoder import BACKENDS
from predictor.model import EmbeddingModel, PredictorSettings

env = cli.env


def build_parser() -> argparse.ArgumentParser:
    parser = cli.base_parser("kembed predictor: V2 embeddings with dynamic batching")
    add = parser.add_argument
    add("--device", default=env("device", "auto"), help="auto | cpu | cuda | cuda:N")
    add("--backend", default=env("backend", "auto"), choices=BACKENDS,
        help="native (kembed's BERT, fast cold start) | transformers (AutoModel, any encoder) | auto")
    add("--dtype", default=env("dtype", "auto"), help="auto (fp16 on GPU, fp32 on CPU) | float32 | float16 | bfloat16")
    add("--pooling", default=env("pooling", "auto"), help="auto (from sentence-transformers config) | mean | cls | max")
    add("--threads", type=int, default=env("threads", 0), help="torch CPU threads; 0 = fit the container's CPU quota")
    add("--max_batch_size", type=int, default=env("max_batch_size", BatchLimits.max_batch_size),
        help="items per forward pass")
    add("--max_batch_tokens", type=int, default=env("max_batch_tokens", BatchLimits.max_batch_tokens),
        help="tokens per forward pass (items x longest with the transformers backend, which pads)")
    add("--max_latency_ms", type=float, default=env("max_latency_ms", BatchLimits.max_latency_ms),
        help="longest wait for a batch to fill after its first item arrived")
    add("--queue_size", type=int, default=env("queue_size", BatchLimits.queue_size),
        help="items waiting for a forward pass before requests get 429")
    add("--pass_cost_tokens", type=float, default=env("pass_cost_tokens", -1),
        help="fixed cost of a forward pass in tokens, for length grouping of padded batches "
        "(transformers backend); -1 = measure at warm-up")
    add("--pipeline_depth", type=int, default=env("pipeline_depth", BatchLimits.pipeline_depth),
        help="batches handed to the device at once; 2 hides batch preparation behind GPU work")
    return parser


def settings_from_args(args: argparse.Namespace) -> PredictorSettings:
    return PredictorSettings(
        model_dir=Path(cli.model_dir(args)),
        device=args.device,
        backend=args.backend,
        dtype=args.dtype,
        pooling=args.pooling,
        max_seq_length=args.max_seq_length,
        truncate=bool(args.truncate),
        threads=args.threads,
        max_items_per_request=args.max_items_per_request,
        pass_cost_tokens=args.pass_cost_tokens,
        limits=BatchLimits(
            max_batch_size=args.max_batch_size,
            max_batch_tokens=args.max_batch_tokens,
            max_latency_ms=args.max_latency_ms,
            queue_size=args.queue_size,
            pipeline_depth=args.pipeline_depth,
        ),
    )


def main() -> None:
    args, _ = build_parser().parse_known_args()
    cli.prepare(args)
    model = EmbeddingModel(args.model_name, settings_from_args(args))
    model.load()
    in_flight = http.RequestsInFlight()
    model.batcher.requests_in_flight = in_flight
    http.serve(model, args, admission=model.overloaded, in_flight=in_flight)


if __name__ == "__main__":
    main()
