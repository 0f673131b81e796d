"""`python -m predictor`: kserve's ModelServer with the embedding model.

kserve's own flags (`--model_name`, `--http_port`, `--grpc_port`, ...) keep working; kembed's
knobs each have a `KEMBED_*` environment variable, which is how the manifests set them.
"""

from __future__ import annotations

import argparse
import gc


def build_parser() -> argparse.ArgumentParser:
    from kembed.cli import server_parser
    from predictor.settings import PredictorSettings

    return server_parser("kembed-predictor", "kembed predictor: V2 embeddings with dynamic batching", PredictorSettings)


def main() -> None:
    # Imports and the model load make ~a million objects that live as long as the process; collecting
    # them as they appear costs a quarter of a second of cold start. edge.serve turns the GC back on.
    gc.disable()
    from kembed import cli, edge, settings
    from predictor.model import EmbeddingModel
    from predictor.resources import bound_onednn_cache, fix_mmap_threshold
    from predictor.settings import PredictorSettings

    args, _ = build_parser().parse_known_args()
    cli.prepare(args)
    bound_onednn_cache(args.onednn_cache_capacity)  # before load() imports torch
    fix_mmap_threshold(args.mmap_threshold_bytes)
    model = EmbeddingModel(args.model_name, settings.from_args(PredictorSettings, args))
    model.load()
    edge.serve(model, args)


if __name__ == "__main__":
    main()
