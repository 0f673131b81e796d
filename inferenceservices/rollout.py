"""Canary, promote, rollback and wait on one InferenceService component (KServe's Knative-mode canary).

KServe's rules: `canaryTrafficPercent: N` sends N % to the latest revision and the rest to the last
rolled-out one; removing the field promotes the latest revision to 100 %; setting it to 0 sends 100 % back
to the previous revision (rollback).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from inferenceservices.cluster import JSON_PATCH, MERGE_PATCH, Cluster, RolloutError, get_isvc, patch_isvc

MODEL_MOUNT = "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI's files
KNATIVE_MODES = {"Knative", "Serverless"}


def deployment_mode(isvc: dict[str, Any]) -> str:
    annotations = isvc.get("metadata", {}).get("annotations") or {}
    return annotations.get("serving.kserve.io/deploymentMode") or isvc.get("status", {}).get("deploymentMode", "")


def model_container(isvc: dict[str, Any], component: str) -> int:
    """Index of the component's serving container (KServe names it kserve-container)."""
    containers = isvc.get("spec", {}).get(component, {}).get("containers") or []
    for index, container in enumerate(containers):
        if container.get("name") == "kserve-container":
            return index
    if len(containers) == 1:
        return 0
    raise RolloutError(f"spec.{component} has no custom container named kserve-container to update")


def canary_patch(
    isvc: dict[str, Any], component: str, percent: int, image: str | None, storage_uri: str | None,
) -> list[dict[str, Any]]:
    """JSON patch that starts (or re-weights) a canary; guarded by a test of the resourceVersion we read."""
    if not 0 <= percent <= 100:
        raise RolloutError(f"--percent must be within 0..100, got {percent}")
    mode = deployment_mode(isvc)
    if mode and mode not in KNATIVE_MODES:
        raise RolloutError(f"canary rollouts need Knative mode; this InferenceService is in {mode} mode")
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": isvc["metadata"]["resourceVersion"]},
    ]
    if image or storage_uri:
        index = model_container(isvc, component)
        base = f"/spec/{component}/containers/{index}"
        container = isvc["spec"][component]["containers"][index]
        if image:
            ops.append({"op": "replace", "path": f"{base}/image", "value": image})
        if storage_uri:
            env = container.get("env")
            if env is None:
                ops.append({"op": "add", "path": f"{base}/env", "value": []})
                env = []
            names = [item.get("name") for item in env]
            for var, value in (("STORAGE_URI", storage_uri), ("KEMBED_MODEL_DIR", MODEL_MOUNT)):
                if var in names:
                    ops.append({"op": "replace", "path": f"{base}/env/{names.index(var)}/value", "value": value})
                else:
                    ops.append({"op": "add", "path": f"{base}/env/-", "value": {"name": var, "value": value}})
    ops.append({"op": "add", "path": f"/spec/{component}/canaryTrafficPercent", "value": percent})
    return ops


def canary(
    cluster: Cluster, name: str, percent: int, image: str | None = None, storage_uri: str | None = None,
    component: str = "predictor",
) -> dict[str, Any]:
    isvc = get_isvc(cluster, name)
    return patch_isvc(cluster, name, canary_patch(isvc, component, percent, image, storage_uri), JSON_PATCH)


def promote(cluster: Cluster, name: str, component: str = "predictor") -> dict[str, Any]:
    """Merge patch with null removes canaryTrafficPercent: the latest revision takes 100 %."""
    return patch_isvc(cluster, name, {"spec": {component: {"canaryTrafficPercent": None}}}, MERGE_PATCH)


def rollback(cluster: Cluster, name: str, component: str = "predictor") -> dict[str, Any]:
    """canaryTrafficPercent 0: the previously rolled-out revision takes 100 % again."""
    return patch_isvc(cluster, name, {"spec": {component: {"canaryTrafficPercent": 0}}}, MERGE_PATCH)


def ready_condition(isvc: dict[str, Any]) -> dict[str, Any]:
    for condition in isvc.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition
    return {"type": "Ready", "status": "Unknown", "reason": "NoStatus", "message": "the controller has not reported"}


def is_ready(isvc: dict[str, Any]) -> bool:
    """Ready condition True for the current spec (the controller has seen this generation)."""
    generation = isvc.get("metadata", {}).get("generation", 0)
    observed = isvc.get("status", {}).get("observedGeneration", generation)
    return observed >= generation and ready_condition(isvc).get("status") == "True"


def wait(
    cluster: Cluster, name: str, timeout_s: float, interval_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Polls until Ready; on timeout says which condition is holding it up."""
    deadline = clock() + timeout_s
    while True:
        isvc = get_isvc(cluster, name)
        if is_ready(isvc):
            return isvc
        if clock() >= deadline:
            condition = ready_condition(isvc)
            reason = ": ".join(filter(None, (condition.get("reason"), condition.get("message"))))
            raise RolloutError(
                f"InferenceService {cluster.namespace}/{name} not ready after {timeout_s:g}s "
                f"(Ready={condition.get('status')}{', ' + reason if reason else ''})"
            )
        sleep(interval_s)
