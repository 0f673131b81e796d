"""`kembed-plan measure`: sweep one predictor's concurrency with a closed-loop client and write its curve.

Concurrency doubles (1, 2, 4, ...) until throughput stops rising, p99 passes a ceiling, the server sheds load,
or the cap is reached. The predictor is started here (`kembed.launch.start_server`, the same launcher the tests
and bench use) unless `--url` names a running one; then cold start and memory are not measured here.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from kembed.corpus import english_corpus
from kembed.launch import Server, start_server
from kembed.loadgen import closed_loop
from predictor.resources import cgroup_cpu_limit, fit_thread_count

Log = Callable[[str], None]


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def v2_body(texts: list[str]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]})


def request_bodies(texts_per_request: int, corpus_size: int = 2000) -> list[tuple[bytes, int]]:
    """Mixed-length real English (the bench corpus), `texts_per_request` texts per V2 request."""
    corpus = english_corpus(corpus_size)
    k = texts_per_request
    return [(v2_body(corpus[i : i + k]), k) for i in range(0, len(corpus) - k + 1, k)]


def worst_batch(host: str, port: int, model_name: str, texts: int = 256, log: Log = stderr) -> None:
    """One request of the longest texts (truncated to the model's length): full batches of the most tokens, so
    that the peak memory read afterwards covers the worst forward pass, not only the sweep's."""
    longest = sorted(english_corpus(2000), key=len, reverse=True)[:texts]
    try:
        response = httpx.post(f"http://{host}:{port}/v2/models/{model_name}/infer", content=v2_body(longest),
                              headers={"content-type": "application/json"}, timeout=600)
        log(f"worst-case request ({texts} longest texts): HTTP {response.status_code}")
    except httpx.HTTPError as exc:
        log(f"worst-case request failed ({exc}); peak memory covers the sweep only")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    """`nvidia-smi`'s name and memory per GPU, or nothing where there is none."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def hardware(device: str) -> dict[str, Any]:
    """What the curve holds for: the CPUs the predictor may use (its CFS quota, as predictor/resources.py
    reads it, else its affinity) and the GPU when it runs on one."""
    quota = cgroup_cpu_limit()
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cgroup_cpu_limit": quota,
        "cpus": quota if quota is not None else fit_thread_count(),
        "torch_threads": fit_thread_count(),
        "device": device,
        "gpus": gpus() if device.startswith("cuda") or device == "auto" else [],
        "platform": platform.platform(),
        "load_average_1m": os.getloadavg()[0],  # a busy machine measures a slower pod
    }


def peak_rss_bytes(pid: int) -> int | None:
    """The process's high-water resident memory (VmHWM), for the pod's memory request."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def sweep(
    host: str,
    port: int,
    model_name: str,
    bodies: list[tuple[bytes, int]],
    seconds: float,
    max_concurrency: int,
    p99_ceiling_ms: float,
    min_gain: float,
    patience: int = 2,
    log: Log = stderr,
) -> list[dict[str, Any]]:
    """Closed-loop steps at concurrency 1, 2, 4, ...; returns one point per step. One step that gains nothing
    may be noise (a shared machine), so the sweep stops after `patience` of them in a row."""
    path = f"/v2/models/{model_name}/infer"
    asyncio.run(closed_loop(port, path, bodies, 2, min(1.0, seconds), host=host))  # warm-up
    points: list[dict[str, Any]] = []
    concurrency, best, flat = 1, 0.0, 0
    while concurrency <= max_concurrency:
        result = asyncio.run(closed_loop(port, path, bodies, concurrency, seconds, host=host))
        ok = result.statuses.get(200, 0)
        point = {
            "concurrency": concurrency,
            "throughput_rps": ok / result.seconds,
            "texts_per_second": result.items_per_second,
            "p50_ms": result.percentile_ms(50),
            "p90_ms": result.percentile_ms(90),
            "p99_ms": result.percentile_ms(99),
            "requests": len(result.latencies),
            "statuses": {str(code): count for code, count in sorted(result.statuses.items())},
            "seconds": round(result.seconds, 3),
        }
        log(f"concurrency {concurrency:>4}: {point['throughput_rps']:8.1f} req/s  p50 {point['p50_ms']:7.1f} ms  "
            f"p99 {point['p99_ms']:7.1f} ms  statuses {point['statuses']}")
        if ok == 0:
            log("no request succeeded at this concurrency: stopping")
            break
        points.append(point)
        if ok < len(result.latencies):
            log("the server refused requests (load shed): stopping")
            break
        if point["p99_ms"] > p99_ceiling_ms:
            log(f"p99 passed the {p99_ceiling_ms:.0f} ms ceiling: stopping")
            break
        if point["throughput_rps"] >= best * (1 + min_gain):
            best, flat = point["throughput_rps"], 0
        else:
            flat += 1
            if flat >= patience:
                log(f"throughput gained less than {100 * min_gain:.0f} % over {patience} doublings: stopping")
                break
        concurrency *= 2
    return points


def start_predictor(model_name: str, args: list[str], log_dir: Path, poll: float) -> tuple[Server, float]:
    """Starts a predictor and returns it with its exec -> ready seconds (as bench/cold_start.py measures)."""
    started = time.perf_counter()
    server = start_server("predictor", ["--model_name", model_name, *args], log_dir / "predictor.log",
                          ready_path=f"/v2/models/{model_name}/ready", poll_interval=poll)
    return server, time.perf_counter() - started


def measure(
    *,
    url: str | None,
    model_name: str,
    predictor_args: list[str],
    device: str,
    texts_per_request: int,
    seconds: float,
    max_concurrency: int,
    p99_ceiling_ms: float,
    min_gain: float,
    cold_start_runs: int,
    patience: int = 2,
    worst_case_texts: int = 256,
    cold_start_s: float | None = None,
    log: Log = stderr,
) -> dict[str, Any]:
    bodies = request_bodies(texts_per_request)
    curve: dict[str, Any] = {
        "model": model_name,
        "texts_per_request": texts_per_request,
        "seconds_per_step": seconds,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hardware": hardware(device),
        "cold_start_s": cold_start_s,
        "peak_rss_bytes": None,
    }
    if url:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--url must be http://host:port, got {url!r}")
        log(f"measuring the predictor at {url} (hardware fields describe this machine, not the server's)")
        curve["target"] = url
        curve["points"] = sweep(parts.hostname, parts.port or 80, model_name, bodies, seconds, max_concurrency,
                                p99_ceiling_ms, min_gain, patience, log)
        return curve
    args = [*predictor_args, *(["--device", device] if device != "auto" else [])]
    curve["predictor_args"] = args
    with tempfile.TemporaryDirectory(prefix="kembed-plan-") as tmp:
        log_dir = Path(tmp)
        log(f"starting the predictor ({' '.join(args) or 'defaults'})")
        server, first_start = start_predictor(model_name, args, log_dir, poll=0.02)
        try:
            log(f"ready after {first_start:.2f} s; sweeping concurrency, {seconds:g} s per step")
            curve["points"] = sweep("127.0.0.1", server.http_port, model_name, bodies, seconds, max_concurrency,
                                    p99_ceiling_ms, min_gain, patience, log)
            if worst_case_texts:
                worst_batch("127.0.0.1", server.http_port, model_name, worst_case_texts, log)
            curve["peak_rss_bytes"] = peak_rss_bytes(server.process.pid)
            curve["load_average_1m_after_sweep"] = os.getloadavg()[0]
        finally:
            server.stop()
        # The first start filled the page cache; later ones start the way a pod on a warm node does.
        runs = []
        for run in range(cold_start_runs):
            again, seconds_to_ready = start_predictor(model_name, args, log_dir, poll=0.01)
            again.stop()
            runs.append(seconds_to_ready)
            log(f"cold start {run + 1}/{cold_start_runs}: exec -> ready {seconds_to_ready:.2f} s")
        runs = runs or [first_start]
        curve["cold_start_runs_s"] = [round(value, 3) for value in runs]
        curve["cold_start_s"] = round(statistics.median(runs), 3)
    return curve
