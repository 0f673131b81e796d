"""The simulation as a picture: load and replicas on top, latency against the SLO below (matplotlib, PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def draw(timeline: list[dict[str, Any]], slo_ms: float, path: Path, title: str = "") -> Path:
    try:
        import matplotlib
    except ImportError as exc:  # the `plan` extra
        raise RuntimeError("drawing needs matplotlib: pip install 'kembed[plan]'") from exc
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    seconds = [row["t"] for row in timeline]
    # rows exist only for seconds with events; carry the replica counts forward over the gaps
    full = np.arange(0, (max(seconds) + 1) if seconds else 1)
    by_second = {row["t"]: row for row in timeline}
    ready, desired, arrivals, p50, p99 = [], [], [], [], []
    last_ready = last_desired = 0
    for t in full:
        row = by_second.get(int(t))
        if row:
            last_ready, last_desired = row["ready"], row["desired"]
        ready.append(last_ready)
        desired.append(last_desired)
        arrivals.append(row["arrivals"] if row else 0)
        values = row["latencies"] if row else []
        p50.append(np.percentile(values, 50) if values else np.nan)
        p99.append(np.percentile(values, 99) if values else np.nan)
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 6.5), constrained_layout=True)
    top.step(full, desired, where="post", label="desired pods", color="tab:orange")
    top.step(full, ready, where="post", label="ready pods", color="tab:blue")
    top.set_ylabel("pods")
    load = top.twinx()
    load.plot(full, arrivals, color="tab:gray", alpha=0.5, linewidth=0.8, label="requests/s")
    load.set_ylabel("requests/s (by arrival)")
    handles = top.get_legend_handles_labels()[0] + load.get_legend_handles_labels()[0]
    top.legend(handles=handles, loc="upper left")
    bottom.plot(full, p50, label="p50", color="tab:green", linewidth=0.9)
    bottom.plot(full, p99, label="p99", color="tab:red", linewidth=0.9)
    bottom.axhline(slo_ms, color="black", linestyle="--", linewidth=0.8, label=f"SLO {slo_ms:g} ms")
    bottom.set_yscale("log")
    bottom.set_ylabel("latency ms (by arrival second)")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper left")
    if title:
        top.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
