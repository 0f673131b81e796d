"""Schema fuzzing: schemathesis over the predictor's and the transformer's own OpenAPI schemas.

    python -m bench.schema_fuzz [--max_examples 30] [--seed 0]

Starts both servers (the transformer in front of the predictor) and runs schemathesis's
`not_a_server_error` check against every operation each publishes, with bounded examples per
operation. Prints schemathesis's summary per server; exits non-zero when any answer was a 5xx.
Needs the `test` extra (schemathesis).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import HelpFormatter
from kembed.launch import start_server

MODEL = "minilm"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.schema_fuzz", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--max_examples", type=int, default=30, help="generated requests per operation and phase")
    parser.add_argument("--seed", type=int, default=0, help="schemathesis's random seed (reproducible runs)")
    return parser


def fuzz(url: str, max_examples: int, seed: int, root: Path) -> int:
    # Requests name the served model, so that they reach the model, not only its 404.
    config = root / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.model_name" = "{MODEL}"\n')
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config), "run",
        f"{url}/openapi.json", "--url", url,
        "--checks", "not_a_server_error", "--max-examples", str(max_examples), "--seed", str(seed),
        "--continue-on-failure", "--request-timeout", "30",
    ]
    return subprocess.run(command, check=False).returncode


def main() -> None:
    args = build_parser().parse_args()
    root = Path(tempfile.mkdtemp())
    predictor = start_server("predictor", ["--model_name", MODEL], root / "predictor.log",
                             ready_path=f"/v2/models/{MODEL}/ready")
    try:
        transformer = start_server(
            "transformer", ["--model_name", MODEL, "--predictor_host", f"127.0.0.1:{predictor.http_port}"],
            root / "transformer.log", ready_path=f"/v2/models/{MODEL}/ready",
        )
        try:
            codes = {name: fuzz(server.url, args.max_examples, args.seed, root)
                     for name, server in (("predictor", predictor), ("transformer", transformer))}
        finally:
            transformer.stop()
    finally:
        predictor.stop()
    print(f"schemathesis exit codes: {codes}; server logs in {root}")
    sys.exit(max(codes.values()))


if __name__ == "__main__":
    main()
