"""`python -m transformer`: kserve's ModelServer with the tokenizing transformer.

kserve's own flags keep working (`--model_name`, `--predictor_host`, `--predictor_protocol`,
`--predictor_request_timeout_seconds`, ...); ours default to REST V2 and a 30 s predictor timeout
instead of kserve's v1 and 600 s. Every kembed knob has a `KEMBED_*` environment variable.
"""

from __future__ import annotations

import argparse
import gc
import logging

logger = logging.getLogger("kembed.transformer")


def build_parser() -> argparse.ArgumentParser:
    from kembed.cli import server_parser
    from transformer.settings import TransformerSettings

    return server_parser(
        "kembed-transformer",
        "kembed transformer: tokenizes (with an LRU cache) and forwards token ids to the predictor",
        TransformerSettings,
    )


def main() -> None:
    # Imports make objects that live as long as the process; collecting them as they appear only
    # slows the cold start. edge.serve turns the GC back on.
    gc.disable()
    from kserve import model_server
    from kserve.predictor_config import PredictorConfig

    from kembed import cli, edge, settings
    from transformer import openai_api
    from transformer.model import EmbeddingTransformer, predictor_client
    from transformer.settings import TransformerSettings

    parser = build_parser()
    args, _ = parser.parse_known_args()
    cli.prepare(args)
    if not args.predictor_host:
        parser.error("--predictor_host (or KEMBED_PREDICTOR_HOST) is required: host:port of the predictor")
    if args.predictor_protocol == "v1":
        parser.error("--predictor_protocol v1 is not supported: the predictor speaks V2 (v2 or grpc-v2)")
    # kserve builds its PredictorConfig from its own parse of argv (kserve's defaults); ours comes
    # from this parser, so the v2 and timeout defaults and the KEMBED_* variables apply.
    config = PredictorConfig(
        predictor_host=args.predictor_host,
        predictor_protocol=args.predictor_protocol,
        predictor_use_ssl=args.predictor_use_ssl,
        predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
        predictor_request_retries=args.predictor_request_retries,
        predictor_health_check=args.enable_predictor_health_check,
    )
    transformer_settings = settings.from_args(TransformerSettings, args)
    client = predictor_client(args.model_name, config, transformer_settings.predictor_binary)
    model = EmbeddingTransformer(args.model_name, transformer_settings, client)
    model.load()
    openai_api.install(model_server.app, model)
    logger.info(
        "forwarding to predictor %s over %s (timeout %ss, binary=%s)", args.predictor_host,
        args.predictor_protocol, args.predictor_request_timeout_seconds, model.settings.predictor_binary,
    )
    edge.serve(model, args, config)


if __name__ == "__main__":
    main()
