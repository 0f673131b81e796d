"""`kembed-plan recommend`: Knative scale settings for the predictor from a measured curve and an SLO.

Every number comes with the sentence that derives it (`reasoning`), so a reviewer can check the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from inferenceservices.planner.curve import Curve

MIB = 1024 * 1024
MIN_MAX_REPLICAS = 2  # the at-max-replicas alert needs room above one running pod


class RecommendError(ValueError):
    """The goal cannot be met from this curve (or is malformed); the message says what would help."""


@dataclass(frozen=True)
class Goal:
    slo_p99_ms: float
    peak_rps: float
    texts_per_request: int | None = None  # None: the curve's own
    proxy_headroom_ms: float = 10.0  # queue-proxy (+ activator) hop, taken off the SLO before reading the curve
    burst_factor: float = 1.5  # growth a pod at the target must absorb while a new pod starts
    replica_margin: float = 0.25  # over the pods the peak needs at the target
    max_cold_start_share: float = 0.01  # of a scale-from-zero cycle spent starting
    timeout_s: float = 60.0  # the InferenceService's request timeout
    cold_start_s: float | None = None  # None: the curve's own
    memory_headroom: float = 1.5  # over the measured peak RSS


@dataclass
class Recommendation:
    container_concurrency: int
    scale_target: int
    target_utilization_percentage: int
    min_replicas: int
    max_replicas: int
    scale_to_zero_pod_retention_s: int
    cpu: str
    memory: str | None
    gpu: bool
    slo_p99_ms: float
    cold_start_s: float
    expected: dict[str, float] = field(default_factory=dict)
    reasoning: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cpu_quantity(cpus: float) -> str:
    """Kubernetes CPU quantity: whole CPUs as `"2"`, else millicores."""
    millis = math.ceil(cpus * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def memory_quantity(size: float) -> str:
    """Rounded up to 256 MiB steps, written in Gi when whole."""
    mib = math.ceil(size / MIB / 256) * 256
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def recommend(curve: Curve, goal: Goal) -> Recommendation:
    if not (goal.slo_p99_ms > 0 and math.isfinite(goal.slo_p99_ms)):
        raise RecommendError(f"--slo-p99-ms must be > 0, got {goal.slo_p99_ms}")
    if not (goal.peak_rps > 0 and math.isfinite(goal.peak_rps)):
        raise RecommendError(f"--peak-rps must be > 0, got {goal.peak_rps}")
    if goal.burst_factor < 1:
        raise RecommendError(f"--burst-factor must be >= 1, got {goal.burst_factor}")
    if not 0 <= goal.max_cold_start_share < 1:
        raise RecommendError(f"--max-cold-start-share must be in [0, 1), got {goal.max_cold_start_share}")
    cold_start = goal.cold_start_s if goal.cold_start_s is not None else curve.cold_start_s
    if cold_start is None:
        raise RecommendError("the curve has no cold_start_s (measured against a running URL?): pass --cold-start-s")
    why: dict[str, str] = {}

    # containerConcurrency: the hard per-pod cap, where p99 still fits the SLO.
    budget = goal.slo_p99_ms - goal.proxy_headroom_ms
    if budget <= 0:
        raise RecommendError(f"the SLO ({goal.slo_p99_ms} ms) leaves nothing after {goal.proxy_headroom_ms} ms "
                             "of queue-proxy headroom")
    meeting = []
    for point in curve.points:
        if point.p99_ms > budget:
            break
        meeting.append(point)
    if not meeting:
        first = curve.points[0]
        raise RecommendError(
            f"the curve never meets a p99 of {goal.slo_p99_ms:g} ms: at concurrency {first.concurrency} its p99 is "
            f"{first.p99_ms:.1f} ms, over the {budget:g} ms left after {goal.proxy_headroom_ms:g} ms of queue-proxy "
            "headroom. Loosen the SLO, send fewer texts per request, or measure faster hardware (GPU, more CPUs).")
    cap = meeting[-1]
    cc = cap.concurrency
    last_note = (" It is the highest concurrency measured: the sweep stopped there, so the pod may take more."
                 if cap is curve.points[-1] else
                 f" At {curve.points[len(meeting)].concurrency} the p99 is {curve.points[len(meeting)].p99_ms:.0f} ms.")
    why["container_concurrency"] = (
        f"{cc}: the largest measured concurrency whose p99 ({cap.p99_ms:.0f} ms) and every lower one's fit the "
        f"{goal.slo_p99_ms:g} ms SLO less {goal.proxy_headroom_ms:g} ms for the queue-proxy/activator hop "
        f"({budget:g} ms).{last_note} Requests beyond it wait in the activator or queue-proxy, which Knative sees "
        "as load and scales on, instead of slowing every request in the pod.")

    # scaleTarget and utilization: Knative keeps target x utilization in flight per pod; the rest of the way to
    # containerConcurrency is the burst room that covers a pod's start.
    scale_target = cc
    capacity = curve.throughput(cc)
    steady_rps = capacity / goal.burst_factor
    steady_concurrency = min(float(cc), curve.concurrency_for(steady_rps))
    utilization = max(1, min(100, math.floor(100 * steady_concurrency / cc)))
    at_target = cc * utilization / 100
    per_pod_rps = curve.throughput(at_target)
    why["scale_target"] = (
        f"{scale_target}: equal to containerConcurrency, so a pod at its target meets the SLO by construction; "
        "the utilization below decides where Knative adds pods.")
    why["target_utilization_percentage"] = (
        f"{utilization}: Knative adds pods when the average in flight per pod passes {at_target:.1f} "
        f"({utilization} % of {scale_target}). There a pod serves {per_pod_rps:.1f} req/s; at {cc} it serves "
        f"{capacity:.1f}, so the load may grow {goal.burst_factor:g}x before a pod saturates, which covers the "
        f"{cold_start:.1f} s a new pod needs to start.")

    # maxReplicas: the pods the peak needs at the target, plus a margin; at least 2, so that the at-max alert
    # (pods >= maxReplicas for 10 minutes) means a saturated service, not merely a running one.
    texts = goal.texts_per_request or curve.texts_per_request
    peak_in_curve_units = goal.peak_rps * texts / curve.texts_per_request
    needed = peak_in_curve_units / per_pod_rps
    wanted = math.ceil(needed * (1 + goal.replica_margin))
    max_replicas = max(MIN_MAX_REPLICAS, wanted)
    floor_note = (f" At least {MIN_MAX_REPLICAS}: with one, KembedAtMaxReplicas would fire whenever a pod runs."
                  if wanted < MIN_MAX_REPLICAS else "")
    scale_note = (f" The curve was measured at {curve.texts_per_request} texts per request and the peak has {texts}; "
                  "pods are sized by texts/s, but latencies are the curve's: measure at your request size for "
                  "exact ones." if texts != curve.texts_per_request else "")
    per_pod_peak_units = per_pod_rps * curve.texts_per_request / texts
    why["max_replicas"] = (
        f"{max_replicas}: {goal.peak_rps:g} req/s at peak / {per_pod_peak_units:.1f} req/s per pod at the target "
        f"= {needed:.2f} pods, +{100 * goal.replica_margin:g} % margin, rounded up.{floor_note}{scale_note}")

    # minReplicas and the last pod's retention: a pod that is started must live long enough to be worth it.
    if goal.max_cold_start_share == 0 or cold_start >= goal.timeout_s:
        min_replicas, retention = 1, 0
        reason = ("no cold start is allowed (--max-cold-start-share 0)" if goal.max_cold_start_share == 0 else
                  f"a request that waits for a cold start ({cold_start:.1f} s) would pass the {goal.timeout_s:g} s "
                  "timeout")
        why["min_replicas"] = f"1: {reason}, so one pod always stays."
        why["scale_to_zero_pod_retention_s"] = "0: the service never scales to zero."
    else:
        min_replicas = 0
        share = goal.max_cold_start_share
        retention = math.ceil(cold_start * (1 - share) / share)
        why["min_replicas"] = (
            f"0: scale to zero pays; the first requests after an idle spell wait one cold start "
            f"({cold_start:.1f} s, {'over' if 1000 * cold_start > goal.slo_p99_ms else 'within'} the SLO).")
        why["scale_to_zero_pod_retention_s"] = (
            f"{retention}: the last pod stays {retention} s after traffic stops, so that starting it "
            f"({cold_start:.1f} s) is at most {100 * share:g} % of a scale-from-zero cycle "
            f"({cold_start:.1f} / ({cold_start:.1f} + {retention}) s); Knative adds its stable window before it.")

    # Resources: the curve holds for the CPUs (and memory) it was measured with.
    cpus = float(curve.hardware.get("cpus") or curve.hardware.get("usable_cpus") or 1)
    cpu = cpu_quantity(cpus)
    why["cpu"] = (f"{cpu} (requests = limits): the CPUs the predictor had while measured "
                  f"({curve.hardware.get('cpu_model', 'unknown CPU')}); the curve holds for those only.")
    memory = None
    if curve.peak_rss_bytes:
        memory = memory_quantity(curve.peak_rss_bytes * goal.memory_headroom)
        why["memory"] = (f"{memory}: peak resident memory {curve.peak_rss_bytes / MIB:.0f} MiB (the sweep, then one "
                         f"request of the longest texts) x {goal.memory_headroom:g}, rounded up to 256 MiB.")
    else:
        why["memory"] = "not measured (running URL): keep the manifest's."
    gpu = bool(curve.hardware.get("gpus")) and str(curve.hardware.get("device", "")).startswith(("cuda", "auto"))
    if gpu:
        why["gpu"] = "one GPU per pod (measured on " + "; ".join(curve.hardware["gpus"]) + ")."
    expected = {
        "per_pod_rps_at_target": round(per_pod_rps, 2),
        "per_pod_rps_at_container_concurrency": round(capacity, 2),
        "p99_ms_at_container_concurrency": cap.p99_ms,
        "pods_at_peak": round(needed, 2),
    }
    return Recommendation(cc, scale_target, utilization, min_replicas, max_replicas, retention, cpu, memory, gpu,
                          goal.slo_p99_ms, cold_start, expected, why)
