"""Predictor throughput and latency vs the in-process limit of every runtime.

    python -m bench.predictor [--seconds 10] [--corpus_size 2000] [--in_process_texts 384]
        [--batch_sizes 16,32,64] [--backend auto] [--dtype auto] [--model_dir auto] [-- extra predictor flags]

First, in this process, every runtime this machine has (transformers fp32, native fp32/bf16, OpenVINO
fp32/bf16 where the model dir has the IR, padded and packed (kembed's packed IR, where it has one),
int8 where it or .cache/models/all-minilm-l6-v2-int8 has one;
`make setup` and `make test` export them) embeds the
same corpus in length-sorted batches of the best size: texts/s and min cosine to transformers fp32 (what
sentence-transformers computes). Then the predictor serves the corpus with `--backend/--dtype` at
concurrency 1, 8, 16 and 32 (1 text per request, then 32 per request). `--model_dir auto` is
.cache/models/all-minilm-l6-v2 when it has an IR, else the bundled model. Printed per row: the ratio to
the transformers fp32 in-process limit (the headline), to the served runtime's own in-process limit,
and to its window limit: the same runtime behind the predictor's own Batcher, without HTTP, when only
`concurrency x texts per request` texts are visible at a time, which is all a server can see.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson

from bench import HelpFormatter, predictor_flags
from kembed.cli import bundled_model_dir
from kembed.corpus import english_corpus
from kembed.launch import ROOT, start_server
from kembed.loadgen import closed_loop
from predictor.batcher import BatchLimits

MODEL = "minilm"
PER_REQUEST = (1, 32)
CONCURRENCY = (1, 8, 16, 32)  # 8 and 16: candidates for the manifests' scaleTarget
EXPORTED = ROOT / ".cache" / "models" / "all-minilm-l6-v2"  # `make setup` (kembed-export)
EXPORTED_INT8 = ROOT / ".cache" / "models" / "all-minilm-l6-v2-int8"  # `make test` (kembed-export --int8)
RUNTIMES = [  # (backend, dtype, OpenVINO layout)
    ("transformers", "float32", ""),
    ("native", "float32", ""),
    ("native", "bfloat16", ""),
    ("openvino", "float32", "padded"),
    ("openvino", "float32", "packed"),
    ("openvino", "bfloat16", "padded"),
    ("openvino", "bfloat16", "packed"),
    ("openvino", "int8", "padded"),  # from EXPORTED_INT8 when the model dir has no int8 IR
]


def v2_body(texts: list[str]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]})


def served(corpus: list[str], seconds: float, flags: list[str]) -> tuple[list[dict], str, str]:
    log = Path(tempfile.mkdtemp()) / "predictor.log"
    server = start_server("predictor", ["--model_name", MODEL, *flags], log, ready_path=f"/v2/models/{MODEL}/ready")
    rows = []
    try:
        path = f"/v2/models/{MODEL}/infer"
        for per_request in PER_REQUEST:
            bodies = [
                (v2_body(corpus[i : i + per_request]), per_request)
                for i in range(0, len(corpus) - per_request + 1, per_request)
            ]
            asyncio.run(closed_loop(server.http_port, path, bodies, 8, min(2.0, seconds)))  # warm-up
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
    log = server.log()
    loaded = next((line for line in log.splitlines() if "loaded " in line), "")
    layout = next((line.split("openvino: ")[1].split()[0] for line in log.splitlines() if "openvino: " in line), "")
    return rows, loaded[loaded.find("loaded ") :], layout


def load(model_dir: Path, backend: str, dtype: str, layout: str = ""):
    """A runtime as the predictor builds it (same gate, same threads), or None where this machine lacks it."""
    from kembed.model_spec import read_model_spec
    from kembed.tokenization import TextTokenizer
    from predictor.backends import load_runtime
    from predictor.precision import GATE_TEXTS
    from predictor.resources import fit_thread_count, resolve_dtype

    spec = read_model_spec(model_dir)
    tokenizer = TextTokenizer.for_model(spec)
    try:
        runtime = load_runtime(spec, backend, "cpu", resolve_dtype(dtype, "cpu"), fit_thread_count(),
                               tokenizer.pad_id, tokenizer.encode(GATE_TEXTS), dtype_required=dtype != "auto",
                               openvino_layout=layout or "auto")
    except (FileNotFoundError, ModuleNotFoundError, RuntimeError) as error:
        print(f"{backend} {dtype} {layout}: not measured ({str(error).splitlines()[0]})", flush=True)
        return None, tokenizer
    return runtime, tokenizer


def in_process_limit(runtime, rows: list, batch_sizes: tuple[int, ...]) -> tuple[int, float, np.ndarray]:
    """Best texts/s over the corpus in length-sorted batches (tokenized beforehand), `parallel_passes`
    batches at once as the batcher runs them, and the vectors."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    runtime([rows[i] for i in order[:8]])
    best, vectors = (0, 0.0), None
    with ThreadPoolExecutor(runtime.parallel_passes) as pool:
        for size in batch_sizes:
            batches = [[rows[i] for i in order[start : start + size]] for start in range(0, len(order), size)]
            started = time.perf_counter()
            out = list(pool.map(runtime, batches))
            rate = len(rows) / (time.perf_counter() - started)
            best = max(best, (size, rate), key=lambda pair: pair[1])
            vectors = np.zeros((len(rows), out[0].shape[1]), dtype=np.float32)
            vectors[order] = np.concatenate(out)
    return best[0], best[1], vectors


def window_limit(runtime, rows: list, window: int, pass_cost: float, count: int = 600) -> float:
    """Texts/s of the predictor's own Batcher over this runtime, without HTTP: `window` callers each
    embed one row at a time, so only `window` rows are visible at once, as a server sees them."""
    from predictor.batcher import Batcher, BatchLimits

    async def run() -> float:
        batcher = Batcher(runtime, BatchLimits(queue_size=max(2048, window)), pass_cost_tokens=pass_cost,
                          cost=runtime.batch_cost, parallel_passes=runtime.parallel_passes)
        upcoming = iter(rows[:count])

        async def caller() -> None:
            for token_row in upcoming:
                await batcher.embed([token_row])

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(window)))
        return count / (time.perf_counter() - started)

    return asyncio.run(run())


def runtime_table(
    model_dir: Path, corpus: list[str], batch_sizes: tuple[int, ...]
) -> dict[tuple[str, str, str], dict]:
    from predictor.precision import min_cosine

    results: dict[tuple[str, str, str], dict] = {}
    reference = None
    int8_here = (model_dir / "openvino" / "openvino_model_qint8_quantized.xml").is_file()
    int8_dir = model_dir if int8_here else EXPORTED_INT8
    for backend, dtype, layout in RUNTIMES:
        runtime, tokenizer = load(int8_dir if dtype == "int8" else model_dir, backend, dtype, layout)
        if runtime is None:
            continue
        size, rate, vectors = in_process_limit(runtime, tokenizer.encode(corpus), batch_sizes)
        reference = vectors if reference is None else reference  # the first row: transformers fp32
        ran_as = f"{runtime.backend} {runtime.dtype} {getattr(runtime, 'layout', '')}".strip()
        results[(backend, dtype, layout)] = {"batch": size, "texts/s": rate, "ran as": ran_as,
                                             "min cosine": min_cosine(reference, vectors)}
        print(f"{backend} {dtype} {layout}: {rate:.1f} texts/s (batch {size})", flush=True)
        del runtime
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.predictor", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load step")
    parser.add_argument("--corpus_size", type=int, default=2000, help="texts sent to the server")
    parser.add_argument("--in_process_texts", type=int, default=384, help="texts each runtime embeds in-process")
    parser.add_argument("--batch_sizes", default="16,32,64", help="in-process batch sizes tried")
    parser.add_argument("--backend", default="auto", help="the served predictor's --backend")
    parser.add_argument("--dtype", default="auto", help="the served predictor's --dtype")
    parser.add_argument("--model_dir", default="auto", help=f"auto: {EXPORTED} if it has an IR, else the bundled model")
    return parser


def main() -> None:
    args, extra = build_parser().parse_known_args()
    exported = (EXPORTED / "openvino").is_dir()
    model_dir = Path(args.model_dir if args.model_dir != "auto" else EXPORTED if exported else bundled_model_dir())
    corpus = english_corpus(args.corpus_size)
    batch_sizes = tuple(int(size) for size in args.batch_sizes.split(","))
    flags = ["--model_dir", str(model_dir), "--backend", args.backend, "--dtype", args.dtype, *predictor_flags(extra)]
    rows, loaded, served_layout = served(corpus, args.seconds, flags)
    table = runtime_table(model_dir, corpus[: args.in_process_texts], batch_sizes)

    print(f"\nmodel dir {model_dir}; {len(corpus[: args.in_process_texts])} texts, length-sorted, best batch of "
          f"{batch_sizes}\n")
    print("| runtime | ran as | texts/s | batch | min cosine to transformers fp32 |")
    print("|---|---|---:|---:|---:|")
    for (backend, dtype, layout), result in table.items():
        print(f"| {backend} {dtype} {layout} | {result['ran as']} | {result['texts/s']:.1f} | {result['batch']} "
              f"| {result['min cosine']:.6f} |")

    baseline = table[("transformers", "float32", "")]["texts/s"]
    served_as = tuple(loaded.split("(", 1)[1].split(",")[:2]) if "(" in loaded else ()
    backend = served_as[0].replace(" backend", "").strip() if served_as else args.backend
    dtype = served_as[1].strip() if served_as else args.dtype
    own = table.get((backend, dtype, served_layout))
    runtime, tokenizer = load(model_dir, backend, dtype, served_layout)
    token_rows = tokenizer.encode(corpus)
    limits = BatchLimits()
    speed = runtime.measure_speed(limits.max_batch_size, limits.max_batch_tokens, pass_cost=not runtime.packed)
    pass_cost = speed.pass_cost_tokens
    windows = {w: window_limit(runtime, token_rows, w, pass_cost) for w in sorted({r["window"] for r in rows})}
    print(f"\nserved: {loaded}")
    print(f"transformers fp32 in-process limit {baseline:.1f} texts/s; {backend} {dtype} {served_layout} "
          f"in-process limit {own['texts/s'] if own else float('nan'):.1f} texts/s; pass cost {pass_cost:.0f} tokens\n")
    print("| texts/request | concurrency | texts/s | p50 ms | p90 ms | p99 ms | x transformers fp32 limit "
          "| % of own limit | window limit texts/s | % of window limit |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        window = windows[row["window"]]
        own_pct = f"{100 * row['texts/s'] / own['texts/s']:.0f} %" if own else "-"
        print(
            f"| {row['texts/request']} | {row['concurrency']} | {row['texts/s']:.1f} | {row['p50 ms']:.1f} "
            f"| {row['p90 ms']:.1f} | {row['p99 ms']:.1f} | {row['texts/s'] / baseline:.2f}x | {own_pct} "
            f"| {window:.1f} | {100 * row['texts/s'] / window:.0f} % |"
        )


if __name__ == "__main__":
    main()
