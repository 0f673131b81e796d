"""`python -m eventing` / `kembed-eventing`: the eventing service under uvicorn."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import uvicorn

from eventing.app import create_app
from eventing.settings import build_parser, settings_from_args


def _keep_running(signum: int, frame: FrameType | None) -> None:
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; with the default handlers the
    process would then die by the signal instead of exiting 0 once in-flight events finished."""


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(
        create_app(settings), host=args.host, port=args.port, log_level=args.log_level, access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    signal.signal(signal.SIGTERM, _keep_running)
    signal.signal(signal.SIGINT, _keep_running)
    server.run()
    if not server.started:
        sys.exit(3)


if __name__ == "__main__":
    main()
