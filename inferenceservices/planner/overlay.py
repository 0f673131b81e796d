"""`recommend --write-overlay DIR`: a kustomize overlay of patches only, on top of the base (or another overlay).

JSON 6902 patches with `test` ops, like overlays/gpu: if the base moves a field, kustomize fails loudly
instead of patching the wrong thing. The PrometheusRule's at-max-replicas alert follows maxReplicas.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import yaml

from inferenceservices.planner.recommend import Recommendation

PACKAGE = Path(__file__).resolve().parent.parent
BASE = PACKAGE / "base"
RULES = PACKAGE / "monitoring" / "prometheusrule.yaml"
AT_MAX_ALERT = "KembedAtMaxReplicas"
ANNOTATIONS = "/spec/predictor/annotations/autoscaling.knative.dev~1"


def _op(op: str, path: str, value: object, comment: str = "") -> str:
    """One JSON 6902 operation (values as JSON, which is YAML), after its reasoning as comment lines."""
    notes = "".join(f"# {line}\n" for line in textwrap.wrap(comment, 110))
    return f"{notes}- op: {op}\n  path: {path}\n  value: {json.dumps(value)}\n"


def predictor_patch(rec: Recommendation) -> str:
    why = rec.reasoning
    ops = [
        _op("test", "/spec/predictor/containers/0/command/0", "kembed-predictor"),
        _op("replace", "/spec/predictor/containerConcurrency", rec.container_concurrency,
            (why["container_concurrency"])),
        _op("replace", "/spec/predictor/scaleTarget", rec.scale_target),
        _op("replace", f"{ANNOTATIONS}target", str(rec.scale_target)),
        _op("replace", f"{ANNOTATIONS}target-utilization-percentage", str(rec.target_utilization_percentage),
            (why["target_utilization_percentage"])),
        _op("replace", "/spec/predictor/minReplicas", rec.min_replicas, (why["min_replicas"])),
        _op("replace", f"{ANNOTATIONS}min-scale", str(rec.min_replicas)),
        _op("replace", "/spec/predictor/maxReplicas", rec.max_replicas, (why["max_replicas"])),
        _op("replace", f"{ANNOTATIONS}max-scale", str(rec.max_replicas)),
        _op("replace", f"{ANNOTATIONS}scale-to-zero-pod-retention-period", f"{rec.scale_to_zero_pod_retention_s}s",
            (why["scale_to_zero_pod_retention_s"])),
        _op("replace", "/spec/predictor/containers/0/resources/requests/cpu", rec.cpu, (why["cpu"])),
        _op("replace", "/spec/predictor/containers/0/resources/limits/cpu", rec.cpu),
    ]
    if rec.memory:
        ops += [_op("replace", "/spec/predictor/containers/0/resources/requests/memory", rec.memory,
                    (why["memory"])),
                _op("replace", "/spec/predictor/containers/0/resources/limits/memory", rec.memory)]
    if rec.gpu:
        ops.append(_op("add", "/spec/predictor/containers/0/resources/limits/nvidia.com~1gpu", 1, "one GPU per pod"))
    header = "# Predictor scale settings from `kembed-plan recommend` (reasoning per number in its --json).\n"
    return header + "".join(ops)


def rules_patch(rec: Recommendation, rules_file: Path = RULES) -> str:
    """Moves the at-max-replicas alert's threshold to the new maxReplicas (found by name, checked by `test`)."""
    rule_doc = yaml.safe_load(rules_file.read_text())
    for g, group in enumerate(rule_doc["spec"]["groups"]):
        for r, rule in enumerate(group["rules"]):
            if rule.get("alert") == AT_MAX_ALERT:
                expr = re.sub(r">=\s*\d+\s*$", f">= {rec.max_replicas}", rule["expr"].strip())
                return ("# The at-max-replicas alert follows maxReplicas.\n"
                        + _op("test", f"/spec/groups/{g}/rules/{r}/alert", AT_MAX_ALERT)
                        + _op("replace", f"/spec/groups/{g}/rules/{r}/expr", expr + "\n"))
    raise ValueError(f"{rules_file} has no {AT_MAX_ALERT} alert")


def write_overlay(rec: Recommendation, directory: Path, base: Path = BASE, command: str = "",
                  measured: str = "") -> list[Path]:
    """Writes kustomization.yaml and its two patches into `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(base.resolve(), directory.resolve())
    kustomization = (
        "# Scale settings measured and derived by kembed-plan (docs/planning.md). Regenerate with:\n"
        "#   " + (command or "kembed-plan recommend ...") + "\n"
        + (f"# Curve: {measured}\n" if measured else "")
        + f"# SLO p99 {rec.slo_p99_ms:g} ms, cold start {rec.cold_start_s:.2f} s. Patches only: the base decides "
        "everything else.\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {relative}\n"
        "patches:\n"
        "  - path: predictor-scale.yaml\n    target:\n      group: serving.kserve.io\n"
        "      kind: InferenceService\n      name: kembed\n"
        "  - path: rules-scale.yaml\n    target:\n      group: monitoring.coreos.com\n"
        "      kind: PrometheusRule\n      name: kembed\n"
    )
    files = {"kustomization.yaml": kustomization, "predictor-scale.yaml": predictor_patch(rec),
             "rules-scale.yaml": rules_patch(rec)}
    written = []
    for name, text in files.items():
        (directory / name).write_text(text)
        written.append(directory / name)
    return written
