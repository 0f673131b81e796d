"""Canary, promote, rollback and wait on an InferenceService component (KServe's Knative-mode canary).

KServe's rules (pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go):
`canaryTrafficPercent: N` sends N % to the latest revision (tag `latest`) and the rest to the last rolled-out
one (tag `prev`); removing the field promotes the latest revision to 100 %; 0 sends 100 % back to the
previous revision (rollback).

Readiness is read the way KServe reports it (`PropagateStatus` in pkg/apis/serving/v1beta1/
inference_service_status.go): per component, from the Knative Service's revisions and traffic that KServe
copies into `status.components.<component>`. The top-level `status.observedGeneration` is the generation of
the *Knative Service* reconciled last, not of the InferenceService, so it is never compared with
`metadata.generation`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inferenceservices.cluster import JSON_PATCH, MERGE_PATCH, Cluster, RolloutError, get_isvc, patch_isvc

MODEL_MOUNT = "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI's files
KNATIVE_MODES = {"Knative", "Serverless"}
COMPONENTS = ("predictor", "transformer", "explainer")
READY_CONDITIONS = {"predictor": "PredictorReady", "transformer": "TransformerReady", "explainer": "ExplainerReady"}


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


def check_percent(percent: int) -> None:
    if not 0 <= percent <= 100:
        raise RolloutError(f"--percent must be within 0..100, got {percent}")


def canary_patch(
    isvc: dict[str, Any], component: str, percent: int, image: str | None, storage_uri: str | None,
) -> list[dict[str, Any]]:
    """JSON patch that starts (or re-weights) a canary; guarded by a test of the resourceVersion we read."""
    check_percent(percent)
    mode = deployment_mode(isvc)
    if mode and mode not in KNATIVE_MODES:
        raise RolloutError(f"canary rollouts need Knative mode; this InferenceService is in {mode} mode")
    if component not in (isvc.get("spec") or {}):
        raise RolloutError(f"this InferenceService has no {component}")
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


@dataclass(frozen=True)
class Rollout:
    """What a patch asked for: which revisions it must replace (pod template changed) per component."""

    name: str
    component: str
    replaces: dict[str, str] = field(default_factory=dict)   # component -> latestCreatedRevision before


def latest_created(isvc: dict[str, Any], component: str) -> str:
    return ((isvc.get("status", {}).get("components") or {}).get(component) or {}).get("latestCreatedRevision", "")


def canary(
    cluster: Cluster, name: str, percent: int, image: str | None = None, storage_uri: str | None = None,
    component: str = "predictor",
) -> Rollout:
    isvc = get_isvc(cluster, name)
    patch_isvc(cluster, name, canary_patch(isvc, component, percent, image, storage_uri), JSON_PATCH)
    before = latest_created(isvc, component)
    return Rollout(name, component, {component: before} if (image or storage_uri) and before else {})


def promote(cluster: Cluster, name: str, component: str = "predictor") -> dict[str, Any]:
    """Merge patch with null removes canaryTrafficPercent: the latest revision takes 100 %."""
    return patch_isvc(cluster, name, {"spec": {component: {"canaryTrafficPercent": None}}}, MERGE_PATCH)


def rollback(cluster: Cluster, name: str, component: str = "predictor") -> dict[str, Any]:
    """canaryTrafficPercent 0: the previously rolled-out revision takes 100 % again."""
    return patch_isvc(cluster, name, {"spec": {component: {"canaryTrafficPercent": 0}}}, MERGE_PATCH)


def condition(isvc: dict[str, Any], kind: str = "Ready") -> dict[str, Any]:
    for found in isvc.get("status", {}).get("conditions") or []:
        if found.get("type") == kind:
            return found
    return {"type": kind, "status": "Unknown", "reason": "NoStatus", "message": "the controller has not reported"}


def ready_condition(isvc: dict[str, Any]) -> dict[str, Any]:
    return condition(isvc, "Ready")


def explain(found: dict[str, Any]) -> str:
    why = ": ".join(filter(None, (found.get("reason"), found.get("message"))))
    return f"{found.get('type')}={found.get('status')}{' (' + why + ')' if why else ''}"


def expected_latest_percent(spec: dict[str, Any], state: dict[str, Any]) -> int:
    """The latest revision's share KServe routes for this spec (100 until something was rolled out)."""
    canary_percent = spec.get("canaryTrafficPercent")
    if canary_percent is None or not state.get("latestRolledoutRevision"):
        return 100
    return int(canary_percent)


def component_problems(isvc: dict[str, Any], component: str, replaces: str | None = None) -> list[str]:
    """Why one component is not (yet) rolled out as its spec asks; empty when it is."""
    spec = isvc.get("spec", {}).get(component) or {}
    state = (isvc.get("status", {}).get("components") or {}).get(component)
    if not state:
        return [f"{component}: no status from the controller yet"]
    problems = []
    ready = condition(isvc, READY_CONDITIONS[component])
    if ready.get("status") != "True":
        problems.append(f"{component}: {explain(ready)}")
    created, latest_ready = state.get("latestCreatedRevision"), state.get("latestReadyRevision")
    if replaces and created == replaces:
        problems.append(f"{component}: no new revision yet (latest created is still {created})")
    elif created != latest_ready:
        problems.append(f"{component}: revision {created} is not ready yet (latest ready: {latest_ready or '-'})")
    latest = [target for target in state.get("traffic") or [] if target.get("latestRevision")]
    want = expected_latest_percent(spec, state)
    if not latest:
        problems.append(f"{component}: no traffic entry for the latest revision yet")
    elif latest[0].get("revisionName") != latest_ready or int(latest[0].get("percent") or 0) != want:
        problems.append(f"{component}: traffic sends {latest[0].get('percent') or 0}% to "
                        f"{latest[0].get('revisionName')}, the spec asks {want}% for {latest_ready}")
    return problems


def problems(isvc: dict[str, Any], replaces: dict[str, str] | None = None) -> list[str]:
    """Why the InferenceService is not rolled out as its spec asks; empty when it is."""
    found = []
    generation = isvc.get("metadata", {}).get("generation", 0)
    for item in isvc.get("status", {}).get("conditions") or []:
        # Future KServe versions may stamp conditions (metav1.Condition style); trust only current ones.
        if "observedGeneration" in item and item["observedGeneration"] < generation:
            found.append(f"condition {item.get('type')} is for generation {item['observedGeneration']}, "
                         f"the spec is at {generation}")
    ready = ready_condition(isvc)
    if ready.get("status") != "True":
        found.append(explain(ready))
    for component in COMPONENTS:
        if component in (isvc.get("spec") or {}):
            found += component_problems(isvc, component, (replaces or {}).get(component))
    return found


def is_ready(isvc: dict[str, Any], replaces: dict[str, str] | None = None) -> bool:
    return not problems(isvc, replaces)


def wait(
    cluster: Cluster, name: str, timeout_s: float, interval_s: float = 2.0, replaces: dict[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Polls until every component serves its spec; on timeout says what is holding it up."""
    deadline = clock() + timeout_s
    while True:
        isvc = get_isvc(cluster, name)
        holding = problems(isvc, replaces)
        if not holding:
            return isvc
        if clock() >= deadline:
            raise RolloutError(
                f"InferenceService {cluster.namespace}/{name} not ready after {timeout_s:g}s: {'; '.join(holding)}"
            )
        sleep(interval_s)
