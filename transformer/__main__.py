"""`python -m transformer`: kserve's ModelServer with the tokenizing transformer.

kserve's own flags keep working (`--model_name`, `--predictor_host`, `--predictor_protocol`,
`--predictor_request_timeout_seconds`, ...); ours default to REST V2 and a 30 s predictor timeout
instead of kserve's v1 and 600 s. Every kembed flag has a `KEMBED_*` environment variable.
"""

from __future__ import annotations

import gc

# Imports make objects that live as long as the process; collecting them as they appear only slows
# the cold start. http.serve turns the GC back on.
gc.disable()

import argparse
import logging
from pathlib import Path

from kserve import model_server
from kserve.predictor_config import PredictorConfig
from kserve.utils.utils import strtobool

from predictor import cli, http
from transformer import openai_api, upstream
from transformer.model import MIB, EmbeddingTransformer, TransformerSettings
from transformer.upstream import PredictorError

logger = logging.getLogger("kembed.transformer")
env = cli.env


def build_parser() -> argparse.ArgumentParser:
    parser = cli.base_parser(
        "kembed transformer: tokenizes (with an LRU cache) and forwards token ids to the predictor"
    )
    parser.set_defaults(
        predictor_host=env("predictor_host", None),
        predictor_protocol=env("predictor_protocol", "v2"),
        predictor_request_timeout_seconds=env("predictor_timeout_seconds", 30),
    )
    add = parser.add_argument
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
    return parser


def settings_from_args(args: argparse.Namespace) -> TransformerSettings:
    return TransformerSettings(
        model_dir=Path(cli.model_dir(args)),
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


def main() -> None:
    parser = build_parser()
    args, _ = parser.parse_known_args()
    cli.prepare(args)
    if not args.predictor_host:
        parser.error("--predictor_host (or KEMBED_PREDICTOR_HOST) is required: host:port of the predictor")
    if args.predictor_protocol == "v1":
        parser.error("--predictor_protocol v1 is not supported: the predictor speaks V2 (v2 or grpc-v2)")
    model = EmbeddingTransformer(args.model_name, settings_from_args(args))
    model.load()
    app = model_server.app
    app.add_exception_handler(PredictorError, upstream.predictor_error_handler)
    openai_api.install(app, model)
    logger.info(
        "forwarding to predictor %s over %s (timeout %ss, binary=%s)", args.predictor_host,
        args.predictor_protocol, args.predictor_request_timeout_seconds, model.settings.binary,
    )
    http.serve(model, args, predictor_config_from_args(args))


if __name__ == "__main__":
    main()
