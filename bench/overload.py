"""Overload: the predictor at its peak concurrency and at ten times that, closed loop.

    python -m bench.overload [--seconds 15] [--peak 32] [--queue_size 128]

Prints, for each load, the answers by status, accepted texts/s, latency of accepted requests and
the server's resident memory (start, peak). A healthy server answers only 200 or 429, keeps its
memory flat and keeps accepted throughput near the peak. The 10x load runs twice: clients that
honour Retry-After, and clients that resend at once (the worst case; on this machine the load
generator then shares the 2 cores with the server).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
from pathlib import Path

from bench import HelpFormatter
from bench.predictor import MODEL, v2_body
from kembed.corpus import english_corpus
from kembed.launch import start_server
from kembed.loadgen import closed_loop


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each load")
    parser.add_argument("--peak", type=int, default=32, help="concurrency at which throughput peaks")
    parser.add_argument("--queue_size", type=int, default=128, help="predictor queue (items) for this run")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    corpus = english_corpus(2000)
    bodies = [(v2_body([text]), 1) for text in corpus]
    server = start_server(
        "predictor",
        ["--model_name", MODEL, "--queue_size", str(args.queue_size)],
        Path(tempfile.mkdtemp()) / "predictor.log",
        ready_path=f"/v2/models/{MODEL}/ready",
    )
    path = f"/v2/models/{MODEL}/infer"
    rows = []
    try:
        asyncio.run(closed_loop(server.http_port, path, bodies, 8, 2.0))
        for concurrency, honour in ((args.peak, True), (10 * args.peak, True), (10 * args.peak, False)):
            start_rss, peak_rss = rss_mib(server.process.pid), 0.0
            done = threading.Event()

            def sample(done: threading.Event = done) -> None:
                nonlocal peak_rss
                while not done.wait(0.25):
                    peak_rss = max(peak_rss, rss_mib(server.process.pid))

            sampler = threading.Thread(target=sample)
            sampler.start()
            result = asyncio.run(
                closed_loop(server.http_port, path, bodies, concurrency, args.seconds, honour_retry_after=honour)
            )
            done.set()
            sampler.join()
            rows.append((concurrency, honour, result, start_rss, peak_rss))
            print(concurrency, result.statuses, f"{result.items_per_second:.1f} texts/s", flush=True)
    finally:
        exit_code = server.stop()
    print("\n| clients | honour Retry-After | answers by status | accepted texts/s | p50 ms | p99 ms "
          "| RSS start MiB | RSS peak MiB |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for concurrency, honour, result, start_rss, peak_rss in rows:
        print(
            f"| {concurrency} | {'yes' if honour else 'no'} | {dict(sorted(result.statuses.items()))} "
            f"| {result.items_per_second:.1f} | {result.percentile_ms(50):.0f} | {result.percentile_ms(99):.0f} "
            f"| {start_rss:.0f} | {peak_rss:.0f} |"
        )
    print(f"\npredictor exit code after SIGTERM: {exit_code}")


if __name__ == "__main__":
    main()
