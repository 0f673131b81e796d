"""`python -m scripts.serve_stack` (`make serve`): predictor and transformer on this machine.

Two processes, as in an InferenceService: the predictor (HTTP 8085, gRPC 8086) and the
transformer in front of it (HTTP 8080, gRPC 8081), both serving the bundled model as `minilm`.
Every other KEMBED_* variable reaches both. Ctrl-C (SIGINT) or SIGTERM stops both.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

import httpx


def env(name: str, default: object) -> object:
    return os.environ.get(f"KEMBED_STACK_{name.upper()}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run the kembed predictor and transformer together (Ctrl-C stops both).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--model_name", default=env("model_name", "minilm"), help="model name served by both (KEMBED_STACK_MODEL_NAME)")
    add("--http_port", type=int, default=env("http_port", 8080), help="transformer HTTP (KEMBED_STACK_HTTP_PORT)")
    add("--grpc_port", type=int, default=env("grpc_port", 8081), help="transformer gRPC (KEMBED_STACK_GRPC_PORT)")
    add("--predictor_http_port", type=int, default=env("predictor_http_port", 8085),
        help="predictor HTTP (KEMBED_STACK_PREDICTOR_HTTP_PORT)")
    add("--predictor_grpc_port", type=int, default=env("predictor_grpc_port", 8086),
        help="predictor gRPC (KEMBED_STACK_PREDICTOR_GRPC_PORT)")
    add("--ready_timeout", type=float, default=env("ready_timeout", 300),
        help="seconds to wait for both to be ready (KEMBED_STACK_READY_TIMEOUT)")
    return parser


def curl_examples(port: int, model: str) -> str:
    v2 = (
        f"curl -s http://127.0.0.1:{port}/v2/models/{model}/infer -H 'content-type: application/json' \\\n"
        f"  -d '{{\"inputs\": [{{\"name\": \"text\", \"datatype\": \"BYTES\", \"shape\": [2], "
        f"\"data\": [\"hello world\", \"serverless embeddings\"]}}], \"parameters\": {{\"dimensions\": 384}}}}'"
    )
    openai = (
        f"curl -s http://127.0.0.1:{port}/v1/embeddings -H 'content-type: application/json' \\\n"
        f"  -d '{{\"model\": \"{model}\", \"input\": [\"hello world\", \"serverless embeddings\"]}}'"
    )
    return f"V2:\n{v2}\n\nOpenAI-compatible:\n{openai}\n"


class Stack:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.processes: dict[str, subprocess.Popen] = {}
        self.stopping = threading.Event()

    def launch(self, name: str, module: str, http_port: int, grpc_port: int, *extra: str) -> None:
        command = [
            sys.executable, "-m", module, "--model_name", self.args.model_name,
            "--http_port", str(http_port), "--grpc_port", str(grpc_port), *extra,
        ]
        # Own session: a terminal's Ctrl-C reaches only this script, which stops both in order.
        self.processes[name] = subprocess.Popen(command, start_new_session=True)

    def start(self) -> None:
        args = self.args
        self.launch("predictor", "predictor", args.predictor_http_port, args.predictor_grpc_port)
        self.launch(
            "transformer", "transformer", args.http_port, args.grpc_port,
            "--predictor_host", f"127.0.0.1:{args.predictor_http_port}", "--predictor_protocol", "v2",
        )

    def wait_ready(self) -> bool:
        urls = {
            "predictor": f"http://127.0.0.1:{self.args.predictor_http_port}/v2/models/{self.args.model_name}/ready",
            "transformer": f"http://127.0.0.1:{self.args.http_port}/v2/models/{self.args.model_name}/ready",
        }
        deadline = time.monotonic() + self.args.ready_timeout
        pending = set(urls)
        while pending and time.monotonic() < deadline and not self.stopping.is_set():
            for name in sorted(pending):
                if self.processes[name].poll() is not None:
                    print(f"serve_stack: {name} exited with {self.processes[name].returncode}", file=sys.stderr)
                    return False
                try:
                    if httpx.get(urls[name], timeout=1).status_code == 200:
                        pending.discard(name)
                except httpx.HTTPError:
                    pass
            self.stopping.wait(0.25)
        return not pending

    def stop(self, timeout: float = 30) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def run(self) -> int:
        def on_signal(signum: int, _: FrameType | None) -> None:
            print(f"serve_stack: {signal.Signals(signum).name}, stopping both", file=sys.stderr, flush=True)
            self.stopping.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        self.start()
        try:
            if not self.wait_ready():
                if self.stopping.is_set():
                    return 0
                print("serve_stack: the stack did not become ready", file=sys.stderr)
                return 1
            args = self.args
            print(
                f"\nkembed is up: transformer http://127.0.0.1:{args.http_port} (gRPC {args.grpc_port}), "
                f"predictor http://127.0.0.1:{args.predictor_http_port} (gRPC {args.predictor_grpc_port}), "
                f"model '{args.model_name}'. Ctrl-C stops both.\n\n{curl_examples(args.http_port, args.model_name)}",
                flush=True,
            )
            while not self.stopping.wait(0.5):
                for name, process in self.processes.items():
                    if process.poll() is not None:
                        print(f"serve_stack: {name} exited with {process.returncode}", file=sys.stderr)
                        return 1
            return 0
        finally:
            self.stop()


def main() -> None:
    sys.exit(Stack(build_parser().parse_args()).run())


if __name__ == "__main__":
    main()
