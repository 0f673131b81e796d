"""`canary --guard`: watch the canary revision in Prometheus, roll back on a breach or when it cannot see.

Signals, each an instant query against Prometheus' HTTP API (`/api/v1/query`):
- kembed's own counters of the canary predictor revision (labels from the PodMonitor: namespace, isvc,
  component, revision): 5xx ratio and p99;
- the transformer's 5xx ratio (what clients see; a crash-looping predictor shows up here as 503s);
- Knative's queue-proxy and activator 5xx ratios for the revision, where they are scraped, under both metric
  generations (OpenCensus names up to Knative 1.18: `revision_request_count`, `activator_request_count`;
  OpenTelemetry names: `kn_serving_invocation_duration_seconds` from 1.21, `http_server_request_duration_seconds`
  of the activator, labelled `kn_revision_name`);
- container restarts of the revision's pods (kube-state-metrics; Knative names them `<revision>-deployment-…`).

An empty answer means "no data" for that signal, never "healthy": the canary is promoted only after at least
`min_requests` canary requests; with fewer by the end of the window it is rolled back. A query that fails
rolls back too (a guard that cannot see is no guard). Every breach names the query, the value and the limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from inferenceservices.cluster import Cluster, RolloutError
from inferenceservices.rollout import Rollout, rollback, wait


@dataclass(frozen=True)
class Limits:
    max_error_ratio: float = 0.01   # the 1 % error budget of the alerts
    max_p99_s: float = 0.5          # the 500 ms SLO
    min_requests: int = 100         # canary requests needed before the canary can be called healthy
    max_restarts: int = 0           # container restarts of canary pods
    rate_window: str = "1m"         # PromQL range for rate(): 4 scrapes at the PodMonitor's 15 s


@dataclass(frozen=True)
class Signal:
    name: str
    query: str
    limit: float
    unit: str = "ratio"             # how value and limit are printed

    def show(self, value: float) -> str:
        if self.unit == "ratio":
            return f"{value:.2%}"
        if self.unit == "s":
            return f"{value * 1000:.0f} ms"
        return f"{value:g}"


def ratio(metric: str, selector: str, bad: str, window: str) -> str:
    return (f"sum(rate({metric}{{{selector}, {bad}}}[{window}])) / sum(rate({metric}{{{selector}}}[{window}]))")


def signals(namespace: str, isvc: str, revisions: dict[str, str], limits: Limits) -> list[Signal]:
    """The queries for one canary: `revisions` maps component -> canary revision (predictor always)."""
    window, predictor = limits.rate_window, revisions["predictor"]
    ours = f'namespace="{namespace}", isvc="{isvc}", component="predictor", revision="{predictor}"'
    transformer = f'namespace="{namespace}", isvc="{isvc}", component="transformer"'
    if "transformer" in revisions:
        transformer += f', revision="{revisions["transformer"]}"'
    found = [
        Signal("predictor 5xx ratio", ratio("kembed_requests_total", ours, 'status=~"5.."', window),
               limits.max_error_ratio),
        Signal("predictor p99", "histogram_quantile(0.99, sum by (le) "
               f"(rate(kembed_request_duration_seconds_bucket{{{ours}}}[{window}])))", limits.max_p99_s, "s"),
        Signal("transformer 5xx ratio", ratio("kembed_requests_total", transformer, 'status=~"5.."', window),
               limits.max_error_ratio),
    ]
    for component, revision in revisions.items():
        opencensus = f'namespace_name="{namespace}", revision_name="{revision}"'
        pods = f'namespace="{namespace}", pod=~"{revision}-deployment-.+"'
        activator = f'k8s_namespace_name="{namespace}", kn_revision_name="{revision}"'
        found += [
            Signal(f"{component} queue-proxy 5xx ratio",
                   ratio("revision_request_count", opencensus, 'response_code_class="5xx"', window),
                   limits.max_error_ratio),
            Signal(f"{component} queue-proxy 5xx ratio",
                   ratio("kn_serving_invocation_duration_seconds_count", pods, 'http_response_status_code=~"5.."',
                         window), limits.max_error_ratio),
            Signal(f"{component} activator 5xx ratio",
                   ratio("activator_request_count", opencensus, 'response_code_class="5xx"', window),
                   limits.max_error_ratio),
            Signal(f"{component} activator 5xx ratio",
                   ratio("http_server_request_duration_seconds_count", activator, 'http_response_status_code=~"5.."',
                         window), limits.max_error_ratio),
        ]
    return found


def restarts(namespace: str, revisions: dict[str, str], since_s: float, limit: int) -> Signal:
    pods = "|".join(f"{revision}-deployment-.+" for revision in revisions.values())
    return Signal("container restarts", "sum(increase(kube_pod_container_status_restarts_total"
                  f'{{namespace="{namespace}", pod=~"{pods}"}}[{max(60, round(since_s))}s]))', limit, "count")


def canary_requests(namespace: str, isvc: str, revision: str, since_s: float) -> str:
    selector = f'namespace="{namespace}", isvc="{isvc}", component="predictor", revision="{revision}"'
    return f"sum(increase(kembed_requests_total{{{selector}}}[{max(60, round(since_s))}s]))"


def instant(client: httpx.Client, query: str) -> float:
    """One instant query; an empty result (no such series yet) is NaN."""
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


def canary_revisions(isvc: dict[str, Any], rollout: Rollout) -> dict[str, str]:
    """The revisions the patch created, read from the status after it (latestCreatedRevision)."""
    components = isvc.get("status", {}).get("components") or {}
    revisions = {component: (components.get(component) or {}).get("latestCreatedRevision", "")
                 for component in dict.fromkeys(["predictor", *rollout.replaces])}
    missing = [component for component, revision in revisions.items() if not revision]
    if missing:
        raise RolloutError(f"the controller reports no {', '.join(missing)} revision for the canary")
    return revisions


def guard(
    cluster: Cluster, rollout: Rollout, prometheus_url: str, window_s: float, interval_s: float, limits: Limits,
    ready_timeout_s: float = 600, log: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Watches for window_s; returns the canary's request count when healthy, raises after rolling back."""
    name = rollout.name

    def roll_back(reason: str) -> RolloutError:
        rollback(cluster, name, rollout.component)
        return RolloutError(f"canary of {cluster.namespace}/{name} rolled back: {reason}")

    try:
        isvc = wait(cluster, name, ready_timeout_s, min(2.0, interval_s), rollout.replaces, clock=clock, sleep=sleep)
        revisions = canary_revisions(isvc, rollout)
    except RolloutError as exc:
        raise roll_back(str(exc)) from None
    revision = revisions["predictor"]
    log(f"guarding canary revision {', '.join(revisions.values())} for {window_s:g}s (5xx ratio <= "
        f"{limits.max_error_ratio:.2%}, p99 <= {limits.max_p99_s * 1000:.0f} ms, >= {limits.min_requests} "
        "canary requests)")
    started = clock()
    deadline = started + window_s
    with httpx.Client(base_url=prometheus_url.rstrip("/"), timeout=10) as prometheus:
        while True:
            since = clock() - started
            try:
                watched = [*signals(cluster.namespace, name, revisions, limits),
                           restarts(cluster.namespace, revisions, since, limits.max_restarts)]
                values = [(signal, instant(prometheus, signal.query)) for signal in watched]
                count_query = canary_requests(cluster.namespace, name, revision, since)
                count = instant(prometheus, count_query)
            except RolloutError as exc:
                raise roll_back(str(exc)) from None
            breaches = [f"{signal.name} {signal.show(value)} > {signal.show(signal.limit)} ({signal.query})"
                        for signal, value in values if value > signal.limit]
            if breaches:
                raise roll_back("; ".join(breaches))
            count = 0 if math.isnan(count) else count
            seen = ", ".join(f"{signal.name} {signal.show(value)}" for signal, value in values if not math.isnan(value))
            log(f"{revision}: {count:.0f} requests; {seen or 'no samples yet'}")
            if clock() >= deadline:
                if count < limits.min_requests:
                    raise roll_back(f"only {count:.0f} canary requests in {window_s:g}s, at least "
                                    f"{limits.min_requests} are needed to call it healthy ({count_query})")
                return round(count)
            sleep(interval_s)

