"""`canary --guard`: watch the canary revision's error ratio and p99 in Prometheus, roll back on a breach.

Reads Prometheus' HTTP API (`/api/v1/query`) and the labels the PodMonitor adds (namespace, isvc,
component, revision). A guard that cannot see is no guard: when Prometheus fails, it rolls back too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from inferenceservices.cluster import Cluster, RolloutError, get_isvc
from inferenceservices.rollout import rollback, wait


@dataclass(frozen=True)
class Limits:
    max_error_ratio: float = 0.01   # the 1 % error budget of the alerts
    max_p99_s: float = 0.5          # the 500 ms SLO
    rate_window: str = "1m"         # PromQL range for rate(): 4 scrapes at the PodMonitor's 15 s


@dataclass(frozen=True)
class Sample:
    error_ratio: float   # NaN while the canary has had no traffic
    p99_s: float

    def breaches(self, limits: Limits) -> list[str]:
        found = []
        if self.error_ratio > limits.max_error_ratio:
            found.append(f"error ratio {self.error_ratio:.2%} > {limits.max_error_ratio:.2%}")
        if self.p99_s > limits.max_p99_s:
            found.append(f"p99 {self.p99_s * 1000:.0f} ms > {limits.max_p99_s * 1000:.0f} ms")
        return found


def queries(namespace: str, isvc: str, revision: str, window: str) -> dict[str, str]:
    selector = f'namespace="{namespace}", isvc="{isvc}", component="predictor", revision="{revision}"'
    requests = f"sum(rate(kembed_requests_total{{{selector}}}[{window}]))"
    return {
        "error_ratio": f'sum(rate(kembed_requests_total{{{selector}, status=~"5.."}}[{window}])) / {requests}',
        "p99_s": "histogram_quantile(0.99, sum by (le) "
                 f"(rate(kembed_request_duration_seconds_bucket{{{selector}}}[{window}])))",
    }


def instant(client: httpx.Client, query: str) -> float:
    """One instant query; an empty result (no traffic yet) is NaN."""
    try:
        response = client.get("/api/v1/query", params={"query": query})
        body: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise RolloutError(f"prometheus query failed: {exc}") from None
    if response.status_code != 200 or body.get("status") != "success":
        raise RolloutError(f"prometheus query failed: HTTP {response.status_code}: {body.get('error', body)}")
    result = body["data"]["result"]
    if body["data"]["resultType"] == "scalar":
        return float(result[1])
    return float(result[0]["value"][1]) if result else math.nan


def canary_revision(isvc: dict[str, Any]) -> str:
    predictor = isvc.get("status", {}).get("components", {}).get("predictor", {})
    for target in predictor.get("traffic") or []:
        if target.get("latestRevision") and target.get("revisionName"):
            return target["revisionName"]
    revision = predictor.get("latestReadyRevision")
    if not revision:
        raise RolloutError("the controller reports no predictor revision for the canary yet")
    return revision


def guard(
    cluster: Cluster, name: str, prometheus_url: str, window_s: float, interval_s: float, limits: Limits,
    ready_timeout_s: float = 600, log: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> Sample | None:
    """Watches for window_s; returns the last sample when healthy, raises RolloutError after rolling back."""

    def roll_back(reason: str) -> RolloutError:
        rollback(cluster, name)
        return RolloutError(f"canary of {cluster.namespace}/{name} rolled back: {reason}")

    try:
        wait(cluster, name, ready_timeout_s, clock=clock, sleep=sleep)
    except RolloutError as exc:
        raise roll_back(str(exc)) from None
    revision = canary_revision(get_isvc(cluster, name))
    promql = queries(cluster.namespace, name, revision, limits.rate_window)
    log(f"guarding canary revision {revision} for {window_s:g}s (error ratio <= {limits.max_error_ratio:.2%}, "
        f"p99 <= {limits.max_p99_s * 1000:.0f} ms)")
    deadline = clock() + window_s
    last: Sample | None = None
    with httpx.Client(base_url=prometheus_url.rstrip("/"), timeout=10) as prometheus:
        while True:
            try:
                last = Sample(instant(prometheus, promql["error_ratio"]), instant(prometheus, promql["p99_s"]))
            except RolloutError as exc:
                raise roll_back(str(exc)) from None
            breaches = last.breaches(limits)
            if breaches:
                raise roll_back(", ".join(breaches))
            log(f"{revision}: error ratio {last.error_ratio:.2%}, p99 {last.p99_s * 1000:.0f} ms")
            if clock() >= deadline:
                return last
            sleep(interval_s)
