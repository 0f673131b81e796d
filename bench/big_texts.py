"""Resident memory on huge texts: a few texts just under the body limit, one per request, in sequence.

    python -m bench.big_texts [--texts 6] [--megabytes 7.8]

Starts the predictor (bundled model) and a transformer in front of it, sends the texts to the
transformer's V2 route and then to the predictor's directly, and prints each process's RSS before,
at its peak during (sampled every 0.1 s) and after each phase. Only the prefix truncation keeps is
tokenized (`kembed.bounded_tokenization`), so a huge text should cost about what a short one does.
Predictor flags go after `--` (default: `--backend native`).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench import HelpFormatter, predictor_flags
from bench.overload import rss_mib
from bench.soak import MODEL, start_stack
from kembed.launch import Server

SENTENCE = "tokenizers split every word of a long text before truncating. "


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.big_texts", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--texts", type=int, default=6, help="texts sent, one request each, one after another")
    parser.add_argument("--megabytes", type=float, default=7.8, help="size of each text (the body limit is 8 MiB)")
    return parser


def huge_text(serial: int, megabytes: float) -> str:
    """Unique per request (no cache hit), ASCII so characters are bytes."""
    head = f"text {serial}: "
    return head + (SENTENCE * (int(megabytes * 1e6) // len(SENTENCE) + 1))[: int(megabytes * 1e6) - len(head)]


def phase(url: str, servers: dict[str, Server], texts: int, megabytes: float) -> dict[str, tuple[float, ...]]:
    """(before, peak, after) MiB per process while `texts` huge texts go to `url`."""
    before = {name: rss_mib(s.process.pid) for name, s in servers.items()}
    peak = dict(before)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            for name, server in servers.items():
                peak[name] = max(peak[name], rss_mib(server.process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with httpx.Client(timeout=120) as http:
            for serial in range(texts):
                body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                    "data": [huge_text(int(time.time() * 1000) + serial, megabytes)]}]}
                response = http.post(url, json=body)
                response.raise_for_status()
        time.sleep(0.5)  # what is freed after the answer
    finally:
        stop.set()
        sampler.join()
    return {name: (before[name], max(peak[name], rss_mib(s.process.pid)), rss_mib(s.process.pid))
            for name, s in servers.items()}


def main() -> None:
    args, extra = build_parser().parse_known_args()
    flags = predictor_flags(extra) or ["--backend", "native"]
    predictor, transformer = start_stack(Path(tempfile.mkdtemp()), flags)
    servers = {"predictor": predictor, "transformer": transformer}
    try:
        rows = [("transformer", phase(f"{transformer.url}/v2/models/{MODEL}/infer", servers, args.texts,
                                      args.megabytes)),
                ("predictor", phase(f"{predictor.url}/v2/models/{MODEL}/infer", {"predictor": predictor},
                                    args.texts, args.megabytes))]
    finally:
        predictor.stop()
        transformer.stop()
    print(f"{args.texts} texts of {args.megabytes} MB, one request each; RSS in MiB")
    print(f"{'sent to':<12} {'process':<12} {'before':>7} {'peak':>7} {'after':>7}")
    for route, measured in rows:
        for name, (before, peak, after) in measured.items():
            print(f"{route:<12} {name:<12} {before:7.0f} {peak:7.0f} {after:7.0f}")


if __name__ == "__main__":
    main()
