"""The transformer's cost: full stack vs predictor alone, the hop's encoding, and the caches.

    python -m bench.transformer [--seconds 10] [--per_request 1 16] [--repeat_corpus 1000]
                                [--repeat_per_request 4] [-- extra predictor flags]

Starts one predictor (bundled model) and five transformers in front of it, then prints:
1. throughput and latency at concurrency 32: predictor alone vs the stack with the REST binary,
   REST JSON and gRPC hops (token cache off, so the stack does exactly the predictor's work plus
   the hop), and the OpenAI endpoint; with the stack/predictor ratio (target >= 0.90);
2. the hop payload for one [32, 64] token batch: bytes and encode time per format, in-process;
3. a corpus where half the texts repeat, sent once through: caches off, token cache on, token +
   embedding caches on; with hit rates and predictor calls read from /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench import HelpFormatter, predictor_flags
from kembed.contract import token_request
from kembed.corpus import english_corpus
from kembed.launch import Server, start_server
from kembed.loadgen import LoadResult, closed_loop

MODEL = "minilm"
INFER = f"/v2/models/{MODEL}/infer"
READY = f"/v2/models/{MODEL}/ready"
QUIET = ["--enable_latency_logging", "false"]


def v2_body(texts: list[str]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]})


def openai_body(texts: list[str]) -> bytes:
    return orjson.dumps({"model": MODEL, "input": texts, "encoding_format": "base64"})


def metric(server: Server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def start_all(predictor: Server, root: Path) -> dict[str, Server]:
    rest, grpc_host = f"127.0.0.1:{predictor.http_port}", f"127.0.0.1:{predictor.grpc_port}"
    no_cache = {"KEMBED_TOKENIZER_CACHE_SIZE": "0"}
    variants = {
        "binary": (["--predictor_host", rest], no_cache),
        "json": (["--predictor_host", rest], {**no_cache, "KEMBED_PREDICTOR_BINARY": "false"}),
        "grpc": (["--predictor_host", grpc_host, "--predictor_protocol", "grpc-v2"], no_cache),
        "token_cache": (["--predictor_host", rest], {}),
        "both_caches": (["--predictor_host", rest], {"KEMBED_EMBEDDING_CACHE_SIZE": "100000"}),
    }

    def start(name: str) -> Server:
        args, env = variants[name]
        return start_server(
            "transformer", ["--model_name", MODEL, *QUIET, *args], root / f"{name}.log", env=env, ready_path=READY
        )

    with ThreadPoolExecutor(len(variants)) as pool:
        return dict(zip(variants, pool.map(start, variants), strict=True))


def run(server: Server, path: str, bodies: list[tuple[bytes, int]], concurrency: int, seconds: float,
        max_requests: int = 1_000_000) -> LoadResult:
    return asyncio.run(closed_loop(server.http_port, path, bodies, concurrency, seconds, max_requests=max_requests))


def row(label: str, result: LoadResult, baseline: float | None = None) -> str:
    ratio = f"{result.items_per_second / baseline:6.2f}" if baseline else "     -"
    return (
        f"{label:<34} {result.items_per_second:9.1f} {ratio} {result.percentile_ms(50):8.1f} "
        f"{result.percentile_ms(99):8.1f}  {result.statuses}"
    )


HEADER = f"{'target':<34} {'texts/s':>9} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8}  statuses"


def stack_vs_predictor(predictor: Server, stack: dict[str, Server], corpus: list[str], seconds: float,
                       per_request: list[int]) -> None:
    print("\n== 1. stack vs predictor alone, concurrency 32 (token cache off in the stack) ==")
    for size in per_request:
        groups = [corpus[i : i + size] for i in range(0, len(corpus) - size + 1, size)]
        bodies = [(v2_body(texts), size) for texts in groups]
        print(f"\n-- {size} text(s) per request --\n{HEADER}")
        targets = [
            ("predictor alone (V2 text)", predictor, INFER, bodies),
            ("stack, REST V2 binary hop", stack["binary"], INFER, bodies),
            ("stack, REST V2 JSON hop", stack["json"], INFER, bodies),
            ("stack, gRPC V2 hop", stack["grpc"], INFER, bodies),
            ("stack, OpenAI /v1/embeddings", stack["binary"], "/v1/embeddings",
             [(openai_body(texts), size) for texts in groups]),
        ]
        baseline = None
        for label, server, path, target_bodies in targets:
            run(server, path, target_bodies, 8, 1.5)  # warm-up
            result = run(server, path, target_bodies, 32, seconds)
            baseline = baseline or result.items_per_second
            print(row(label, result, None if server is predictor else baseline), flush=True)


def hop_payloads(repeats: int = 200) -> None:
    print("\n== 2. hop payload for input_ids + attention_mask [32, 64] (in-process encode) ==")
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(32, 64), dtype=np.int64)
    mask = np.ones_like(ids)
    for label, encode in (
        ("REST JSON", lambda: token_request(MODEL, ids, mask, binary=False).to_rest()[0]),
        ("REST binary", lambda: token_request(MODEL, ids, mask, binary=True).to_rest()[0]),
        ("gRPC", lambda: token_request(MODEL, ids, mask, binary=True).to_grpc().SerializeToString()),
    ):
        payload = encode()
        size = len(payload if isinstance(payload, bytes) else orjson.dumps(payload))
        started = time.perf_counter()
        for _ in range(repeats):
            payload = encode()
            if not isinstance(payload, bytes):
                orjson.dumps(payload)
        micros = (time.perf_counter() - started) / repeats * 1e6
        print(f"{label:<12} {size:8d} bytes  {micros:8.1f} us to build and encode")


def caches(stack: dict[str, Server], corpus: list[str], unique: int, size: int, concurrency: int) -> None:
    print(f"\n== 3. half the texts repeat: {unique} distinct + {unique} repeats, {size}/request, "
          f"concurrency {concurrency}, sent once ==")
    rng = random.Random(1)
    distinct = corpus[:unique]
    stream = distinct + rng.choices(distinct, k=unique)
    rng.shuffle(stream)
    bodies = [(v2_body(stream[i : i + size]), size) for i in range(0, len(stream) - size + 1, size)]
    print(f"{HEADER:<120} tok-hit  emb-hit  predictor calls")
    baseline = None
    for label, name in (("caches off", "binary"), ("token cache", "token_cache"),
                        ("token + embedding caches", "both_caches")):
        server = stack[name]
        before = {m: metric(server, m) for m in (
            "kembed_tokenizer_cache_hits_total", "kembed_tokenizer_cache_misses_total",
            "kembed_embedding_cache_hits_total", "kembed_embedding_cache_misses_total",
            "kembed_predictor_request_seconds_count")}
        result = run(server, INFER, bodies, concurrency, 600, max_requests=len(bodies))
        delta = {m: metric(server, m) - v for m, v in before.items()}
        baseline = baseline or result.items_per_second
        tok = delta["kembed_tokenizer_cache_hits_total"] / max(
            1, delta["kembed_tokenizer_cache_hits_total"] + delta["kembed_tokenizer_cache_misses_total"])
        emb = delta["kembed_embedding_cache_hits_total"] / max(
            1, delta["kembed_embedding_cache_hits_total"] + delta["kembed_embedding_cache_misses_total"])
        print(f"{row(label, result, baseline):<120} {tok:6.0%}  {emb:6.0%}  "
              f"{int(delta['kembed_predictor_request_seconds_count'])}", flush=True)
    print("(a repeat that arrives while its first occurrence is still in flight is a miss; with the embedding "
          "cache on, its hits never reach the token cache, so tok-hit counts only the rest)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.transformer", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per target")
    parser.add_argument("--per_request", type=int, nargs="+", default=[1, 16], help="texts per request (section 1)")
    parser.add_argument("--repeat_corpus", type=int, default=1000, help="distinct texts in the half-repeat corpus")
    parser.add_argument("--repeat_per_request", type=int, default=4, help="texts per request in the cache run")
    return parser


def main() -> None:
    args, extra = build_parser().parse_known_args()
    extra = predictor_flags(extra)

    corpus = english_corpus(max(4000, 2 * args.repeat_corpus))
    root = Path(tempfile.mkdtemp(prefix="kembed-bench-"))
    predictor = start_server("predictor", ["--model_name", MODEL, *QUIET, *extra], root / "predictor.log",
                             ready_path=READY)
    stack: dict[str, Server] = {}
    try:
        stack = start_all(predictor, root)
        print(f"logs in {root}")
        stack_vs_predictor(predictor, stack, corpus, args.seconds, args.per_request)
        hop_payloads()
        # Texts the stack-vs-predictor runs did not send, so the caches start cold.
        caches(stack, corpus, args.repeat_corpus, args.repeat_per_request, 32)
    finally:
        for server in [*stack.values(), predictor]:
            server.stop()


if __name__ == "__main__":
    main()
