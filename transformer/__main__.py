"""`python -m transformer`: kserve's ModelServer with the tokenizing transformer.

kserve's own flags keep working (`--model_name`, `--predictor_host`, `--predictor_protocol`,
`--predictor_request_timeout_seconds`, ...); ours default to REST V2 and a 30 s predictor timeout
instead of kserve's v1 and 600 s. Every kembed flag has a `KEMBED_*` environment variable.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kserve import ModelServer, model_server
from kserve import logging as kserve_logging
from kserve.predictor_config import PredictorConfig
from kserve.utils.utils import strtobool

from predictor import http
from predictor.__main__ import bundled_model_dir, env
from transformer import openai_api, upstream
from transformer.model import MIB, EmbeddingTransformer, TransformerSettings
from transformer.upstream import PredictorError

logger = logging.getLogger("kembed.transformer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        parents=[model_server.parser],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="kembed transformer: tokenizes (with an LRU cache) and forwards token ids to the predictor",
    )
    parser.set_defaults(
        predictor_host=env("predictor_host", None),
        predictor_protocol=env("predictor_protocol", "v2"),
        predictor_request_timeout_seconds=env("predictor_timeout_seconds", 30),
    )
    add = parser.add_argument
    add("--model_dir", default=env("model_dir", None), help="model directory for the tokenizer (default: bundled)")
    add("--max_seq_length", type=int, default=env("max_seq_length", 0),
        help="token limit per text; 0 = model's own (must match the predictor)")
    add("--truncate", type=strtobool, default=env("truncate", "true"),
        help="truncate long texts (else 400); must match the predictor")
    add("--max_items_per_request", type=int, default=env("max_items_per_request", 256),
        help="texts per request before 400")
    add("--tokenizer_cache_size", type=int, default=env("tokenizer_cache_size", 65536),
        help="token-id cache entries; 0 = off")
    add("--tokenizer_cache_bytes", type=int, default=env("tokenizer_cache_bytes", 64 * MIB),
        help="token-id cache bytes (texts + ids); 0 = off")
    add("--embedding_cache_size", type=int, default=env("embedding_cache_size", 0),
        help="embedding cache entries; 0 = off (the default)")
    add("--embedding_cache_bytes", type=int, default=env("embedding_cache_bytes", 128 * MIB),
        help="embedding cache bytes (texts + vectors)")
    add("--predictor_binary", type=strtobool, default=env("predictor_binary", "true"),
        help="REST hop: token ids as V2 binary tensor data (else JSON number arrays)")
    add("--max_body_bytes", type=int, default=env("max_body_bytes", http.DEFAULT_MAX_BODY_BYTES),
        help="request bodies over this size get 413 before parsing")
    add("--grace_period_seconds", type=int, default=env("grace_period_seconds", 30),
        help="on SIGTERM, how long to finish requests in flight before exiting")
    add("--server_workers", type=int, default=env("workers", 1), help="HTTP worker processes")
    return parser


def settings_from_args(args: argparse.Namespace) -> TransformerSettings:
    return TransformerSettings(
        model_dir=Path(args.model_dir or bundled_model_dir()),
        max_seq_length=args.max_seq_length,
        truncate=bool(args.truncate),
        max_items_per_request=args.max_items_per_request,
        tokenizer_cache_size=args.tokenizer_cache_size,
        tokenizer_cache_bytes=args.tokenizer_cache_bytes,
        embedding_cache_size=args.embedding_cache_size,
        embedding_cache_bytes=args.embedding_cache_bytes,
        binary=bool(args.predictor_binary),
    )


def predictor_config_from_args(args: argparse.Namespace) -> PredictorConfig:
    """kserve builds its PredictorConfig from its own parse of argv (kserve's defaults); ours
    comes from this parser, so the v2 and timeout defaults and the KEMBED_* variables apply."""
    return PredictorConfig(
        predictor_host=args.predictor_host,
        predictor_protocol=args.predictor_protocol,
        predictor_use_ssl=args.predictor_use_ssl,
        predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
        predictor_request_retries=args.predictor_request_retries,
        predictor_health_check=args.enable_predictor_health_check,
    )


def configure_logging(args: argparse.Namespace) -> None:
    """kserve configures only its own loggers, and only when ModelServer is built (after the
    load): do it now, and send `kembed.*` through the same handlers and format."""
    if not args.configure_logging:
        return
    kserve_logging.configure_logging(args.log_config_file)
    kembed, kserve = logging.getLogger("kembed"), logging.getLogger("kserve")
    if not kembed.handlers:
        kembed.handlers = list(kserve.handlers)
        kembed.setLevel(kserve.level)
        kembed.propagate = False


def main() -> None:
    parser = build_parser()
    args, _ = parser.parse_known_args()
    configure_logging(args)
    if not args.predictor_host:
        parser.error("--predictor_host (or KEMBED_PREDICTOR_HOST) is required: host:port of the predictor")
    if args.predictor_protocol == "v1":
        parser.error("--predictor_protocol v1 is not supported: the predictor speaks V2 (v2 or grpc-v2)")
    if args.workers != args.server_workers:
        logger.warning(
            "--workers %d ignored; serving with %d worker(s): set KEMBED_WORKERS to change it",
            args.workers, args.server_workers,
        )
    model = EmbeddingTransformer(args.model_name, settings_from_args(args))
    model.load()
    app = model_server.app
    http.install(app, args.model_name, args.max_body_bytes)
    app.add_exception_handler(PredictorError, upstream.predictor_error_handler)
    openai_api.install(app, model)
    logger.info(
        "forwarding to predictor %s over %s (timeout %ss, binary=%s)", args.predictor_host,
        args.predictor_protocol, args.predictor_request_timeout_seconds, model.settings.binary,
    )
    # predictor.http.serve() with a PredictorConfig: kserve would build one from its own defaults.
    server = ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=args.server_workers,
        grace_period=args.grace_period_seconds,
        predictor_config=predictor_config_from_args(args),
    )
    server.dataplane = http.ClientDecodingDataPlane(server.registered_models)
    server.start([model])


if __name__ == "__main__":
    main()
