"""`simulate --overlay DIR`: the Knative knobs a rendered overlay really deploys, so the simulation checks what
`kubectl apply -k DIR` would run, the base's settings (window, scale-down-delay, ...) included."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO_KUBECTL = Path(__file__).resolve().parents[2] / ".tools" / "bin" / "kubectl"
PREFIX = "autoscaling.knative.dev/"
DURATIONS = {"window": "stable_window_s", "scale-down-delay": "scale_down_delay_s",
             "scale-to-zero-pod-retention-period": "scale_to_zero_pod_retention_s"}
NUMBERS = {"target": "scale_target", "target-utilization-percentage": "target_utilization_percentage",
           "min-scale": "min_replicas", "max-scale": "max_replicas",
           "panic-window-percentage": "panic_window_percentage",
           "panic-threshold-percentage": "panic_threshold_percentage",
           "target-burst-capacity": "target_burst_capacity"}


def seconds(text: str) -> float:
    """A Go duration as Knative writes them: 90s, 5m, 1h30m, 1544s."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text).strip():
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def render(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl") or (str(REPO_KUBECTL) if REPO_KUBECTL.is_file() else None)
    if not kubectl:
        raise ValueError("--overlay needs kubectl (PATH, or `make tools` for .tools/bin/kubectl)")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if result.returncode:
        raise ValueError(f"kubectl kustomize {directory} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def knobs_from_overlay(directory: Path, component: str = "predictor") -> dict[str, Any]:
    """KpaSettings fields from the rendered InferenceService's `component`."""
    (isvc,) = [doc for doc in render(directory) if doc.get("kind") == "InferenceService"]
    spec = isvc["spec"][component]
    annotations = spec.get("annotations", {})
    knobs: dict[str, Any] = {}
    for key, field in DURATIONS.items():
        if PREFIX + key in annotations:
            knobs[field] = seconds(annotations[PREFIX + key])
    for key, field in NUMBERS.items():
        if PREFIX + key in annotations:
            knobs[field] = float(annotations[PREFIX + key])
    for key, field in (("scaleTarget", "scale_target"), ("minReplicas", "min_replicas"),
                       ("maxReplicas", "max_replicas"), ("containerConcurrency", "container_concurrency"),
                       ("timeout", "timeout_s")):
        if key in spec:
            knobs.setdefault(field, spec[key])
    return knobs
