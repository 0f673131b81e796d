"""Cold start: process exec -> ready, and exec -> first embedding, for predictor and transformer.

    python -m bench.cold_start [--runs 5]

Scale-to-zero only pays if a pod wakes fast. Each run starts a fresh process and polls every 10 ms.
The transformer runs are made against one predictor that stays up. The predictor is measured with
the OpenVINO runtime (the default on a CPU when the model dir has an IR: `make setup` exports the
bundled model to .cache/models), without and with its compile cache (`--openvino_cache_dir`, filled by
one start first), the native encoder and the transformers backend.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import HelpFormatter
from kembed.cli import bundled_model_dir
from kembed.launch import ROOT, free_port, start_server

MODEL = "minilm"
EXPORTED = ROOT / ".cache" / "models" / "all-minilm-l6-v2"  # `make setup` (kembed-export)
BODY = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["wake up"]}]}


def one_run(module: str, extra: list[str]) -> tuple[float, float]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", module, "--model_name", MODEL, "--http_port", str(port),
               "--grpc_port", str(free_port()), *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    ready_at = first_at = None
    try:
        with httpx.Client(timeout=30) as client:
            while ready_at is None:
                if process.poll() is not None:
                    raise RuntimeError(f"{module} exited with {process.returncode}")
                try:
                    if client.get(f"{base}/v2/models/{MODEL}/ready").status_code == 200:
                        ready_at = time.perf_counter()
                except httpx.HTTPError:
                    time.sleep(0.01)
            while first_at is None:
                if client.post(f"{base}/v2/models/{MODEL}/infer", json=BODY).status_code == 200:
                    first_at = time.perf_counter()
    finally:
        process.terminate()
        process.wait(30)
    return ready_at - started, first_at - started


def summarize(name: str, runs: list[tuple[float, float]]) -> str:
    ready = [r for r, _ in runs]
    first = [f for _, f in runs]

    def triple(values: list[float]) -> str:
        return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"

    return f"| {name} | {len(runs)} | {triple(ready)} | {triple(first)} |"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per service (and predictor backend)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    # The image ships compiled bytecode for everything (Dockerfile: compileall); do the same for
    # kembed's own modules, which an editable install under PYTHONDONTWRITEBYTECODE would recompile
    # at every start.
    for package in ("kembed", "predictor", "transformer"):
        compileall.compile_dir(ROOT / package, quiet=1)
    one_run("predictor", ["--backend", "transformers"])  # fill the page cache so every run starts alike
    # Interleaved, so that a busy moment on a shared machine does not land on one backend only.
    # The compile cache's row imports the blob its first start wrote (--openvino_cache_dir).
    cache = tempfile.TemporaryDirectory()
    backends = {"openvino backend": ["--backend", "openvino"],
                "openvino backend + compile cache": ["--backend", "openvino", "--openvino_cache_dir", cache.name],
                "native backend": ["--backend", "native"], "transformers backend": ["--backend", "transformers"]}
    if not (EXPORTED / "openvino" / "openvino_model.xml").is_file():
        print(f"no IR in {EXPORTED} (make setup exports it): openvino not measured")
        backends = {name: flags for name, flags in backends.items() if "openvino" not in flags}
    model_dir = EXPORTED if "openvino backend" in backends else Path(bundled_model_dir())
    for flags in backends.values():
        flags += ["--model_dir", str(model_dir)]
        if "--openvino_cache_dir" in flags:
            one_run("predictor", flags)  # writes the blob
    predictor_runs: dict[str, list[tuple[float, float]]] = {name: [] for name in backends}
    with cache:
        for _ in range(args.runs):
            for name, runs in predictor_runs.items():
                runs.append(one_run("predictor", backends[name]))
    log = tempfile.mkdtemp()
    upstream = start_server("predictor", ["--model_name", MODEL], Path(log) / "p.log",
                            ready_path=f"/v2/models/{MODEL}/ready")
    try:
        host = f"127.0.0.1:{upstream.http_port}"
        transformer_runs = [one_run("transformer", ["--predictor_host", host]) for _ in range(args.runs)]
    finally:
        upstream.stop()
    print("\n| service | runs | exec -> ready s (min/median/max) | exec -> first embedding s (min/median/max) |")
    print("|---|---:|---:|---:|")
    for name, runs in predictor_runs.items():
        print(summarize(f"predictor, {name}", runs))
    print(summarize("transformer", transformer_runs))


if __name__ == "__main__":
    main()
