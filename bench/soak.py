"""Memory soak: unique texts through the transformer and predictor, resident memory over time.

    python -m bench.soak [--seconds 300.0] [--warmup 15.0] [--sample 15.0] [--concurrency 8] [--texts 4]

Both transformer caches are on (token ids and embeddings, at sizes they fill), so what grows is
either a cache at its bound or a leak. Prints each process's RSS every `--sample` seconds and, at
the end, RSS against RSS after `--warmup` seconds: the target is within 20 %. Predictor flags go
after `--` (e.g. `-- --backend transformers`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench import HelpFormatter, predictor_flags
from bench.overload import rss_mib
from kembed.corpus import english_corpus
from kembed.launch import Server, start_server

MODEL = "minilm"
TARGET_GROWTH = 0.20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="length of the soak")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before the reference RSS is taken")
    parser.add_argument("--sample", type=float, default=15.0, help="seconds between RSS samples")
    parser.add_argument("--concurrency", type=int, default=8, help="clients, each sending as soon as it is answered")
    parser.add_argument("--texts", type=int, default=4, help="unique texts per request")
    return parser


def start_stack(root: Path, extra: list[str]) -> tuple[Server, Server]:
    predictor = start_server("predictor", ["--model_name", MODEL, *extra], root / "predictor.log",
                             ready_path=f"/v2/models/{MODEL}/ready")
    transformer = start_server(
        "transformer", ["--model_name", MODEL, "--predictor_host", f"127.0.0.1:{predictor.http_port}"],
        root / "transformer.log", ready_path=f"/v2/models/{MODEL}/ready",
        env={"KEMBED_TOKENIZER_CACHE_SIZE": "4096", "KEMBED_EMBEDDING_CACHE_SIZE": "4096"},
    )
    return predictor, transformer


async def load(url: str, seconds: float, concurrency: int, texts: int) -> dict[int, int]:
    corpus = english_corpus(2000)
    serial = itertools.count()
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            batch = [f"{corpus[n % len(corpus)]} #{n}" for n in (next(serial) for _ in range(texts))]
            body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(batch)], "data": batch}]}
            try:
                status = (await http.post(url, json=body)).status_code
            except httpx.HTTPError:
                status = 0
            statuses[status] = statuses.get(status, 0) + 1

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return statuses


def main() -> None:
    args, extra = build_parser().parse_known_args()
    predictor, transformer = start_stack(Path(tempfile.mkdtemp()), predictor_flags(extra))
    samples: list[tuple[float, float, float]] = []
    stop = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        next_at = 0.0
        while not stop.is_set():
            elapsed = time.monotonic() - started
            if elapsed >= next_at or (elapsed >= args.warmup and not any(t >= args.warmup for t, _, _ in samples)):
                samples.append((elapsed, rss_mib(predictor.process.pid), rss_mib(transformer.process.pid)))
                next_at += args.sample
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        statuses = asyncio.run(load(f"{transformer.url}/v2/models/{MODEL}/infer", args.seconds, args.concurrency,
                                    args.texts))
    finally:
        stop.set()
        sampler.join()
        samples.append((time.monotonic() - started, rss_mib(predictor.process.pid), rss_mib(transformer.process.pid)))
        predictor.stop()
        transformer.stop()
    print(f"answers by status: {dict(sorted(statuses.items()))}, {sum(statuses.values()) / args.seconds:.1f} req/s")
    print(f"{'seconds':>8} {'predictor MiB':>14} {'transformer MiB':>16}")
    for elapsed, p, t in samples:
        print(f"{elapsed:8.0f} {p:14.0f} {t:16.0f}")
    reference = next((s for s in samples if s[0] >= args.warmup), samples[0])
    end = samples[-1]
    verdicts = []
    for name, column in (("predictor", 1), ("transformer", 2)):
        growth = end[column] / reference[column] - 1
        verdicts.append(growth <= TARGET_GROWTH)
        print(f"{name}: {reference[column]:.0f} MiB after warm-up -> {end[column]:.0f} MiB at the end "
              f"({growth:+.0%}; target <= {TARGET_GROWTH:+.0%})")
    sys.exit(0 if all(verdicts) else 1)


if __name__ == "__main__":
    main()
